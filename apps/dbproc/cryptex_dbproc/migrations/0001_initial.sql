-- Cryptex history schema. Amounts are integers: prices in ticks and quantities in lots
-- (BIGINT), asset amounts in smallest units (NUMERIC(38,0)). Times are UTC epoch ms (BIGINT).
-- Never floats.

-- Market specs as dbproc last saw them, so history stays formattable after a delisting.
CREATE TABLE markets (
    symbol      TEXT PRIMARY KEY,
    spec        JSONB NOT NULL,
    updated_ms  BIGINT NOT NULL
);

-- One row per market: the last events:{M} stream id written (and the batch's last seq),
-- updated in the same transaction as the rows it covers.
CREATE TABLE stream_cursors (
    market          TEXT PRIMARY KEY,
    last_id_ms      BIGINT NOT NULL,
    last_id_seq     BIGINT NOT NULL,
    last_seq        BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);

CREATE TABLE trades (
    market            TEXT NOT NULL,
    trade_id          BIGINT NOT NULL,
    seq               BIGINT NOT NULL,
    ts_ms             BIGINT NOT NULL,
    price_ticks       BIGINT NOT NULL,
    quantity_lots     BIGINT NOT NULL,
    quote_units       NUMERIC(38, 0) NOT NULL,
    taker_side        TEXT NOT NULL CHECK (taker_side IN ('buy', 'sell')),
    buy_order_id      BIGINT NOT NULL,
    sell_order_id     BIGINT NOT NULL,
    buy_user_id       TEXT NOT NULL,
    sell_user_id      TEXT NOT NULL,
    buyer_fee_units   NUMERIC(38, 0) NOT NULL,  -- base asset
    seller_fee_units  NUMERIC(38, 0) NOT NULL,  -- quote asset
    CONSTRAINT trades_pkey PRIMARY KEY (market, trade_id)
);

-- Two rows per trade: the buyer's and the seller's side.
CREATE TABLE fills (
    market         TEXT NOT NULL,
    trade_id       BIGINT NOT NULL,
    side           TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    order_id       BIGINT NOT NULL,
    user_id        TEXT NOT NULL,
    ts_ms          BIGINT NOT NULL,
    price_ticks    BIGINT NOT NULL,
    quantity_lots  BIGINT NOT NULL,
    quote_units    NUMERIC(38, 0) NOT NULL,
    fee_units      NUMERIC(38, 0) NOT NULL,
    fee_asset      TEXT NOT NULL,
    is_maker       BOOLEAN NOT NULL,
    PRIMARY KEY (market, trade_id, side)
);
CREATE INDEX fills_user_ts ON fills (user_id, ts_ms, market, trade_id);

-- Latest known state of each order; `seq` is the engine sequence of that state and only
-- ever moves forward.
CREATE TABLE orders (
    order_id              BIGINT PRIMARY KEY,
    seq                   BIGINT NOT NULL,
    user_id               TEXT NOT NULL,
    market                TEXT NOT NULL,
    side                  TEXT NOT NULL,
    order_type            TEXT NOT NULL,
    time_in_force         TEXT NOT NULL,
    post_only             BOOLEAN NOT NULL,
    price_ticks           BIGINT,
    quantity_lots         BIGINT,
    quote_budget_units    NUMERIC(38, 0),
    executed_lots         BIGINT NOT NULL,
    executed_quote_units  NUMERIC(38, 0) NOT NULL,
    status                TEXT NOT NULL,
    reason                TEXT,
    client_order_id       TEXT,
    created_ms            BIGINT NOT NULL,
    updated_ms            BIGINT NOT NULL
);
CREATE INDEX orders_user_id ON orders (user_id, order_id);

-- Exact OHLCV per (market, interval, bucket). open/close belong to the trades with the
-- smallest/largest trade id of the bucket (first_trade_id/last_trade_id).
CREATE TABLE candles (
    market              TEXT NOT NULL,
    interval            TEXT NOT NULL,
    open_time_ms        BIGINT NOT NULL,
    first_trade_id      BIGINT NOT NULL,
    open_ticks          BIGINT NOT NULL,
    last_trade_id       BIGINT NOT NULL,
    close_ticks         BIGINT NOT NULL,
    high_ticks          BIGINT NOT NULL,
    low_ticks           BIGINT NOT NULL,
    volume_lots         NUMERIC(38, 0) NOT NULL,
    quote_volume_units  NUMERIC(38, 0) NOT NULL,
    trade_count         BIGINT NOT NULL,
    PRIMARY KEY (market, interval, open_time_ms)
);
