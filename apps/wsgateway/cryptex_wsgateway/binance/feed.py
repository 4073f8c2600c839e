"""Binance market streams on the gateway's own data: taps on the native topics, translated
once per Binance stream and fanned out through the gateway's `Hub`.

Invariants:
- a native topic carries a tap exactly while some Binance socket follows a stream derived
  from it (`by_native`, and its inverse `natives_of`: an all-market stream follows every
  market's ticker), so nothing is translated for a stream nobody follows and native
  sockets are served exactly as before;
- each payload is encoded once per delivery form: bare (a `/ws` socket) and wrapped as
  `{"stream","data"}` (a combined socket); every subscriber gets the same bytes;
- a new subscriber first gets what Binance would send it soon anyway: the current partial
  book, ticker, bookTicker or open candle (nothing for diff depth, trades);
- diff-depth and partial-book streams are sent at their update speed (1000 ms, or 100 ms
  for `@100ms`), Binance's cadence, at most once per period and only when the book changed:
  diff updates are merged (`batching.DepthBatch`) and flushed early before a native resync,
  so every diff sent continues the previous one; a partial book is the tracker's book as
  of its last forwarded update id, never sent twice for the same id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

import cryptex_common.metrics as metrics
from cryptex_common.binance import binance_symbol
from cryptex_wsgateway.binance import payloads as p
from cryptex_wsgateway.binance.batching import DepthBatch
from cryptex_wsgateway.binance.streams import BinanceStream, parse_binance_stream
from cryptex_wsgateway.fanout import Connection
from cryptex_wsgateway.protocol import encode_text_frame
from cryptex_wsgateway.publisher import now_ms, stream_type
from cryptex_wsgateway.subscriptions import Subscriptions

if TYPE_CHECKING:
    from cryptex_wsgateway.gateway import Gateway

log = logging.getLogger("cryptex_wsgateway.binance")


def wrap(stream: str, body: bytes) -> bytes:
    """A combined-stream message around an encoded payload."""
    return b'{"stream":' + orjson.dumps(stream) + b',"data":' + body + b"}"


class PublicFeed:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.subs = Subscriptions()
        self.combined: set[Connection] = set()  # sockets that get {"stream","data"}
        self.streams: dict[str, BinanceStream] = {}  # followed Binance name -> stream
        self.by_native: dict[str, set[str]] = {}  # native topic -> Binance names
        self.natives_of: dict[str, list[str]] = {}  # Binance name -> native topics
        self._partial_sent: dict[str, int] = {}
        self._batches: dict[str, DepthBatch] = {}  # diff depth merged until its update time
        self._due: set[str] = set()  # streams with a send scheduled
        self._zeros: dict[str, p.Zeros] = {}

    # --- subscriptions ------------------------------------------------------------------
    def parse(self, names: list[Any]) -> list[BinanceStream]:
        """Every name parsed (BinanceStreamError on the first bad one)."""
        markets = self.gw.market.markets
        return [parse_binance_stream(n, markets) for n in names]

    def subscribe(self, conn: Connection, streams: list[BinanceStream], limit: int) -> list[BinanceStream]:
        """All or nothing (TooManyStreams); returns the streams newly held by `conn`."""
        new = set(self.subs.add(conn, [s.name for s in streams], limit))
        added = []
        for s in streams:
            if s.name in new:
                new.discard(s.name)
                added.append(s)
                self._follow(s)
        return added

    def unsubscribe(self, conn: Connection, names: list[str]) -> None:
        for name in self.subs.remove(conn, names):
            self._maybe_unfollow(name)

    def drop(self, conn: Connection) -> None:
        self.combined.discard(conn)
        for name in self.subs.drop(conn):
            self._maybe_unfollow(name)

    def names_of(self, conn: Connection) -> list[str]:
        return sorted(self.subs.topics_of(conn))

    def _follow(self, s: BinanceStream) -> None:
        if s.name in self.streams:
            return
        self.streams[s.name] = s
        natives = self.natives_of[s.name] = s.natives(self.gw.market.markets)
        for native in natives:
            self.by_native.setdefault(native, set()).add(s.name)
            self.gw.publisher.taps[native] = self._tap(native)

    def _tap(self, native: str) -> Any:
        return lambda payload: self._on_native(native, payload)

    def _maybe_unfollow(self, name: str) -> None:
        if self.subs.subscribers(name):
            return
        self.streams.pop(name, None)
        self._partial_sent.pop(name, None)
        self._batches.pop(name, None)
        for native in self.natives_of.pop(name, ()):
            names = self.by_native.get(native)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.by_native[native]
                    self.gw.publisher.taps.pop(native, None)

    # --- data ---------------------------------------------------------------------------
    def _on_native(self, native: str, payload: Any) -> None:
        data = orjson.loads(payload) if isinstance(payload, bytes | bytearray) else payload
        now = now_ms()
        kind = stream_type(native)
        market = native.partition("@")[2]
        for name in list(self.by_native.get(native, ())):
            stream = self.streams[name]
            for out in self._translate(stream, data, now, market):
                self.send(name, out, kind)

    def _translate(self, s: BinanceStream, data: Any, now: int, market: str) -> list[Any]:
        """Payloads for stream `s` from one native message of `market`."""
        if s.all_markets:  # an array of the tickers that changed: this market's
            zeros, symbol = self.zeros(market), binance_symbol(market)
            if s.channel == "miniTicker@arr":
                return [[p.mini_ticker(symbol, data, zeros)]]
            return [[p.ticker(symbol, data, self._book_ticker(market), zeros)]]
        symbol, channel = s.symbol, s.channel
        if channel == "depth":
            self._batch_depth(s, data)
            return []
        if s.levels is not None:
            self._later(s.name, s.update_ms, lambda: self._flush_partial(s))
            return []
        if channel == "trade":
            return [p.trade(symbol, t) for t in data]
        if channel == "aggTrade":
            return [p.agg_trade(symbol, t) for t in data]
        if s.interval is not None:
            return [p.kline(symbol, data, now)]
        zeros = self.zeros(s.market)
        if channel == "miniTicker":
            return [p.mini_ticker(symbol, data, zeros)]
        if channel == "ticker":
            return [p.ticker(symbol, data, self._book_ticker(s.market), zeros)]
        return [p.book_ticker(symbol, data, zeros)]

    # --- depth at the stream's update speed -----------------------------------------------
    def _later(self, name: str, delay_ms: int, flush: Any) -> None:
        """Run `flush` once `delay_ms` from now, unless it is already due for `name`."""
        if name not in self._due:
            self._due.add(name)
            asyncio.get_running_loop().call_later(delay_ms / 1000, self._run_due, name, flush)

    def _run_due(self, name: str, flush: Any) -> None:
        self._due.discard(name)
        if name in self.streams:
            flush()

    def _batch_depth(self, s: BinanceStream, msg: dict[str, Any]) -> None:
        """Merge native updates over the stream's update speed; a native snapshot (a resync:
        the next update does not continue) or a gap sends what was merged at once."""
        batch = self._batches.get(s.name)
        if batch is not None and (msg.get("e") != "depthUpdate" or not batch.continues(msg)):
            self._flush_depth(s)
            batch = None
        if msg.get("e") != "depthUpdate":
            return
        if batch is None:
            self._batches[s.name] = DepthBatch(msg)
            self._later(s.name, s.update_ms, lambda: self._flush_depth(s))
        else:
            batch.add(msg)

    def _flush_depth(self, s: BinanceStream) -> None:
        batch = self._batches.pop(s.name, None)
        if batch is not None:
            self.send(s.name, batch.payload(s.symbol, now_ms()), "depth")

    def _flush_partial(self, s: BinanceStream) -> None:
        for payload in self._partial(s):
            self.send(s.name, payload, "depth")

    def _partial(self, s: BinanceStream) -> list[p.Payload]:
        tracker = self.gw.market.trackers.get(s.market)
        if tracker is None or not tracker.live or s.levels is None:
            return []
        if self._partial_sent.get(s.name) == tracker.emitted_u:
            return []
        self._partial_sent[s.name] = tracker.emitted_u
        bids, asks = tracker.book.top(s.levels)
        return [p.partial_depth(tracker.emitted_u, bids, asks)]

    def _book_ticker(self, market: str) -> dict[str, Any] | None:
        raw = self.gw.market.last_book_ticker.get(market)
        return orjson.loads(raw) if raw else None

    def zeros(self, market: str) -> p.Zeros:
        z = self._zeros.get(market)
        if z is None:
            z = self._zeros[market] = p.Zeros(self.gw.market.markets[market])
        return z

    def send(self, name: str, payload: Any, kind: str) -> None:
        """Encode once per delivery form and queue on every subscriber of `name`."""
        conns = self.subs.subscribers(name)
        if not conns:
            return
        body = orjson.dumps(payload)
        bare = [c for c in conns if c not in self.combined]
        wrapped = [c for c in conns if c in self.combined]
        hub = self.gw.hub
        sent = 0
        if bare:
            sent += hub.broadcast(bare, encode_text_frame(body))  # type: ignore[arg-type]
        if wrapped:
            sent += hub.broadcast(wrapped, encode_text_frame(wrap(name, body)))  # type: ignore[arg-type]
        metrics.WS_MESSAGES_SENT.labels(kind).inc(sent)

    def frame_for(self, conn: Connection, name: str, payload: Any) -> bytes:
        body = orjson.dumps(payload)
        return encode_text_frame(wrap(name, body) if conn in self.combined else body)

    # --- a new subscriber -----------------------------------------------------------------
    def initial(self, conn: Connection, s: BinanceStream) -> None:
        """What a new subscriber gets at once (see the module's invariants)."""
        payload = self._initial_payload(s)
        if payload is not None:
            self.gw.hub.send(conn, self.frame_for(conn, s.name, payload))

    def _initial_payload(self, s: BinanceStream) -> Any:
        market, now = self.gw.market, now_ms()
        if s.all_markets:
            tickers = [self._translate(s, orjson.loads(raw), now, m)[0][0]
                       for m, raw in sorted(market.last_ticker.items()) if m in market.markets]
            return tickers or None
        if s.levels is not None:
            tracker = market.trackers.get(s.market)
            if tracker is None or not tracker.live:
                return None
            bids, asks = tracker.book.top(s.levels)
            return p.partial_depth(tracker.emitted_u, bids, asks)
        if s.channel in ("ticker", "miniTicker") and s.market in market.last_ticker:
            return self._translate(s, orjson.loads(market.last_ticker[s.market]), now, s.market)[0]
        if s.channel == "bookTicker" and s.market in market.last_book_ticker:
            return self._translate(s, orjson.loads(market.last_book_ticker[s.market]), now, s.market)[0]
        if s.interval is not None:
            for b in market.klines.get(s.market, ()):
                message = b.message() if b.interval == s.interval else None
                if message is not None:
                    return p.kline(s.symbol, message, now)
        return None
