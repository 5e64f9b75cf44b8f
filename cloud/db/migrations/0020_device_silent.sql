-- Liveness that does not depend on the last will: set by ingest's upkeep when a device that is online has
-- sent nothing for several heartbeat intervals (power cut with the broker never noticing, a hung agent),
-- cleared when it is heard again or goes offline. NULL: not silent.
ALTER TABLE device_status ADD COLUMN IF NOT EXISTS silent_since timestamptz;
