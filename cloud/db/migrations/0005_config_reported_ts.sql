-- The device's own time of a reported config, so a late-arriving older report (batches commit in
-- parallel; a retained report is redelivered) never replaces a newer one, as status_ts does for status.
ALTER TABLE device_config_reported ADD COLUMN IF NOT EXISTS reported_ts timestamptz;
