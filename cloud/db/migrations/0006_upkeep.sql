-- What the project's own upkeep did, per job, for `ioc status`: partition and rollup upkeep on the
-- plain-PostgreSQL path, and on TimescaleDB every policy job it had to run itself because the background
-- worker did not finish it cleanly (PostgreSQL 15.20 + TimescaleDB 2.28: the job commits its work, then fails).
CREATE TABLE IF NOT EXISTS ioc_upkeep_runs (
    job          text PRIMARY KEY,    -- 'timescale:<job_id>' or the name of a plain-PostgreSQL upkeep step
    name         text NOT NULL,
    last_run_at  timestamptz NOT NULL,
    last_ok_at   timestamptz,
    outcome      text NOT NULL,       -- ok | failed
    error        text,
    duration_ms  double precision NOT NULL
);
