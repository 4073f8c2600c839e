-- cryptex: requires-extension timescaledb
-- Applied only where the timescaledb extension is available (pg_available_extensions);
-- on plain PostgreSQL it is skipped and not recorded, so it runs once the extension exists.
-- Hypertables need the time column in every unique key: trades' key gains ts_ms (a trade's
-- ts_ms never changes, so the key stays one row per trade).
CREATE EXTENSION IF NOT EXISTS timescaledb;

ALTER TABLE trades DROP CONSTRAINT trades_pkey;
ALTER TABLE trades ADD CONSTRAINT trades_pkey PRIMARY KEY (market, trade_id, ts_ms);
SELECT create_hypertable('trades', 'ts_ms', chunk_time_interval => 86400000,
                         migrate_data => true);
SELECT create_hypertable('candles', 'open_time_ms', chunk_time_interval => 2592000000,
                         migrate_data => true);
