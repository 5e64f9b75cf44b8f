-- Read-only role for Grafana (cloud/grafana/provisioning/datasources/ioc.yaml), the same on both backends.
--
-- Idempotent: creates ioc_grafana only when it is missing, and only when the migrating role may create
-- roles (CREATEROLE or superuser); otherwise it warns and leaves the role to the DBA, who runs the same
-- statements by hand. The password is never written here: when the migrating session carries the custom
-- setting ioc.grafana_password (docker-compose.yml passes it with PGOPTIONS="-c ioc.grafana_password=...")
-- it becomes the role's password, else the role has none and cannot log in over password auth until
-- someone runs ALTER ROLE ioc_grafana PASSWORD '...'.
--
-- Grants are explicit, table by table: a later migration that adds a table a dashboard needs grants it
-- there. No ALTER DEFAULT PRIVILEGES, so a future table (tokens, credentials) is never readable by
-- dashboards by accident. GRANT on a partitioned table covers reads through the parent; TimescaleDB
-- propagates grants on a hypertable to its chunks, and a continuous aggregate is read through its view.

DO $$
DECLARE
    pw text := nullif(current_setting('ioc.grafana_password', true), '');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ioc_grafana') THEN
        IF NOT (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            RAISE WARNING 'role ioc_grafana not created: % lacks CREATEROLE; create it and run the GRANTs of '
                          'migration 0004_grafana_role.sql as a role that may', current_user;
            RETURN;
        END IF;
        CREATE ROLE ioc_grafana LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION
            CONNECTION LIMIT 20;
    END IF;

    BEGIN
        IF pw IS NOT NULL THEN
            EXECUTE format('ALTER ROLE ioc_grafana LOGIN PASSWORD %L', pw);
        END IF;
        -- A dashboard must never write, nor hold the database hostage with a runaway query.
        ALTER ROLE ioc_grafana SET default_transaction_read_only = on;
        ALTER ROLE ioc_grafana SET statement_timeout = '30s';
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO ioc_grafana', current_database());
        GRANT USAGE ON SCHEMA public TO ioc_grafana;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'ioc_grafana exists but % may not alter it (%): password, limits, CONNECT and USAGE '
                      'left as they are', current_user, SQLERRM;
    END;

    GRANT SELECT ON devices, device_status, device_config_reported, dead_letters, ingest_instances,
                    telemetry, traffic_counts, events, telemetry_1m, telemetry_1h
        TO ioc_grafana;
END $$;
