"""The public market-data payloads the engine publishes and the gateway (and the API's
REST depth and ticker routes) read: each shape is declared and built here only.

Amounts are decimal strings in `WireFormat`'s form; sequence numbers are the engine's
command sequence; `ts` is milliseconds since the epoch.

- `DepthDiff` (channel `keys.depth_channel`, one per settled batch): per changed level its
  absolute total after the batch (`"0"` = gone); `U`..`u` are the batch's first and last
  seq and `pu == U - 1`, so consecutive diffs satisfy `U == previous u + 1`.
- `DepthHeader` (key `keys.depth_key`): the batch the stored book is as of; the levels
  themselves live in `keys.depth_bids_key`/`depth_asks_key`/`depth_levels_key`, changed
  level by level; `cryptex_common.depth.read_depth` reads them as a `DepthBook` (best
  first).
- `BookTicker` (channel `keys.book_ticker_channel`): the best bid and ask after batch `u`,
  published only when either changed.
- `PublicTrade` (a JSON array of them per batch on `keys.trades_channel`; the recent ones in
  `keys.recent_trades_key`).
- `Ticker` (key `keys.ticker_key` and channel `keys.ticker_channel`): the rolling 24 h
  window.
"""

from __future__ import annotations

from typing import TypedDict

Level = list[str]  # [price, quantity]


class DepthDiff(TypedDict):
    market: str
    U: int
    u: int
    pu: int
    bids: list[Level]
    asks: list[Level]
    ts: int


class DepthHeader(TypedDict):
    market: str
    lastUpdateId: int
    ts: int


class DepthBook(TypedDict):
    market: str
    lastUpdateId: int
    bids: list[Level]
    asks: list[Level]
    ts: int


class BookTicker(TypedDict):
    market: str
    bidPrice: str | None
    bidQty: str | None
    askPrice: str | None
    askQty: str | None
    u: int
    ts: int


class PublicTrade(TypedDict):
    tradeId: str
    market: str
    price: str
    quantity: str
    quoteQuantity: str
    takerSide: str
    ts: int
    seq: int


class Ticker(TypedDict):
    market: str
    open: str | None
    high: str | None
    low: str | None
    last: str | None
    volume: str | None
    quoteVolume: str | None
    changePercent: str | None
    count: int
    bestBid: str | None
    bestAsk: str | None
    openTime: int | None
    closeTime: int | None
    ts: int


def depth_diff(market: str, first_seq: int, last_seq: int, bids: list[Level], asks: list[Level],
               ts_ms: int) -> DepthDiff:
    return {"market": market, "U": first_seq, "u": last_seq, "pu": first_seq - 1,
            "bids": bids, "asks": asks, "ts": ts_ms}


def depth_header(market: str, last_seq: int, ts_ms: int) -> DepthHeader:
    return {"market": market, "lastUpdateId": last_seq, "ts": ts_ms}


def depth_book(header: DepthHeader, bids: list[Level], asks: list[Level]) -> DepthBook:
    return {"market": header["market"], "lastUpdateId": header["lastUpdateId"], "bids": bids, "asks": asks,
            "ts": header["ts"]}


def empty_book(market: str) -> DepthBook:
    """The book of a market whose engine has written nothing yet."""
    return {"market": market, "lastUpdateId": 0, "bids": [], "asks": [], "ts": 0}


def book_ticker(market: str, bid: Level | None, ask: Level | None, last_seq: int, ts_ms: int) -> BookTicker:
    return {"market": market,
            "bidPrice": bid[0] if bid else None, "bidQty": bid[1] if bid else None,
            "askPrice": ask[0] if ask else None, "askQty": ask[1] if ask else None,
            "u": last_seq, "ts": ts_ms}


def public_trade(trade_id: int | str, market: str, price: str, quantity: str, quote_quantity: str,
                 taker_side: str, ts_ms: int, seq: int) -> PublicTrade:
    return {"tradeId": str(trade_id), "market": market, "price": price, "quantity": quantity,
            "quoteQuantity": quote_quantity, "takerSide": taker_side, "ts": ts_ms, "seq": seq}


def ticker(market: str, *, open_: str | None, high: str | None, low: str | None, last: str | None,
           volume: str | None, quote_volume: str | None, change_percent: str | None, count: int,
           best_bid: str | None, best_ask: str | None, open_time_ms: int | None, close_time_ms: int | None,
           ts_ms: int) -> Ticker:
    return {"market": market, "open": open_, "high": high, "low": low, "last": last, "volume": volume,
            "quoteVolume": quote_volume, "changePercent": change_percent, "count": count,
            "bestBid": best_bid, "bestAsk": best_ask, "openTime": open_time_ms, "closeTime": close_time_ms,
            "ts": ts_ms}
