"""Public market data: the markets this process serves, their upstream handlers (depth,
trades, ticker, bookTicker), depth resyncs and candles.

Invariants:
- every served market has a `DepthTracker`, its kline builders and its four channels in
  `Upstream.routes`; a removed market has none of them;
- depth subscribers receive a `depthSnapshot` before any `depthUpdate` and, after a gap in
  the engine's sequence, a new `depthSnapshot` (reason `resync`) before any further update;
  no update that does not continue the previous one is ever forwarded (`book.DepthTracker`);
- at most one resync task runs per market (`_resyncing`);
- every candle is kept up to date whether or not anyone follows it; its message is built
  only for subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

import cryptex_common.metrics as metrics
from cryptex_common import keys
from cryptex_common.depth import read_depth
from cryptex_common.markets import MarketSpec
from cryptex_common.registry import MarketRegistry
from cryptex_wsgateway.book import DepthTracker
from cryptex_wsgateway.klines import KlineBuilder, parse_trades
from cryptex_wsgateway.protocol import data_message
from cryptex_wsgateway.publisher import Publisher, raw_message
from cryptex_wsgateway.streams import KLINE_INTERVALS_MS, Stream
from cryptex_wsgateway.upstream import SERVICE, Handler, Upstream

log = logging.getLogger("cryptex_wsgateway.gateway")
SNAPSHOT_LEVELS = 200  # levels per side a depth subscriber's snapshot holds
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class MarketData:
    def __init__(self, redis: Redis, upstream: Upstream, publisher: Publisher,
                 resync_wait_s: float, spawn: Spawn) -> None:
        self.redis = redis
        self.upstream = upstream
        self.publisher = publisher
        self.resync_wait_s = resync_wait_s
        self._spawn = spawn
        self.known_markets = MarketRegistry()
        self.trackers: dict[str, DepthTracker] = {}
        self.klines: dict[str, list[KlineBuilder]] = {}
        self.last_ticker: dict[str, bytes] = {}
        self.last_book_ticker: dict[str, bytes] = {}
        self._resyncing: set[str] = set()

    # --- markets: views of known_markets as of its last reload --------------------------
    @property
    def markets(self) -> dict[str, MarketSpec]:
        return self.known_markets.specs

    @property
    def asset_decimals(self) -> dict[str, int]:
        return self.known_markets.asset_decimals

    async def reload(self) -> None:
        """Serve exactly the markets in the registry: route and subscribe the new ones (and
        resync their depth), unroute and unsubscribe the removed ones."""
        added, removed = await self.known_markets.reload(self.redis)
        routes = self.upstream.routes
        channels: list[bytes] = []
        for m in added:
            await self._add_market(m)
            for channel, handler in self._market_routes(m).items():
                routes[channel] = handler
                channels.append(channel)
        gone: list[bytes] = []
        for m in removed:
            for channel in self._market_routes(m):
                routes.pop(channel, None)
                gone.append(channel)
            self.trackers.pop(m, None)
            self.klines.pop(m, None)
        pubsub = self.upstream.pubsub
        if pubsub is not None:
            if channels:
                await pubsub.subscribe(*channels)
            if gone:
                await pubsub.unsubscribe(*gone)
            for m in added:
                self.start_resync(m)
        if added or removed:
            log.info("markets loaded", extra={"added": added, "removed": removed})

    async def _add_market(self, m: str) -> None:
        metrics.WS_RESNAPSHOTS.labels(m)  # a zero series per market
        self.trackers[m] = DepthTracker(m)
        fmt = self.known_markets.formats[m]
        self.klines[m] = [KlineBuilder(fmt, interval) for interval in KLINE_INTERVALS_MS]
        ticker = await self.redis.get(keys.ticker_key(m))
        if ticker:
            self.last_ticker[m] = ticker if isinstance(ticker, bytes) else ticker.encode()

    def _market_routes(self, m: str) -> dict[bytes, Handler]:
        return {
            keys.depth_channel(m).encode(): lambda raw: self._on_depth(m, raw),
            keys.trades_channel(m).encode(): lambda raw: self._on_trades(m, raw),
            keys.ticker_channel(m).encode(): lambda raw: self._on_ticker(m, raw),
            keys.book_ticker_channel(m).encode(): lambda raw: self._on_book_ticker(m, raw),
        }

    def on_markets_changed(self, _: bytes) -> None:
        self._spawn(self.reload())

    # --- depth --------------------------------------------------------------------------
    def resync_all(self) -> None:
        for m in self.trackers:
            self.start_resync(m)

    def reset_all(self) -> None:
        """After a lost pub/sub connection: updates may have been lost while disconnected."""
        for tracker in self.trackers.values():
            tracker.reset()

    def _on_depth(self, market: str, raw: bytes) -> None:
        tracker = self.trackers[market]
        was_live = tracker.live
        for msg in tracker.on_diff(orjson.loads(raw)):
            self.publisher.publish(keys.depth_channel(market), "depth", msg, msg.get("ts"))
        if was_live and not tracker.live:
            metrics.WS_RESNAPSHOTS.labels(market).inc()
            log.warning("depth sequence gap, re-snapshotting", extra={"market": market})
            self.start_resync(market)

    def start_resync(self, market: str) -> None:
        if market not in self._resyncing:
            self._resyncing.add(market)
            self._spawn(self._resync(market))

    async def _resync(self, market: str) -> None:
        """Read the stored book (`cryptex_common.depth`) until it continues the buffered
        updates (or the wait is over)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resync_wait_s
        delay = 0.01
        try:
            while True:
                tracker = self.trackers.get(market)
                if tracker is None or tracker.live:
                    return
                try:
                    book = await read_depth(self.redis, market, SNAPSHOT_LEVELS)
                except (RedisError, OSError):
                    metrics.REDIS_ERRORS.labels(SERVICE).inc()
                    await asyncio.sleep(0.5)
                    continue
                out = tracker.on_snapshot(book, force=loop.time() >= deadline)
                if out is not None:
                    for msg in out:
                        self.publisher.publish(keys.depth_channel(market), "depth", msg)
                    if not tracker.live:  # a further gap inside the buffered updates
                        metrics.WS_RESNAPSHOTS.labels(market).inc()
                        deadline = loop.time() + self.resync_wait_s
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        finally:
            self._resyncing.discard(market)

    # --- trades, tickers, candles -------------------------------------------------------
    def _on_trades(self, market: str, raw: bytes) -> None:
        trades = orjson.loads(raw)
        ts = trades[0].get("ts") if trades else None
        self.publisher.publish_raw(keys.trades_channel(market), "trades", raw, ts)
        builders = self.klines.get(market)
        if not builders:
            return
        parsed = parse_trades(trades, builders[0].fmt)  # once, not once per interval
        wanted = self.publisher.wanted
        for builder in builders:
            topic = f"kline_{builder.interval}@{market}"
            # every candle is kept up to date; its message is built only for subscribers
            for msg in builder.fold(parsed, report=wanted(topic)):
                self.publisher.publish(topic, "kline", msg)

    def _on_ticker(self, market: str, raw: bytes) -> None:
        self.last_ticker[market] = raw
        self.publisher.publish_raw(keys.ticker_channel(market), "ticker", raw, None)

    def _on_book_ticker(self, market: str, raw: bytes) -> None:
        self.last_book_ticker[market] = raw
        self.publisher.publish_raw(keys.book_ticker_channel(market), "bookTicker", raw, None)

    def close_candles(self, now_ms: int) -> None:
        """Publish the candles whose bucket ended before `now_ms`."""
        for market, builders in self.klines.items():
            for b in builders:
                for msg in b.tick(now_ms):
                    self.publisher.publish(f"kline_{b.interval}@{market}", "kline", msg)

    def initial_message(self, stream: Stream) -> bytes | None:
        """What a new subscriber to a public stream needs before the updates: a depth
        snapshot (once the book is live, else the resync snapshot follows), the latest
        ticker or bookTicker, or the current candle; None when there is nothing yet."""
        m = stream.market
        if stream.channel == "depth" and m is not None:
            tracker = self.trackers.get(m)
            if tracker is not None and tracker.live:
                return data_message(stream.name, tracker.snapshot_message("subscribe"))
        elif stream.channel == "ticker" and m in self.last_ticker:
            return raw_message(stream.name, self.last_ticker[m])
        elif stream.channel == "bookTicker" and m in self.last_book_ticker:
            return raw_message(stream.name, self.last_book_ticker[m])
        elif stream.interval is not None and m is not None:
            payload: bytes | None = None
            for b in self.klines.get(m, ()):
                message = b.message() if b.interval == stream.interval else None
                if message is not None:
                    payload = data_message(stream.name, message)
            return payload
        return None
