-- Alarms (cloud/alerts/): one row per alarm, its history (also the notification outbox), and the evaluation
-- state that must survive an evaluator restart. The same on PostgreSQL and TimescaleDB.

CREATE TABLE IF NOT EXISTS alarms (
    id              bigserial PRIMARY KEY,
    rule            text NOT NULL,
    device_id       text NOT NULL,
    site            text NOT NULL,
    kind            text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning')),
    message         text NOT NULL,
    value           double precision,
    condition_since timestamptz NOT NULL,        -- when the condition started to hold
    raised_at       timestamptz NOT NULL DEFAULT now(),
    cleared_at      timestamptz,
    cleared_by      text,                        -- the evaluator (condition over) or an operator
    clear_comment   text,
    acked_at        timestamptz,
    acked_by        text,
    ack_comment     text
);
-- Unique per (rule, device) while active: a second evaluator, or a retry, can never raise it twice.
CREATE UNIQUE INDEX IF NOT EXISTS alarms_active_once ON alarms (rule, device_id) WHERE cleared_at IS NULL;
CREATE INDEX IF NOT EXISTS alarms_raised_at ON alarms (raised_at);

-- Every transition, in order. notified_at NULL = not yet published: the active evaluator's notifier sends
-- these (its own transitions and the operators' acks and clears from `ioc alerts`), at least once.
CREATE TABLE IF NOT EXISTS alarm_history (
    id          bigserial PRIMARY KEY,
    alarm_id    bigint NOT NULL REFERENCES alarms ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    action      text NOT NULL CHECK (action IN ('raised', 'acknowledged', 'cleared')),
    actor       text NOT NULL,
    comment     text,
    value       double precision,
    notified_at timestamptz
);
CREATE INDEX IF NOT EXISTS alarm_history_alarm ON alarm_history (alarm_id, id);
CREATE INDEX IF NOT EXISTS alarm_history_unsent ON alarm_history (id) WHERE notified_at IS NULL;

-- A condition holding but not yet for the rule's duration: `since` is kept across restarts and takeovers,
-- so a 15-minute condition is not reset by a redeploy.
CREATE TABLE IF NOT EXISTS alert_eval_state (
    rule      text NOT NULL,
    device_id text NOT NULL,
    since     timestamptz NOT NULL,
    value     double precision,
    PRIMARY KEY (rule, device_id)
);

-- Each evaluator process reports here (active = holds the lock); webhooks that keep failing are reported.
CREATE TABLE IF NOT EXISTS alert_evaluators (
    instance   text PRIMARY KEY,
    host       text,
    started_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    active     boolean NOT NULL DEFAULT false,
    rules      integer NOT NULL DEFAULT 0,
    cycle_ms   double precision,
    last_error text
);
CREATE TABLE IF NOT EXISTS alert_webhook_status (
    url             text PRIMARY KEY,
    last_ok_at      timestamptz,
    last_error_at   timestamptz,
    last_error      text,
    failed_in_a_row integer NOT NULL DEFAULT 0,
    delivered       bigint NOT NULL DEFAULT 0,
    given_up        bigint NOT NULL DEFAULT 0
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ioc_grafana') THEN
        GRANT SELECT ON alarms, alarm_history, alert_evaluators TO ioc_grafana;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not grant the alarm tables to ioc_grafana: %', SQLERRM;
END $$;
