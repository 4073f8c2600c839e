"""Stream names: parse what a client writes into one canonical `Stream`. Pure, no I/O.

Canonical names: `<channel>@<BASE>/<QUOTE>` for public streams (`depth@SOL/USDC`,
`trades@SOL/USDC`, `ticker@SOL/USDC`, `bookTicker@SOL/USDC`, `kline_1m@SOL/USDC`) and
`user.orders`, `user.fills`, `user.balances` for private ones.

Invariants:
- names are case-insensitive: `DEPTH@sol/usdc` is `depth@SOL/USDC`;
- the market may be written `SOL/USDC`, `SOL_USDC` or `SOL-USDC`, and `<channel>.<BASE>_<QUOTE>`
  (Backpack style, e.g. `trades.SOL_USDC`) is the same stream as `<channel>@<BASE>/<QUOTE>`;
  `trade` is accepted for `trades`;
- a parsed public stream always names a market in `known_markets`; every canonical name
  parses back to itself.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from cryptex_common.intervals import CANDLE_INTERVALS_MS
from cryptex_common.markets import normalize_symbol

# streamed live: every candle interval, in the candle table's buckets (weeks start Monday)
KLINE_INTERVALS_MS: dict[str, int] = dict(CANDLE_INTERVALS_MS)
PUBLIC_CHANNELS: dict[str, str] = {
    "depth": "depth",
    "trades": "trades",
    "trade": "trades",
    "ticker": "ticker",
    "bookticker": "bookTicker",
    **{f"kline_{i}": f"kline_{i}" for i in KLINE_INTERVALS_MS},
}
PRIVATE_STREAMS = ("user.orders", "user.fills", "user.balances")


class StreamError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Stream:
    channel: str  # "depth", "trades", "ticker", "bookTicker", "kline_1m", "user.orders", ...
    market: str | None = None  # None for private streams

    @property
    def name(self) -> str:
        return self.channel if self.market is None else f"{self.channel}@{self.market}"

    @property
    def private(self) -> bool:
        return self.market is None

    @property
    def stream_type(self) -> str:
        """Bounded metric label: the channel, with all kline intervals as `kline`."""
        return "kline" if self.channel.startswith("kline_") else self.channel

    @property
    def interval(self) -> str | None:
        return self.channel[len("kline_"):] if self.channel.startswith("kline_") else None


def parse_stream(raw: object, known_markets: Collection[str]) -> Stream:
    """The canonical stream for a client's name, or StreamError(UNKNOWN_STREAM|UNKNOWN_MARKET)."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
        raise StreamError("UNKNOWN_STREAM", "a stream name is a string of 1 to 64 characters")
    text = raw.strip()
    lowered = text.lower()
    if lowered in PRIVATE_STREAMS:
        return Stream(lowered)
    if "@" in text:
        channel_raw, _, market_raw = text.partition("@")
    elif "." in text:
        channel_raw, _, market_raw = text.partition(".")
    else:
        raise StreamError("UNKNOWN_STREAM", f"unknown stream {text!r}")
    channel = PUBLIC_CHANNELS.get(channel_raw.lower())
    if channel is None:
        raise StreamError("UNKNOWN_STREAM", f"unknown stream {text!r}")
    market = normalize_symbol(market_raw)
    if market not in known_markets:
        raise StreamError("UNKNOWN_MARKET", f"unknown market {market_raw!r} in stream {text!r}")
    return Stream(channel, market)
