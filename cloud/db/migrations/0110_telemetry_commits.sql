-- One row per ingest transaction that wrote readings: the oldest reading's time stamp. The alarm evaluator
-- reads every reading committed since its previous read by reaching back to the oldest time stamp among the
-- commits it has not seen yet, instead of guessing how late ingest commits (cloud/alerts/thresholds.py).
-- Kept for minutes: ingest's upkeep deletes older rows.
CREATE TABLE IF NOT EXISTS telemetry_commits (
    id bigserial PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now(),  -- the transaction's start: it commits a little later
    oldest_ts timestamptz NOT NULL,
    points integer NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_commits_at ON telemetry_commits (committed_at);
