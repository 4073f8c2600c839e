"""Every Redis key and pub/sub channel name, built here and nowhere else.

Placement (docs/decisions/0013-redis-cluster-sharded-ledger.md): every key a script
touches shares one hash tag, so every script keeps to one slot of a Redis Cluster; on a
single Redis the same names and scripts run unchanged.
- market keys carry the market's tag `{SOL_USDC}`;
- ledger keys (balances, orders, client order ids, replay guards, deposits' tx records,
  order-id counters, outboxes, applied markers, totals, private subscribers) carry their
  user's bucket tag `{ub:<n>}`, n = `user_bucket(user_id)` in [0, USER_BUCKETS); the fee
  account has its own tag `{fee}`;
- an order id encodes its owner's bucket (`id % USER_BUCKETS`), so `order_key(id)` needs
  nothing else;
- global keys (markets, users, API keys) are read-mostly single-key lookups.
"""

from __future__ import annotations

import zlib

from cryptex_common.markets import market_tag

# --- global ---------------------------------------------------------------------------
MARKETS_HASH = "markets"  # symbol -> MarketSpec JSON
MARKETS_CHANGED_CHANNEL = "markets:changed"
USER_ID_COUNTER = "ids:user"
FEE_ACCOUNT = "fees"  # the user id fees are credited to
FEE_TAG = "fee"
USER_BUCKETS = 256
RECONCILER_LEASE = "reconciler:lease"  # one reconciler pass at a time (cryptex_engine.reconcile)
ENGINE_GROUP = "engine"
DBPROC_GROUP = "dbproc"


# --- per market -----------------------------------------------------------------------
def commands_stream(symbol: str) -> str:
    """The market's command log (its `MESSAGES` queue), read by its engine."""
    return f"MESSAGES:{{{market_tag(symbol)}}}"


def events_stream(symbol: str) -> str:
    """Settled batches of trades and order updates, read by dbproc."""
    return f"events:{{{market_tag(symbol)}}}"


def dead_letter_stream(symbol: str) -> str:
    return f"deadletter:{{{market_tag(symbol)}}}"


def depth_key(symbol: str) -> str:
    """The REST book's header: JSON `market_data.DepthHeader` (the batch it is as of)."""
    return f"depth:{{{market_tag(symbol)}}}"


def depth_bids_key(symbol: str) -> str:
    """Sorted set of the bid levels' prices: member and score = price ticks."""
    return f"depth:{{{market_tag(symbol)}}}:bids"


def depth_asks_key(symbol: str) -> str:
    """Sorted set of the ask levels' prices: member and score = price ticks."""
    return f"depth:{{{market_tag(symbol)}}}:asks"


def depth_levels_key(symbol: str) -> str:
    """Hash: price ticks -> "<price> <quantity>" (the level's wire strings), both sides."""
    return f"depth:{{{market_tag(symbol)}}}:levels"


def depth_keys(symbol: str) -> list[str]:
    """The REST book's keys in the order the scripts take them: header, bids, asks, levels."""
    return [depth_key(symbol), depth_bids_key(symbol), depth_asks_key(symbol), depth_levels_key(symbol)]


def recent_trades_key(symbol: str) -> str:
    return f"trades:{{{market_tag(symbol)}}}"


def ticker_key(symbol: str) -> str:
    return f"ticker:{{{market_tag(symbol)}}}"


def engine_epoch_key(symbol: str) -> str:
    return f"engine:{{{market_tag(symbol)}}}:epoch"


def engine_lease_key(symbol: str) -> str:
    return f"engine:{{{market_tag(symbol)}}}:lease"


def settled_seq_key(symbol: str) -> str:
    return f"engine:{{{market_tag(symbol)}}}:settled"


def snapshot_key(symbol: str) -> str:
    return f"snapshot:{{{market_tag(symbol)}}}"


def market_spec_key(symbol: str) -> str:
    """The market's registered spec (JSON), in the market's slot: written in one
    transaction with the configure it puts on the command stream (registry.py); the
    `markets` hash is the index of every market, written right after."""
    return f"market:{{{market_tag(symbol)}}}"


def journal_stream(symbol: str) -> str:
    """Settled batches whose ledger parts may not be applied in every bucket yet: entry id
    `<last seq>-1`, one field per bucket tag holding that bucket's settle call."""
    return f"journal:{{{market_tag(symbol)}}}"


def journal_pattern() -> str:
    """SCAN pattern matching every market's journal."""
    return "journal:*"


def tag_of(key: str) -> str:
    """The hash tag of a key built here (the text between its first braces)."""
    return key[key.index("{") + 1:key.index("}")]


def handed_key(symbol: str, order_id: int | str) -> str:
    """Set once an order is on the market's command stream (value: its stream id), so a
    second hand-over of the same order adds nothing."""
    return f"handed:{{{market_tag(symbol)}}}:{order_id}"


