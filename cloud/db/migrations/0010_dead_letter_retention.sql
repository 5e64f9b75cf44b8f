-- Dead letters are kept this many days (upkeep deletes older ones on both backends). The one home of
-- the setting: change it with UPDATE ioc_settings SET value = '30' WHERE key = 'dead_letter_retention_days'.
INSERT INTO ioc_settings (key, value) VALUES ('dead_letter_retention_days', '14')
ON CONFLICT (key) DO NOTHING;
