-- Fleet health shows credentials by age (cloud/grafana/dashboards/fleet-health.json): Grafana's read-only role
-- may read who holds which credential and since when, never a password or token hash (column grants).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ioc_grafana') THEN
        GRANT SELECT (username, device_id, role, created_at, revoked_at) ON broker_credentials TO ioc_grafana;
        GRANT SELECT (token_id, name, role, created_at, created_by, revoked_at) ON api_tokens TO ioc_grafana;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not grant the credential columns to ioc_grafana: %', SQLERRM;
END $$;
