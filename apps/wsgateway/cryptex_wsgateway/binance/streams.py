"""Binance stream names: parse what a Binance client writes into a `BinanceStream`. Pure.

Grammar (Binance Spot): `<symbol>@<channel>[@<speed>]`, the symbol being the Cryptex symbol
without its separator (`solusdc` for `SOL/USDC`, any case), channel one of `depth`,
`depth5|10|20`, `trade`, `aggTrade`, `kline_<interval>`, `miniTicker`, `ticker`,
`bookTicker`; speed `100ms` or `1000ms`, only after a depth channel. All-market streams:
`!miniTicker@arr` and `!ticker@arr` (market "", following every market's ticker).

Invariants:
- a parsed stream names a registered market, and its canonical `name` is Binance's spelling
  (lowercase symbol, `aggTrade`, `miniTicker`, `bookTicker`, `kline_1m`), which parses back
  to itself;
- `native` is the gateway topic the stream is translated from (`depth@SOL/USDC`, ...), so the
  facade follows exactly the upstream channels the native streams use.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from cryptex_common.binance import binance_symbol, cryptex_symbol
from cryptex_wsgateway.streams import KLINE_INTERVALS_MS

MAX_NAME_CHARS = 64
PARTIAL_LEVELS = (5, 10, 20)
SPEEDS = ("100ms", "1000ms")
# Binance channel (lowercase) -> (canonical spelling, native channel)
_CHANNELS: dict[str, tuple[str, str]] = {
    "depth": ("depth", "depth"),
    **{f"depth{n}": (f"depth{n}", "depth") for n in PARTIAL_LEVELS},
    "trade": ("trade", "trades"),
    "aggtrade": ("aggTrade", "trades"),
    "miniticker": ("miniTicker", "ticker"),
    "ticker": ("ticker", "ticker"),
    "bookticker": ("bookTicker", "bookTicker"),
    **{f"kline_{i}": (f"kline_{i}", f"kline_{i}") for i in KLINE_INTERVALS_MS},
}


ALL_MARKETS = {"!miniticker@arr": "!miniTicker@arr", "!ticker@arr": "!ticker@arr"}


class BinanceStreamError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BinanceStream:
    name: str  # canonical Binance name, e.g. "solusdc@depth@100ms"
    market: str  # Cryptex symbol, e.g. "SOL/USDC"; "" for an all-market stream
    channel: str  # canonical Binance channel: "depth", "depth5", "aggTrade", "kline_1m", ...
    # ... or "miniTicker@arr", "ticker@arr" for the all-market streams

    @property
    def all_markets(self) -> bool:
        return self.market == ""

    def natives(self, markets: Collection[str]) -> list[str]:
        """The gateway topics this stream is translated from (every market's ticker for an
        all-market stream: the markets registered when it is first followed)."""
        if self.all_markets:
            return [f"ticker@{m}" for m in sorted(markets)]
        return [self.native]

    @property
    def symbol(self) -> str:
        """Binance's upper-case symbol, as in payloads (`"s": "SOLUSDC"`)."""
        return binance_symbol(self.market)

    @property
    def native(self) -> str:
        """The gateway topic this stream is translated from."""
        return f"{_CHANNELS[self.channel.lower()][1]}@{self.market}"

    @property
    def levels(self) -> int | None:
        """5, 10 or 20 for a partial book stream, else None."""
        tail = self.channel[len("depth"):]
        return int(tail) if self.channel.startswith("depth") and tail else None

    @property
    def update_ms(self) -> int:
        """How often a depth stream is sent: 100 ms for `@100ms`, else Binance's 1000 ms."""
        return 100 if self.name.endswith("@100ms") else 1000

    @property
    def interval(self) -> str | None:
        return self.channel[len("kline_"):] if self.channel.startswith("kline_") else None


def parse_binance_stream(raw: object, markets: Collection[str]) -> BinanceStream:
    """The stream for a client's name, or BinanceStreamError saying what is wrong."""
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_NAME_CHARS:
        raise BinanceStreamError(f"a stream name is a string of 1 to {MAX_NAME_CHARS} characters")
    every = ALL_MARKETS.get(raw.lower())
    if every is not None:
        return BinanceStream(every, "", every[1:])
    parts = raw.split("@")
    if len(parts) not in (2, 3):
        raise BinanceStreamError(f"invalid stream {raw[:MAX_NAME_CHARS]!r}")
    found = _CHANNELS.get(parts[1].lower())
    if found is None:
        raise BinanceStreamError(f"unknown channel {parts[1][:20]!r} in stream {raw!r}")
    channel = found[0]
    speed = parts[2].lower() if len(parts) == 3 else None
    if speed is not None and (speed not in SPEEDS or not channel.startswith("depth")):
        raise BinanceStreamError(f"invalid update speed {parts[2][:10]!r} in stream {raw!r}")
    market = cryptex_symbol(parts[0], markets)
    if market is None:
        raise BinanceStreamError(f"unknown symbol {parts[0][:20]!r} in stream {raw!r}")
    name = f"{parts[0].lower()}@{channel}" + (f"@{speed}" if speed else "")
    return BinanceStream(name, market, channel)


def could_be_stream(raw: str) -> bool:
    """Whether a path segment is meant as a stream name (it has an `@`), not a listen key."""
    return "@" in raw
