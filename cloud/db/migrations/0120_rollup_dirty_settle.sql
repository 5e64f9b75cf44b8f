-- A dirty minute is recomputed once it has settled: complete, and no ingest batch (of any instance) has marked
-- it for the grace.
-- While ingest runs behind, a minute keeps receiving rows long after it ended; taking it at every upkeep pass
-- re-aggregated the whole minute of every device each time (TimescaleDB re-materialises a bucket whole),
-- which slowed the writers further (bench/alerts.py at 10,000 devices: one telemetry_1m refresh held a core
-- for 10 s and more). A minute marked without pause for 5 minutes (a steady trickle of late rows) is taken
-- anyway. Rows marked by hand (no marked_at) are taken at the next pass, as before.
ALTER TABLE rollup_dirty ADD COLUMN IF NOT EXISTS marked_at timestamptz;
ALTER TABLE rollup_dirty ADD COLUMN IF NOT EXISTS first_marked_at timestamptz NOT NULL DEFAULT now();

CREATE OR REPLACE FUNCTION ioc_take_dirty_rollups(grace interval DEFAULT interval '10 seconds')
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    taken integer;
BEGIN
    WITH settled AS (  -- per minute, across ingest instances: every instance's row has settled
        SELECT bucket FROM rollup_dirty
        WHERE bucket + interval '1 minute' + grace < now()
        GROUP BY bucket
        HAVING bool_and(marked_at IS NULL OR marked_at + grace < now())
            OR min(first_marked_at) + interval '5 minutes' < now()
    ), moved AS (
        DELETE FROM rollup_dirty d USING settled s WHERE d.bucket = s.bucket RETURNING d.bucket
    )
    INSERT INTO rollup_pending SELECT DISTINCT bucket FROM moved ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS taken = ROW_COUNT;
    RETURN taken;
END $$;