# --- ledger placement ---------------------------------------------------------------------
def user_bucket(user_id: str) -> int:
    """The user's bucket: a numeric id mod USER_BUCKETS, any other id by CRC32."""
    if user_id.isdigit() and user_id.isascii():
        return int(user_id) % USER_BUCKETS
    return zlib.crc32(user_id.encode()) % USER_BUCKETS


def bucket_tag(bucket: int) -> str:
    return f"ub:{bucket}"


def user_tag(user_id: str) -> str:
    """The hash tag of every ledger key of `user_id` (the fee account has its own)."""
    return FEE_TAG if user_id == FEE_ACCOUNT else bucket_tag(user_bucket(user_id))


def unused_key(tag: str) -> str:
    """A KEYS placeholder in `tag`'s slot for a key a script is told not to use."""
    return f"-{{{tag}}}"


def ledger_tags() -> list[str]:
    """Every ledger tag: the fee account's and each bucket's."""
    return [FEE_TAG, *(bucket_tag(b) for b in range(USER_BUCKETS))]


def order_id_counter(bucket: int) -> str:
    """The bucket's order counter n: its orders get ids n * USER_BUCKETS + bucket."""
    return f"ids:{{{bucket_tag(bucket)}}}"


def outbox_stream(tag: str) -> str:
    """Orders locked in this bucket and not yet known handed over to their market."""
    return f"outbox:{{{tag}}}"


def applied_key(tag: str) -> str:
    """Hash: market tag (`markets.market_tag`) -> the last settled sequence applied here."""
    return f"applied:{{{tag}}}"


def totals_key(tag: str) -> str:
    """Hash: "<ASSET>:deposits" / "<ASSET>:withdrawals", this bucket's all-time totals."""
    return f"totals:{{{tag}}}"


def subscribers_key(tag: str) -> str:
    """Users of the bucket `tag` with a live private WebSocket subscription: ZSET user id ->
    expiry (ms since epoch). Gateways add/refresh their authenticated users; the settle
    scripts publish user@<id> updates only to members, so an exchange with no private
    listeners pays nothing for them."""
    return f"subscribers:{{{tag}}}"


# --- public channels (stream names as clients write them) ------------------------------
def depth_channel(symbol: str) -> str:
    return f"depth@{symbol}"


def trades_channel(symbol: str) -> str:
    return f"trades@{symbol}"


def ticker_channel(symbol: str) -> str:
    return f"ticker@{symbol}"


def book_ticker_channel(symbol: str) -> str:
    return f"bookTicker@{symbol}"


# --- per user ---------------------------------------------------------------------------
def user_key(user_id: str) -> str:
    return f"user:{user_id}"


def api_key_key(api_key: str) -> str:
    return f"apikey:{api_key}"


def balance_key(user_id: str) -> str:
    """Hash: field `<ASSET>:available` and `<ASSET>:locked`, integer smallest units."""
    return f"balance:{{{user_tag(user_id)}}}:{user_id}"


def balance_pattern() -> str:
    """SCAN pattern matching every balance hash."""
    return "balance:*"


def available_field(asset: str) -> str:
    return f"{asset}:available"


def locked_field(asset: str) -> str:
    return f"{asset}:locked"


def order_key(order_id: int | str) -> str:
    """The order's record; its bucket is `order_id % USER_BUCKETS` (its owner's)."""
    return f"{order_key_prefix(int(order_id) % USER_BUCKETS)}{order_id}"


def order_key_prefix(bucket: int) -> str:
    """`order_key(id)` is this prefix and the id, for every id of `bucket`."""
    return f"order:{{{bucket_tag(bucket)}}}:"


def open_orders_key(user_id: str) -> str:
    """Sorted set of the user's open order ids (score = order id), all markets."""
    return f"open:{{{user_tag(user_id)}}}:{user_id}"


def client_order_key(user_id: str, client_order_id: str) -> str:
    return f"coid:{{{user_tag(user_id)}}}:{user_id}:{client_order_id}"


def tx_key(user_id: str, tx_id: str) -> str:
    """A deposit's or withdrawal's record, once per (user, txId)."""
    return f"tx:{{{user_tag(user_id)}}}:{user_id}:{tx_id}"


def signature_key(user_id: str, signature: str) -> str:
    """Seen request signatures, kept for the timestamp window: a replay is refused."""
    return f"sig:{{{user_tag(user_id)}}}:{signature}"


def listen_key(key: str) -> str:
    """Binance facade listen key -> user id (cryptex_common.binance.LISTEN_KEY_TTL_S)."""
    return f"listenkey:{key}"


def user_channel(user_id: str) -> str:
    """Private updates (orders, fills, balances) for one user, read by wsgateway."""
    return f"user@{user_id}"


# --- per process ------------------------------------------------------------------------
def reply_channel(instance_id: str) -> str:
    """One per API process: engines publish each command's result here."""
    return f"reply:{instance_id}"
