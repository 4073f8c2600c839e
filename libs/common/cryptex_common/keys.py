"""Every Redis key and pub/sub channel name, built here and nowhere else.

All keys of one market share the hash tag `{SOL_USDC}`. User keys carry the user id.
The ledger scripts touch user and market keys together, so Cryptex needs one Redis
primary (not Redis Cluster); see docs/decisions/0002-single-redis-primary.md.
"""

from __future__ import annotations

from cryptex_common.markets import market_tag

# --- global ---------------------------------------------------------------------------
MARKETS_HASH = "markets"  # symbol -> MarketSpec JSON
MARKETS_CHANGED_CHANNEL = "markets:changed"
ORDER_ID_COUNTER = "ids:order"
USER_ID_COUNTER = "ids:user"
LEDGER_TOTALS = "ledger:totals"  # field "<ASSET>:deposits" / "<ASSET>:withdrawals"
FEE_ACCOUNT = "fees"  # the user id fees are credited to
# Users with a live private WebSocket subscription: ZSET user id -> expiry (ms since epoch).
# Gateways add/refresh their authenticated users; engines publish user@<id> updates only
# for members, so an exchange with no private listeners pays nothing for them.
PRIVATE_SUBSCRIBERS = "ws:private-subscribers"
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
    return f"balance:{user_id}"


def available_field(asset: str) -> str:
    return f"{asset}:available"


def locked_field(asset: str) -> str:
    return f"{asset}:locked"


def order_key(order_id: int | str) -> str:
    return f"order:{order_id}"


def open_orders_key(user_id: str) -> str:
    """Sorted set of the user's open order ids (score = order id), all markets."""
    return f"open:{user_id}"


def client_order_key(user_id: str, client_order_id: str) -> str:
    return f"coid:{user_id}:{client_order_id}"


def tx_key(tx_id: str) -> str:
    return f"tx:{tx_id}"


def signature_key(signature: str) -> str:
    """Seen request signatures, kept for the timestamp window: a replay is refused."""
    return f"sig:{signature}"


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
