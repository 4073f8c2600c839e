"""The engine service: one process per market, a thin shell around the matching core.

Loop: XREADGROUP a batch from MESSAGES:{M} -> core.apply each command -> settle the batch
(one Lua call: balances, order records, the events:{M} batch, the settled sequence) ->
XACK -> publish replies and market data (one pipeline).

Invariants:
- The command stream is the log. State = snapshot (or empty) + every entry after it, in
  stream order; the sequence is 1 + the number of commands before an entry.
- A batch is settled exactly once: the settle script refuses a sequence already applied
  (after a crash the replayed commands up to `settled` are re-matched but not re-settled)
  and refuses an engine whose fencing epoch is stale or whose lease lapsed.
- Publishing happens after settling: a lost publish loses a notification, never money.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from cryptex_common import keys, metrics
from cryptex_common.ledger import BalanceChange, Ledger, OrderWrite, lua_source
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import FillRecord, OrderRecord, Side
from cryptex_common.wire import WireFormat, fill_dicts
from cryptex_engine.domain.commands import CommandResult
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_engine.domain.ticker import RollingTicker
from cryptex_engine.settings import EngineSettings
from cryptex_engine.translate import TERMINAL, BatchOutput, Decoded, Record, Translator, decode_entry

log = logging.getLogger("cryptex.engine")

SNAPSHOT_VERSION = 1


class Fenced(Exception):
    """Another engine owns this market now; this one must stop without writing."""




def snapshot_checksum(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class EngineService:
    def __init__(self, settings: EngineSettings, redis: Redis, spec: MarketSpec) -> None:
        self.settings = settings
        self.redis = redis
        self.spec = spec
        self.symbol = spec.symbol
        self.ledger = Ledger(redis)
        self.core = MatchingEngine(spec.rules())
        self.translator = Translator(spec)
        self.ticker = RollingTicker()
        self.fmt = WireFormat(spec)
        self.stream = keys.commands_stream(self.symbol)
        self.consumer = settings.instance_id
        self._lease = redis.register_script(lua_source("lease.lua"))
        self.epoch = 0
        self.settled_seq = 0
        self.last_stream_id = "0-0"
        self.ready = False
        self._ticker_dirty = False
        self._last_top: tuple[Any, ...] = ()
        self._snapshot_seq = 0
        self._snapshot_at = time.monotonic()
        self._labels = {"market": self.symbol}
        self._private_users: frozenset[str] = frozenset()

    # --- ownership -------------------------------------------------------------------
    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the market's lease; False if stopped first."""
        waited = False
        while not stop.is_set():
            epoch = int(await self._lease(
                keys=[keys.engine_epoch_key(self.symbol), keys.engine_lease_key(self.symbol)],
                args=["acquire", "0", self.settings.lease_ttl_ms],
            ))
            if epoch:
                self.epoch = epoch
                log.info("engine owns market", extra={"market": self.symbol, "epoch": epoch})
                return True
            if not waited:
                log.warning(
                    "another engine holds this market; standing by",
                    extra={"market": self.symbol},
                )
                metrics.ENGINE_FENCED.labels(**self._labels).inc()
                waited = True
            await asyncio.sleep(self.settings.lease_ttl_ms / 4000)
        return False

    async def renew_lease(self) -> None:
        ok = await self._lease(
            keys=[keys.engine_epoch_key(self.symbol), keys.engine_lease_key(self.symbol)],
            args=["renew", str(self.epoch), self.settings.lease_ttl_ms],
        )
        if not int(ok):
            raise Fenced(f"lease for {self.symbol} lost (epoch {self.epoch})")

    async def keep_lease(self) -> None:
        """Renew the lease every third of its TTL, in the background, so long replays or
        batches never let it lapse. Losing it is final: settle is then refused anyway."""
        while True:
            await asyncio.sleep(self.settings.lease_ttl_ms / 3000)
            await self.renew_lease()

    async def release_lease(self) -> None:
        await self._lease(
            keys=[keys.engine_epoch_key(self.symbol), keys.engine_lease_key(self.symbol)],
            args=["release", str(self.epoch), self.settings.lease_ttl_ms],
        )

    # --- recovery --------------------------------------------------------------------
    async def load_snapshot(self) -> None:
        raw = await self.redis.get(keys.snapshot_key(self.symbol))
        if not raw:
            return
        doc = orjson.loads(raw)
        body = orjson.dumps(doc["state"], option=orjson.OPT_SORT_KEYS)
        if doc.get("version") != SNAPSHOT_VERSION or doc.get("checksum") != snapshot_checksum(body):
            # a bad snapshot is skipped, not trusted: the full stream still rebuilds the state
            log.error("snapshot rejected (version or checksum); replaying the whole stream",
                      extra={"market": self.symbol})
            return
        state = doc["state"]
        self.core = MatchingEngine.restore(self.spec.rules(), state["core"])
        self.translator.restore(state["meta"])
        self.ticker = RollingTicker.restore(state["ticker"])
        self.last_stream_id = state["lastStreamId"]
        self._snapshot_seq = self.core.seq
        log.info("snapshot loaded", extra={"market": self.symbol, "seq": self.core.seq})

    async def recover(self) -> None:
        """Snapshot + replay of the stream after it, settling only what was never settled."""
        await self.load_snapshot()
        self.settled_seq = int(await self.redis.get(keys.settled_seq_key(self.symbol)) or 0)
        started = time.monotonic()
        replayed = 0
        while True:
            entries = await self.redis.xrange(
                self.stream, min=f"({self.last_stream_id}", count=self.settings.batch_size
            )
            if not entries:
                break
            await self.process(entries)
            replayed += len(entries)
        try:
            await self.redis.xgroup_create(self.stream, keys.ENGINE_GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: it exists
            if "BUSYGROUP" not in str(exc):
                raise
        await self.redis.xgroup_setid(self.stream, keys.ENGINE_GROUP, id=self.last_stream_id)
        await self._ack_pending_upto(self.last_stream_id)
        log.info(
            "recovered",
            extra={"market": self.symbol, "seq": self.core.seq, "replayed": replayed,
                   "settled": self.settled_seq,
                   "recovery_ms": round((time.monotonic() - started) * 1000)},
        )

    async def _ack_pending_upto(self, last_id: str) -> None:
        while True:
            pending = await self.redis.xpending_range(
                self.stream, keys.ENGINE_GROUP, min="-", max=last_id, count=1000
            )
            if not pending:
                return
            await self.redis.xack(self.stream, keys.ENGINE_GROUP,
                                  *[p["message_id"] for p in pending])

    # --- one batch -------------------------------------------------------------------
    async def process(self, entries: Sequence[tuple[str, dict[str, str]]]) -> None:
        """Match a batch, settle what is not settled yet, publish. Used live and in replay."""
        t0 = time.perf_counter()
        out = BatchOutput()
        results: list[tuple[Decoded, CommandResult]] = []
        first_seq = 0
        for stream_id, fields in entries:
            try:
                decoded = decode_entry(stream_id, fields)
            except Exception as exc:
                # Not a command (never written by Cryptex code): skipped, deterministically.
                log.error("undecodable command skipped",
                          extra={"market": self.symbol, "streamId": stream_id, "error": str(exc)})
                await self.redis.xadd(keys.dead_letter_stream(self.symbol),
                                      {"source": self.stream, "id": stream_id, "error": str(exc)})
                continue
            result = self.core.apply(decoded.command, decoded.ts_ms)
            results.append((decoded, result))
            for f in result.fills:
                self.ticker.add_trade(decoded.ts_ms, f.price_ticks, f.quantity_lots, f.quote_units)
                self._ticker_dirty = True
            if result.seq > self.settled_seq:
                first_seq = first_seq or result.seq
                self.translator.add(decoded, result, out)
            else:
                # settled before a crash: keep the translator's order facts in step only
                self.translator.add(decoded, result, BatchOutput())
        self.last_stream_id = entries[-1][0]
        t1 = time.perf_counter()
        metrics.ENGINE_MATCH_SECONDS.labels(**self._labels).observe(t1 - t0)
        metrics.ENGINE_BATCH_SIZE.labels(**self._labels).observe(len(entries))
        if first_seq:
            last_seq = self.core.seq
            await self._settle(out, results, first_seq, last_seq)
            metrics.ENGINE_SETTLE_SECONDS.labels(**self._labels).observe(time.perf_counter() - t1)
            await self._publish(out, results, first_seq, last_seq)
        self._observe(results)

    async def _settle(
        self,
        out: BatchOutput,
        results: list[tuple[Decoded, CommandResult]],
        first_seq: int,
        last_seq: int,
    ) -> None:
        balances = [
            BalanceChange(d.user_id, d.asset, d.available, d.locked)
            for decoded, r in results if r.seq >= first_seq for d in r.balance_deltas
        ]
        orders = [
            OrderWrite(rec["orderId"], rec["userId"], orjson.dumps(rec).decode(), rec["status"] in TERMINAL)
            for rec in out.orders.values()
        ]
        ts_ms = results[-1][0].ts_ms
        batch_json = orjson.dumps(self.translator.batch(out, first_seq, last_seq, ts_ms)).decode()
        res = await self.ledger.settle(
            symbol=self.symbol, epoch=self.epoch, first_seq=first_seq, last_seq=last_seq,
            batch_json=batch_json, balances=balances, orders=orders,
        )
        if res.status == "fenced":
            metrics.ENGINE_FENCED.labels(**self._labels).inc()
            raise Fenced(f"settle refused: market {self.symbol} now has epoch {res.detail}")
        if res.status == "duplicate":
            log.warning("batch already settled", extra={"market": self.symbol, "seq": last_seq})
        elif res.status != "ok":
            # A gap or a negative balance is a bug: stop before anything else is written.
            raise RuntimeError(f"settle failed: {res.status} {res.detail}")
        self.settled_seq = last_seq

    # --- market data -----------------------------------------------------------------
    async def _publish(
        self,
        out: BatchOutput,
        results: list[tuple[Decoded, CommandResult]],
        first_seq: int,
        last_seq: int,
    ) -> None:
        fmt = self.fmt
        now_ms = results[-1][0].ts_ms
        levels: dict[tuple[Side, int], int] = {}
        for _, r in results:
            if r.seq >= first_seq:
                for side, price, qty in r.depth_changes:
                    levels[(side, price)] = qty
        diff = {
            "market": self.symbol, "U": first_seq, "u": last_seq, "pu": first_seq - 1,
            "bids": [[fmt.price(p), fmt.quantity(q)] for (s, p), q in levels.items()
                     if s == Side.BUY],
            "asks": [[fmt.price(p), fmt.quantity(q)] for (s, p), q in levels.items()
                     if s == Side.SELL],
            "ts": now_ms,
        }
        pipe = self.redis.pipeline(transaction=False)
        by_channel: dict[str, list[Record]] = {}
        for channel, reply in out.replies:
            by_channel.setdefault(channel, []).append(reply)
        for channel, replies in by_channel.items():
            pipe.publish(channel, orjson.dumps(replies))  # a JSON array: REPLY_BATCH_ADAPTER
        pipe.publish(keys.depth_channel(self.symbol), orjson.dumps(diff))
        if levels:
            bids, asks = self.core.depth(self.settings.depth_levels)
            book = {"market": self.symbol, "lastUpdateId": last_seq, "bids": fmt.levels(bids),
                    "asks": fmt.levels(asks), "ts": now_ms}
            pipe.set(keys.depth_key(self.symbol), orjson.dumps(book))
            top = (bids[0] if bids else None, asks[0] if asks else None)
            if top != self._last_top:
                self._last_top = top
                pipe.publish(keys.book_ticker_channel(self.symbol), orjson.dumps({
                    "market": self.symbol,
                    "bidPrice": fmt.price(top[0][0]) if top[0] else None,
                    "bidQty": fmt.quantity(top[0][1]) if top[0] else None,
                    "askPrice": fmt.price(top[1][0]) if top[1] else None,
                    "askQty": fmt.quantity(top[1][1]) if top[1] else None,
                    "u": last_seq, "ts": now_ms,
                }))
        if out.trades:
            public = [{**fmt.public_trade(t["tradeId"], t["priceTicks"], t["quantityLots"], t["quoteUnits"],
                                          t["takerSide"], t["tsMs"]), "seq": t["seq"]} for t in out.trades]
            pipe.publish(keys.trades_channel(self.symbol), orjson.dumps(public))
            recent = keys.recent_trades_key(self.symbol)
            pipe.lpush(recent, *[orjson.dumps(p) for p in public])
            pipe.ltrim(recent, 0, self.settings.recent_trades - 1)
        if self.settings.publish_user_updates:
            self._publish_user_updates(pipe, out, results, first_seq)
        await pipe.execute()

    def _publish_user_updates(
        self, pipe: Any, out: BatchOutput, results: list[tuple[Decoded, CommandResult]],
        first_seq: int,
    ) -> None:
        fmt = self.fmt
        wanted = self._private_users
        if not wanted:
            return
        for rec in out.orders.values():
            if rec["userId"] in wanted:
                pipe.publish(keys.user_channel(rec["userId"]), orjson.dumps(
                    {"type": "order", "data": fmt.order(OrderRecord.model_validate(rec))}))
        for t in out.trades:
            for f in fill_dicts(t, self.spec.base_asset, self.spec.quote_asset):
                if f["userId"] in wanted:
                    pipe.publish(keys.user_channel(f["userId"]), orjson.dumps(
                        {"type": "fill", "data": fmt.fill(FillRecord.model_validate(f))}))
        touched: dict[str, set[str]] = {}
        for _, r in results:
            if r.seq >= first_seq:
                for d in r.balance_deltas:
                    if d.user_id in wanted:
                        touched.setdefault(d.user_id, set()).add(d.asset)
        for user_id, assets in touched.items():
            pipe.publish(keys.user_channel(user_id),
                         orjson.dumps({"type": "balance", "data": {"assets": sorted(assets)}}))

    async def publish_ticker(self, now_ms: int) -> None:
        if not self._ticker_dirty:
            return
        self._ticker_dirty = False
        v = self.ticker.view(now_ms)
        fmt = self.fmt
        change_pct = None
        if v.open_ticks and v.last_ticks is not None:
            # percentage with 2 decimals, exact: integer arithmetic on ticks
            change_pct = f"{(v.last_ticks - v.open_ticks) * 10000 // v.open_ticks / 100:.2f}"
        bid, ask = self.core.best_bid(), self.core.best_ask()
        body = orjson.dumps({
            "market": self.symbol,
            "open": fmt.price(v.open_ticks), "high": fmt.price(v.high_ticks),
            "low": fmt.price(v.low_ticks), "last": fmt.price(v.last_ticks),
            "volume": fmt.quantity(v.volume_lots), "quoteVolume": fmt.quote(v.quote_units),
            "changePercent": change_pct, "count": v.count,
            "bestBid": fmt.price(bid), "bestAsk": fmt.price(ask),
            "openTime": v.open_time_ms, "closeTime": v.close_time_ms, "ts": now_ms,
        })
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.ticker_key(self.symbol), body)
        pipe.publish(keys.ticker_channel(self.symbol), body)
        await pipe.execute()

    def _observe(self, results: list[tuple[Decoded, CommandResult]]) -> None:
        m = self._labels
        for d, r in results:
            metrics.ENGINE_COMMANDS.labels(market=self.symbol, type=d.wire.type).inc()
            if r.fills:
                metrics.TRADES.labels(**m).inc(len(r.fills))
                metrics.TRADE_VOLUME_QUOTE.labels(**m).inc(
                    sum(f.quote_units for f in r.fills) / 10**self.spec.quote_decimals
                )
        metrics.ENGINE_LAST_SEQ.labels(**m).set(self.core.seq)
        metrics.ENGINE_RESTING_ORDERS.labels(**m).set(self.core.open_orders_count())
        n_bids, n_asks = self.core.level_counts()
        metrics.ENGINE_BOOK_LEVELS.labels(market=self.symbol, side="buy").set(n_bids)
        metrics.ENGINE_BOOK_LEVELS.labels(market=self.symbol, side="sell").set(n_asks)

    # --- snapshots -------------------------------------------------------------------
    async def write_snapshot(self) -> None:
        """The whole market state, atomically (one SET), with a version and a checksum.
        Only a fully settled state is written: a snapshot ahead of the ledger would make a
        restart skip commands whose funds were never moved."""
        if self.core.seq != self.settled_seq:
            log.error("snapshot skipped: state not settled",
                      extra={"market": self.symbol, "seq": self.core.seq, "settled": self.settled_seq})
            return
        state = {
            "market": self.symbol,
            "lastStreamId": self.last_stream_id,
            "core": self.core.snapshot(),
            "meta": self.translator.snapshot(),
            "ticker": self.ticker.snapshot(),
        }
        body = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
        doc = {"version": SNAPSHOT_VERSION, "seq": self.core.seq,
               "checksum": snapshot_checksum(body), "state": state}
        await self.redis.set(keys.snapshot_key(self.symbol), orjson.dumps(doc))
        self._snapshot_seq = self.core.seq
        self._snapshot_at = time.monotonic()
        metrics.ENGINE_SNAPSHOT_AGE.labels(**self._labels).set(0)

    def snapshot_due(self) -> bool:
        s = self.settings
        by_count = s.snapshot_every_commands and (
            self.core.seq - self._snapshot_seq >= s.snapshot_every_commands
        )
        by_time = s.snapshot_every_s and self.core.seq != self._snapshot_seq and (
            time.monotonic() - self._snapshot_at >= s.snapshot_every_s
        )
        return bool(by_count or by_time)

    async def refresh_private_users(self) -> None:
        members = await self.redis.zrangebyscore(keys.PRIVATE_SUBSCRIBERS, int(time.time() * 1000), "+inf")
        self._private_users = frozenset(members)

    async def update_lag(self) -> None:
        groups = await self.redis.xinfo_groups(self.stream)
        for g in groups:
            if g["name"] == keys.ENGINE_GROUP:
                lag = g.get("lag") or 0
                metrics.ENGINE_STREAM_LAG.labels(**self._labels).set(lag)
                age = 0.0
                if lag:
                    nxt = await self.redis.xrange(self.stream, min=f"({self.last_stream_id}",
                                                  count=1)
                    if nxt:
                        age = max(0.0, time.time() - int(nxt[0][0].split("-")[0]) / 1000)
                metrics.ENGINE_STREAM_OLDEST_AGE.labels(**self._labels).set(age)
        metrics.ENGINE_SNAPSHOT_AGE.labels(**self._labels).set(
            time.monotonic() - self._snapshot_at
        )

    # --- main loop -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        if not await self.acquire(stop):
            return
        lease = asyncio.create_task(self.keep_lease())
        try:
            await self._run_owned(stop, lease)
        finally:
            lease.cancel()  # on an error (fenced, Redis gone) nothing more is written
        # graceful stop: the last batch is settled; snapshot and hand the market over
        await self.write_snapshot()
        await self.release_lease()
        log.info("engine stopped", extra={"market": self.symbol, "seq": self.core.seq})

    async def _run_owned(self, stop: asyncio.Event, lease: asyncio.Task[None]) -> None:
        await self.refresh_private_users()
        await self.recover()
        self.ready = True
        last_ticker = last_lag = time.monotonic()
        try:
            while not stop.is_set():
                if lease.done():  # the lease was lost (or Redis failed): stop owning the market
                    lease.result()
                    raise Fenced(f"lease for {self.symbol} lost")
                reply = await self.redis.xreadgroup(
                    keys.ENGINE_GROUP, self.consumer, {self.stream: ">"},
                    count=self.settings.batch_size, block=self.settings.block_ms,
                )
                if reply:
                    entries = reply[0][1]
                    await self.process(entries)
                    await self.redis.xack(self.stream, keys.ENGINE_GROUP,
                                          *[e[0] for e in entries])
                now = time.monotonic()
                if now - last_ticker >= self.settings.ticker_interval_ms / 1000:
                    await self.publish_ticker(int(time.time() * 1000))
                    last_ticker = now
                if now - last_lag >= 1.0:
                    await self.update_lag()
                    await self.refresh_private_users()
                    last_lag = now
                if self.snapshot_due():
                    await self.write_snapshot()
        finally:
            self.ready = False
