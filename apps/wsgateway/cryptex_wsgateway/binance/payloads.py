"""Native gateway messages turned into Binance Spot stream payloads. Pure, no I/O.

Field names and types follow Binance's "WebSocket Streams" document: prices and quantities
are decimal strings, ids and times integers, the symbol upper case without separator.
Where Cryptex does not know a Binance field (first/last trade id of a ticker, taker-buy
volumes of a candle) it sends -1 or a zero string; docs/binance-compat-ws.md lists them.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from cryptex_common.markets import MarketSpec
from cryptex_common.money import format_steps

Payload = dict[str, Any]
AVG_PRICE_STEP = Decimal("0.00000001")
BINANCE_ZERO = "0.00000000"


class Zeros:
    """A market's zero price and quantity as it writes them ("0.00", "0.000")."""

    def __init__(self, spec: MarketSpec) -> None:
        self.price = format_steps(0, Decimal(spec.tick_size))
        self.qty = format_steps(0, Decimal(spec.lot_size))


def binance_levels(levels: list[list[str]]) -> list[list[str]]:
    """A removed level's quantity written as Binance writes it, "0.00000000": python-binance's
    depth cache removes a level only on that exact text. Other quantities stay on the grid."""
    return [[price, qty if qty.strip("0.") else BINANCE_ZERO] for price, qty in levels]


def partial_depth(last_update_id: int, bids: list[list[str]], asks: list[list[str]]) -> Payload:
    return {"lastUpdateId": last_update_id, "bids": bids, "asks": asks}


def trade(symbol: str, t: Payload) -> Payload:
    ts, tid = int(t["ts"]), int(t["tradeId"])
    return {"e": "trade", "E": ts, "s": symbol, "t": tid, "p": t["price"], "q": t["quantity"],
            "T": ts, "m": t["takerSide"] == "sell", "M": True}


def agg_trade(symbol: str, t: Payload) -> Payload:
    """One aggregate trade per trade: `a`, `f` and `l` are the trade id."""
    ts, tid = int(t["ts"]), int(t["tradeId"])
    return {"e": "aggTrade", "E": ts, "s": symbol, "a": tid, "p": t["price"], "q": t["quantity"],
            "f": tid, "l": tid, "T": ts, "m": t["takerSide"] == "sell", "M": True}


def kline(symbol: str, k: Payload, now: int) -> Payload:
    return {"e": "kline", "E": now, "s": symbol, "k": {
        "t": k["openTime"], "T": k["closeTime"], "s": symbol, "i": k["interval"],
        "f": -1, "L": -1, "o": k["open"], "c": k["close"], "h": k["high"], "l": k["low"],
        "v": k["volume"], "n": k["count"], "x": bool(k["closed"]), "q": k["quoteVolume"],
        "V": "0", "Q": "0", "B": "0",
    }}


def mini_ticker(symbol: str, t: Payload, zeros: Zeros) -> Payload:
    z = zeros.price
    return {"e": "24hrMiniTicker", "E": t.get("ts") or t.get("closeTime"), "s": symbol,
            "c": t.get("last") or z, "o": t.get("open") or z, "h": t.get("high") or z,
            "l": t.get("low") or z, "v": t.get("volume") or zeros.qty, "q": t.get("quoteVolume") or "0"}


def ticker(symbol: str, t: Payload, book: Payload | None, zeros: Zeros) -> Payload:
    """The 24 h ticker; best bid/ask quantities come from the latest bookTicker."""
    z, zq = zeros.price, zeros.qty
    last, open_ = t.get("last"), t.get("open")
    change = str(Decimal(last) - Decimal(open_)) if last and open_ else z
    volume, quote = t.get("volume") or zq, t.get("quoteVolume") or "0"
    avg = (Decimal(quote) / Decimal(volume)).quantize(AVG_PRICE_STEP, ROUND_HALF_EVEN) \
        if Decimal(volume) else Decimal(0)
    book = book or {}
    return {
        "e": "24hrTicker", "E": t.get("ts") or t.get("closeTime"), "s": symbol,
        "p": change, "P": t.get("changePercent") or "0.00", "w": f"{avg:f}",
        "x": open_ or z, "c": last or z, "Q": zq,
        "b": t.get("bestBid") or z, "B": book.get("bidQty") or zq,
        "a": t.get("bestAsk") or z, "A": book.get("askQty") or zq,
        "o": open_ or z, "h": t.get("high") or z, "l": t.get("low") or z,
        "v": volume, "q": quote, "O": t.get("openTime"), "C": t.get("closeTime"),
        "F": -1, "L": -1, "n": t.get("count") or 0,
    }


def book_ticker(symbol: str, b: Payload, zeros: Zeros) -> Payload:
    return {"u": b.get("u"), "s": symbol, "b": b.get("bidPrice") or zeros.price,
            "B": b.get("bidQty") or zeros.qty, "a": b.get("askPrice") or zeros.price,
            "A": b.get("askQty") or zeros.qty}
