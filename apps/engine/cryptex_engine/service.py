"""The engine service: one process per market, a thin shell around the matching core.

Loop: XREAD a batch from MESSAGES:{M} after the engine's own position (its last stream id)
-> core.apply each command -> settle the batch (one Lua call: balances, order records, the
events:{M} batch, the settled sequence) -> publish replies and market data (one pipeline).

Invariants:
- The command stream is the log. State = snapshot (or empty) + every entry after it, in
  stream order; the sequence is 1 + the number of commands before an entry.
- A batch is settled exactly once: the settle script refuses a sequence already applied
  (after a crash the replayed commands up to `settled` are re-matched but not re-settled)
  and refuses an engine whose fencing epoch is stale or whose lease lapsed.
- Publishing happens after settling: a lost publish loses a notification, never money.
- Reading never changes what another engine will read: the engine reads by its own position
  (XREAD), never by consumer-group delivery, so a stale engine reading once more after a
  takeover hides no entry from the new owner (issue 11 defect 5). The `engine` group is
  kept only as a position marker (moved with XGROUP SETID ... ENTRIESREAD) for trimming,
  lag metrics and the operator's drain check.
- Rules are sequenced: the core starts from `MatchingEngine.empty` (bootstrap rules) or a
  snapshot's rules, and only configure commands change them (docs/decisions/0010).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from cryptex_common import keys, metrics, registry
from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.ledger import BalanceChange, Ledger, OrderWrite, lua_source
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import FillRecord, OrderRecord, Side
from cryptex_common.wire import WireFormat, fill_dicts
from cryptex_engine.domain.commands import CommandResult
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_engine.domain.ticker import RollingTicker
from cryptex_engine.settings import EngineSettings
from cryptex_engine.translate import TERMINAL, BatchOutput, Decoded, Record, Translator, read_entry

log = logging.getLogger("cryptex.engine")

SNAPSHOT_VERSION = 2
# What load_snapshot still reads: v1 = one JSON document {"version","seq","checksum","state"}.
SNAPSHOT_VERSIONS_READ = (1, 2)


class Fenced(Exception):
    """Another engine owns this market now; this one must stop without writing."""


class SnapshotError(ValueError):
    """A snapshot that must not be trusted (unknown version, bad checksum, truncated)."""


class StreamTrimmed(RuntimeError):
    """The command stream no longer holds what this state needs (no valid snapshot)."""


def snapshot_checksum(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def encode_snapshot(state: dict[str, Any], seq: int) -> bytes:
    """`<header JSON>\n<state JSON>`: the checksum covers the state bytes exactly as stored,
    so loading verifies them without serialising again. orjson is used when it can
    represent every value; amounts of 18-decimal assets can exceed 64 bits, which orjson
    refuses (and which orjson.loads would silently turn into floats), so such a state is
    written with the json module and marked `"codec": "json"` to be read back exactly."""
    try:
        body = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
        codec = "orjson"
    except TypeError:  # an integer beyond 64 bits
        body = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
        codec = "json"
    header = orjson.dumps({"version": SNAPSHOT_VERSION, "seq": seq, "codec": codec,
                           "length": len(body), "checksum": snapshot_checksum(body)})
    return header + b"\n" + body


def decode_snapshot(raw: bytes | str) -> dict[str, Any]:
    """The state of a stored snapshot (with "seq"), or SnapshotError."""
    if isinstance(raw, str):
        raw = raw.encode()
    head, sep, body = raw.partition(b"\n")
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"unreadable header: {exc}") from None
    version = header.get("version") if isinstance(header, dict) else None
    if version == 1:  # one document; its checksum was over orjson's sorted dump of "state"
        state = header["state"]
        try:
            again = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            raise SnapshotError("v1 snapshot holds integers beyond 64 bits") from None
        if header.get("checksum") != snapshot_checksum(again):
            raise SnapshotError("checksum mismatch")
        return {**state, "seq": header.get("seq")}
    if version not in SNAPSHOT_VERSIONS_READ or not sep:
        raise SnapshotError(f"unknown snapshot version {version!r}")
    if header.get("length") != len(body) or header.get("checksum") != snapshot_checksum(body):
        raise SnapshotError("checksum or length mismatch")
    state = json.loads(body) if header.get("codec") == "json" else orjson.loads(body)
    if not isinstance(state, dict):
        raise SnapshotError("snapshot state is not an object")
    return {**state, "seq": header.get("seq")}


def id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, n = stream_id.partition("-")
    return int(ms), int(n or 0)


def min_stream_id(*ids: str | None) -> str | None:
    """The smallest of the given stream ids; None if any is None (unknown = keep all)."""
    if not ids or any(i is None for i in ids):
        return None
    return min((i for i in ids if i is not None), key=id_tuple)


async def stream_gap_after(redis: Redis, stream: str, from_id: str) -> str | None:
    """Why entries after `from_id` may be missing from `stream` (trimmed), or None.
    Cryptex only ever removes entries from the head (XTRIM MINID, never XDEL), so the stream
    is whole after `from_id` when nothing was removed or its first entry is <= `from_id`.
    (Redis 7.0's max-deleted-entry-id is not moved by XTRIM, so it cannot tell.)"""
    try:
        info = await redis.xinfo_stream(stream)
    except Exception:  # no such stream: nothing was ever added or removed
        return None
    length, added = int(info.get("length") or 0), int(info.get("entries-added") or 0)
    if added <= length:
        return None
    first = info.get("first-entry")
    first_id = first[0] if first else info.get("last-generated-id") or "0-0"
    if isinstance(first_id, bytes):
        first_id = first_id.decode()
    if first is None and id_tuple(first_id) <= id_tuple(from_id):
        return None  # emptied up to its last entry, which this state already includes
    if first is not None and id_tuple(first_id) <= id_tuple(from_id):
        return None
    return f"{stream} was trimmed ({added - length} entries removed, first left {first_id}) past {from_id}"


@contextlib.contextmanager
def gc_paused() -> Any:
    """No cyclic GC while a big state is copied: building a snapshot of a 500,000-order book
    takes ~0.07 s without it and ~0.6 s with it (the collector walks the whole heap as the
    copy allocates). Nothing copied forms a cycle; reference counting frees it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class EngineService:
    def __init__(self, settings: EngineSettings, redis: Redis, spec: MarketSpec) -> None:
        self.settings = settings
        self.redis = redis
        self.spec = spec
        self.symbol = spec.symbol
        self.ledger = Ledger(redis)
        self.core = MatchingEngine.empty(spec.rules())
        self.translator = Translator(spec)
        self.ticker = RollingTicker()
        self.fmt = WireFormat(spec)
        self.stream = keys.commands_stream(self.symbol)
        self._lease = redis.register_script(lua_source("lease.lua"))
        self.epoch = 0
        self.settled_seq = 0
        self.last_stream_id = "0-0"
        self.entries_read = 0  # stream entries up to last_stream_id (Redis' entries-read)
        self._group_at = ""  # the position last written to the engine group
        self.ready = False
        self._ticker_dirty = False
        self._last_top: tuple[Any, ...] = ()
        self._snapshot_seq = 0
        self._snapshot_at = time.monotonic()
        self._labels = {"market": self.symbol}
        self._init_metrics()

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
    async def sequence_rules_if_needed(self) -> None:
        """A market whose stream never carried its rules (registered before they travelled
        on it) gets a configure with the registry's current rules appended now: from that
        entry on, live matching and every replay judge by the same rules. Until it is
        read, the bootstrap rules hold (docs/decisions/0010)."""
        if self.core.rules_seq:
            return
        if await registry.sequence_current_rules(self.redis, self.symbol):
            log.warning("market rules were never sequenced; queued a configure from the registry",
                        extra={"market": self.symbol, "seq": self.core.seq})

    async def load_snapshot(self) -> bool:
        """Restore the stored snapshot if it verifies; False (empty state) otherwise."""
        raw = await self.redis.get(keys.snapshot_key(self.symbol))
        if not raw:
            return False
        started = time.perf_counter()
        try:
            with gc_paused():
                state = decode_snapshot(raw)
                core = MatchingEngine.restore(self.spec.rules(), state["core"])
                self.translator.restore(state["meta"])
                self.ticker = RollingTicker.restore(state["ticker"])
        except (SnapshotError, ValueError, KeyError, TypeError) as exc:
            # a bad snapshot is skipped, not trusted: the full stream still rebuilds the
            # state (recover() refuses to go on when the stream was trimmed)
            log.error("snapshot rejected; replaying the whole stream",
                      extra={"market": self.symbol, "error": str(exc)})
            self.translator = Translator(self.spec)
            self.ticker = RollingTicker()
            return False
        self.core = core
        self.last_stream_id = state["lastStreamId"]
        self._snapshot_seq = self.core.seq
        self._stored_snapshot_id = self.last_stream_id
        log.info("snapshot loaded", extra={
            "market": self.symbol, "seq": self.core.seq, "lastStreamId": self.last_stream_id,
            "load_ms": round((time.perf_counter() - started) * 1000)})
        return True

    async def check_stream_covers(self, from_id: str) -> None:
        """Refuse to rebuild from a stream that lost entries this state needs: entries after
        `from_id` must all still be there (XTRIM never removed one beyond it)."""
        gap = await stream_gap_after(self.redis, self.stream, from_id)
        if gap:
            raise StreamTrimmed(f"{gap}: a valid snapshot is needed to rebuild this market "
                                "(see docs/durability.md)")

    async def recover(self, stop: asyncio.Event | None = None) -> None:
        """Snapshot + replay of the stream after it, settling only what was never settled.
        A stop request ends the replay at a batch boundary (graceful stop stays bounded)."""
        try:
            await self.check_stream_covers("0-0")
        except StreamTrimmed:
            if not await self.load_snapshot():
                raise
            await self.check_stream_covers(self.last_stream_id)
        else:
            await self.load_snapshot()
        self.settled_seq = int(await self.redis.get(keys.settled_seq_key(self.symbol)) or 0)
        started = time.monotonic()
        replayed = 0
        while True:
            entries = await self.redis.xrange(
                self.stream, min=f"({self.last_stream_id}", count=self.settings.batch_size
            )
            if not entries or (stop is not None and stop.is_set()):
                break
            await self.process(entries)
            replayed += len(entries)
        try:
            await self.redis.xgroup_create(self.stream, keys.ENGINE_GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: it exists
            if "BUSYGROUP" not in str(exc):
                raise
        self.entries_read = await self._entries_read_at(self.last_stream_id)
        await self.sync_group()
        # entries an engine of the consumer-group era left pending: nobody reads them so
        await self._ack_pending_upto(self.last_stream_id)
        log.info(
            "recovered",
            extra={"market": self.symbol, "seq": self.core.seq, "replayed": replayed,
                   "settled": self.settled_seq,
                   "recovery_ms": round((time.monotonic() - started) * 1000)},
        )

    async def _entries_read_at(self, last_id: str) -> int:
        """How many entries were ever added up to `last_id` (Redis' entries-read of a
        reader at that position): all ever added, minus those after it (few: recovery has
        just read up to the end)."""
        info = await self.redis.xinfo_stream(self.stream)
        added = int(info.get("entries-added") or 0)
        last_generated = info.get("last-generated-id") or "0-0"
        if id_tuple(last_generated) <= id_tuple(last_id):
            return added
        after = await self.redis.xrange(self.stream, min=f"({last_id}", max=last_generated)
        return added - len(after)

    async def sync_group(self) -> None:
        """Move the `engine` group to this engine's position (a marker for trimming, lag
        and the operator's drain check; nothing is read through it). A stale engine
        moving it back only delays trimming, which also waits for the stored snapshot."""
        if self.last_stream_id == self._group_at:
            return
        await self.redis.xgroup_setid(self.stream, keys.ENGINE_GROUP, self.last_stream_id,
                                      entries_read=self.entries_read)
        self._group_at = self.last_stream_id

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
            decoded, error = read_entry(stream_id, fields, self.spec)
            if error is not None:
                await self.dead_letter(stream_id, error, rejected=decoded is not None)
            if decoded is None:
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
        self.entries_read += len(entries)
        t1 = time.perf_counter()
        metrics.ENGINE_MATCH_SECONDS.labels(**self._labels).observe(t1 - t0)
        metrics.ENGINE_BATCH_SIZE.labels(**self._labels).observe(len(entries))
        if first_seq:
            last_seq = self.core.seq
            subscribed = await self._settle(out, results, first_seq, last_seq)
            metrics.ENGINE_SETTLE_SECONDS.labels(**self._labels).observe(time.perf_counter() - t1)
            await self._publish(out, results, first_seq, last_seq, subscribed)
            self._log_commands(results, first_seq)
        self._observe(results)

    async def dead_letter(self, stream_id: str, error: str, rejected: bool) -> None:
        """Copy an undecodable entry's id and error to the dead-letter stream under the same
        stream id, so a replay of it adds nothing (XADD refuses an id not above the last)."""
        if self._dead_lettered_upto and id_tuple(stream_id) <= id_tuple(self._dead_lettered_upto):
            return
        log.error("undecodable command" + (": order rejected, lock released" if rejected else " skipped"),
                  extra={"market": self.symbol, "streamId": stream_id, "error": error})
        try:
            await self.redis.xadd(keys.dead_letter_stream(self.symbol),
                                  {"source": self.stream, "id": stream_id, "error": error,
                                   "rejected": "1" if rejected else "0"}, id=stream_id)
        except Exception as exc:
            if "equal or smaller" not in str(exc):
                raise
        self._dead_lettered_upto = stream_id

    async def _settle(
        self,
        out: BatchOutput,
        results: list[tuple[Decoded, CommandResult]],
        first_seq: int,
        last_seq: int,
    ) -> frozenset[str]:
        """Settle the batch; returns the users it touched who hold a live private
        subscription at settle time (checked inside the settle script, so a user who
        subscribed just before is never missed)."""
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
        notify = self._touched_users(out, results, first_seq) if self.settings.publish_user_updates else ()
        res = await self.ledger.settle(
            symbol=self.symbol, epoch=self.epoch, first_seq=first_seq, last_seq=last_seq,
            batch_json=batch_json, balances=balances, orders=orders,
            notify_users=notify, now_ms=int(time.time() * 1000),
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
        return res.subscribed

    @staticmethod
    def _touched_users(out: BatchOutput, results: list[tuple[Decoded, CommandResult]],
                       first_seq: int) -> list[str]:
        """Every user whose orders, fills or balances the unsettled part of the batch changed
        (the fee account is nobody's socket)."""
        users: dict[str, None] = {rec["userId"]: None for rec in out.orders.values()}
        for t in out.trades:
            users[t["buyUserId"]] = None
            users[t["sellUserId"]] = None
        for _, r in results:
            if r.seq >= first_seq:
                for d in r.balance_deltas:
                    users[d.user_id] = None
        users.pop(FEE_ACCOUNT, None)
        return list(users)

    # --- market data -----------------------------------------------------------------
    async def _publish(
        self,
        out: BatchOutput,
        results: list[tuple[Decoded, CommandResult]],
        first_seq: int,
        last_seq: int,
        subscribed: frozenset[str] = frozenset(),
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
        if subscribed:
            self._publish_user_updates(pipe, out, results, first_seq, subscribed)
        await pipe.execute()

    def _publish_user_updates(
        self, pipe: Any, out: BatchOutput, results: list[tuple[Decoded, CommandResult]],
        first_seq: int, wanted: frozenset[str],
    ) -> None:
        fmt = self.fmt
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
        by_type: dict[str, int] = {}
        trades = quote_units = 0
        for d, r in results:  # counted per batch: a labels() lookup per command costs more than matching
            by_type[d.wire.type] = by_type.get(d.wire.type, 0) + 1
            trades += len(r.fills)
            quote_units += sum(f.quote_units for f in r.fills)
        for kind, n in by_type.items():
            metrics.ENGINE_COMMANDS.labels(market=self.symbol, type=kind).inc(n)
        if trades:
            metrics.TRADES.labels(**m).inc(trades)
            metrics.TRADE_VOLUME_QUOTE.labels(**m).inc(quote_units / 10**self.spec.quote_decimals)
        metrics.ENGINE_LAST_SEQ.labels(**m).set(self.core.seq)
        metrics.ENGINE_RESTING_ORDERS.labels(**m).set(self.core.open_orders_count())
        n_bids, n_asks = self.core.level_counts()
        metrics.ENGINE_BOOK_LEVELS.labels(market=self.symbol, side="buy").set(n_bids)
        metrics.ENGINE_BOOK_LEVELS.labels(market=self.symbol, side="sell").set(n_asks)

    # --- observability -----------------------------------------------------------------
    def _init_metrics(self) -> None:
        """Zero series for every label value this engine owns, so rules and dashboards see
        them before the first event (e.g. `rate(cryptex_engine_commands_total)` for
        CryptexEngineNotConsuming, the fenced counter before any fencing)."""
        m = self._labels
        for kind in ("place", "cancel", "cancel_all", "configure", "unsupported"):  # command `type`s
            metrics.ENGINE_COMMANDS.labels(market=self.symbol, type=kind)
        for side in ("buy", "sell"):
            metrics.ENGINE_BOOK_LEVELS.labels(market=self.symbol, side=side)
        for metric in (metrics.ENGINE_BATCH_SIZE, metrics.ENGINE_MATCH_SECONDS,
                       metrics.ENGINE_SETTLE_SECONDS, metrics.ENGINE_STREAM_LAG,
                       metrics.ENGINE_STREAM_OLDEST_AGE, metrics.ENGINE_RESTING_ORDERS,
                       metrics.ENGINE_LAST_SEQ, metrics.ENGINE_SNAPSHOT_AGE,
                       metrics.ENGINE_FENCED, metrics.TRADES, metrics.TRADE_VOLUME_QUOTE):
            metric.labels(**m)
        metrics.REDIS_ERRORS.labels(service="engine")
        self._redis_memory_at = 0.0

    async def update_redis_memory(self) -> None:
        """Redis used_memory / maxmemory from INFO memory, at most every 5 s. A failure is
        counted and logged, never fatal: this is a gauge refresh, not the engine's work."""
        now = time.monotonic()
        if now - self._redis_memory_at < 5.0:
            return
        self._redis_memory_at = now
        try:
            info = await self.redis.info("memory")
        except Exception as exc:
            metrics.REDIS_ERRORS.labels(service="engine").inc()
            log.warning("redis INFO memory failed", extra={"error": repr(exc)})
            return
        metrics.REDIS_USED_MEMORY.set(int(info.get("used_memory", 0)))
        metrics.REDIS_MAXMEMORY.set(int(info.get("maxmemory", 0)))

    def _log_commands(self, results: list[tuple[Decoded, CommandResult]], first_seq: int) -> None:
        """Rejected commands and cancels at INFO, every other command at DEBUG (only when
        enabled): orderId + correlationId follow an order from the API's "order queued".
        Commands settled before a restart (seq < first_seq) are not logged again."""
        debug = log.isEnabledFor(logging.DEBUG)
        for d, r in results:
            kind = d.wire.type
            if r.seq < first_seq or (r.accepted and kind == "place" and not debug):
                continue
            extra: dict[str, Any] = {
                "seq": r.seq, "type": kind,
                "orderId": d.order_id if d.order_id is not None else getattr(d.wire, "order_id", None),
                "correlationId": getattr(d.wire, "correlation_id", None),
            }
            if not r.accepted:
                log.info("command rejected", extra={**extra, "reason": r.reject_reason})
            elif kind == "cancel":
                log.info("order cancelled", extra=extra)
            elif kind == "cancel_all":
                log.info("orders cancelled", extra={**extra, "cancelled": len(r.updates)})
            elif debug:
                log.debug("command applied", extra={
                    **extra, "status": r.order.status.value if r.order else None,
                    "fills": len(r.fills)})

    # --- snapshots -------------------------------------------------------------------
    # Crash-safety state, kept as class defaults (immutable) so __init__ stays as it is.
    _dead_lettered_upto: str = ""
    _snapshot_task: asyncio.Task[None] | None = None
    _stored_snapshot_id: str | None = None  # lastStreamId of the snapshot in Redis
    _last_trim: float = 0.0
    _state_waiters: list[asyncio.Future[dict[str, Any]]] | None = None
    _snapshot_script: Any = None
    last_snapshot_pause_s: float = 0.0  # how long the last snapshot held the matching loop

    def capture_snapshot(self) -> tuple[int, str, dict[str, Any]] | None:
        """A consistent copy of the whole market state, taken between batches (synchronous,
        so nothing changes meanwhile). The copy shares no mutable object with the live
        state, so it can be serialised elsewhere while matching goes on. Only a fully
        settled state is captured: a snapshot ahead of the ledger would make a restart skip
        commands whose funds were never moved."""
        if self.core.seq != self.settled_seq:
            log.error("snapshot skipped: state not settled",
                      extra={"market": self.symbol, "seq": self.core.seq, "settled": self.settled_seq})
            return None
        state = {
            "market": self.symbol,
            "lastStreamId": self.last_stream_id,
            "core": self.core.snapshot(),
            "meta": self.translator.snapshot(),
            "ticker": self.ticker.snapshot(),
        }
        return self.core.seq, self.last_stream_id, state

    async def _store_snapshot(self, seq: int, last_id: str, state: dict[str, Any]) -> None:
        """Serialise + checksum in a worker thread, then one fenced SET (snapshot_set.lua:
        only while this engine's epoch and lease hold, so a fenced engine writes nothing)."""
        started = time.perf_counter()
        raw = await asyncio.to_thread(encode_snapshot, state, seq)
        del state
        if self._snapshot_script is None:
            self._snapshot_script = self.redis.register_script(lua_source("snapshot_set.lua"))
        ok = await self._snapshot_script(
            keys=[keys.engine_epoch_key(self.symbol), keys.engine_lease_key(self.symbol),
                  keys.snapshot_key(self.symbol)],
            args=[str(self.epoch), raw],
        )
        if not int(ok):
            metrics.ENGINE_FENCED.labels(**self._labels).inc()
            raise Fenced(f"snapshot refused: market {self.symbol} has a newer epoch")
        self._stored_snapshot_id = last_id
        metrics.ENGINE_SNAPSHOT_AGE.labels(**self._labels).set(0)
        log.info("snapshot written", extra={
            "market": self.symbol, "seq": seq, "bytes": len(raw),
            "pause_ms": round(self.last_snapshot_pause_s * 1000, 1),
            "write_ms": round((time.perf_counter() - started) * 1000, 1)})

    def start_snapshot(self) -> bool:
        """Capture now (the only part that holds up matching) and store in the background.
        At most one snapshot is in flight; False if none was started."""
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return False
        self._reap_snapshot_task()
        t0 = time.perf_counter()
        with gc_paused():
            captured = self.capture_snapshot()
        self.last_snapshot_pause_s = time.perf_counter() - t0
        if captured is None:
            return False
        self._snapshot_seq = captured[0]
        self._snapshot_at = time.monotonic()
        self._snapshot_task = asyncio.create_task(self._store_snapshot(*captured))
        return True

    def _reap_snapshot_task(self) -> None:
        """Surface a finished background snapshot's failure: fenced stops the engine; any
        other failure (Redis away) is logged and retried at the next due time."""
        task, self._snapshot_task = self._snapshot_task, None
        if task is None or not task.done() or task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, Fenced):
            raise exc
        if exc is not None:
            log.error("snapshot write failed", extra={"market": self.symbol, "error": repr(exc)})

    async def write_snapshot(self) -> None:
        """Snapshot now and wait until it is stored (graceful stop, tests, benches)."""
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
            self._reap_snapshot_task()
        if self.start_snapshot():
            assert self._snapshot_task is not None
            await self._snapshot_task
            self._reap_snapshot_task()

    def snapshot_due(self) -> bool:
        s = self.settings
        by_count = s.snapshot_every_commands and (
            self.core.seq - self._snapshot_seq >= s.snapshot_every_commands
        )
        by_time = s.snapshot_every_s and self.core.seq != self._snapshot_seq and (
            time.monotonic() - self._snapshot_at >= s.snapshot_every_s
        )
        return bool(by_count or by_time)

    # --- state hash (ops /state) -------------------------------------------------------
    async def state(self) -> dict[str, Any]:
        """The state hash at a batch boundary: the main loop answers between batches."""
        if self._state_waiters is None:
            self._state_waiters = []
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._state_waiters.append(fut)
        return await fut

    def serve_state_requests(self) -> None:
        waiters = self._state_waiters
        if not waiters:
            return
        self._state_waiters = []
        with gc_paused():
            state_hash = self.core.state_hash()  # expensive on big books: on request only
        info = {"market": self.symbol, "seq": self.core.seq, "settledSeq": self.settled_seq,
                "stateHash": state_hash, "lastStreamId": self.last_stream_id}
        for fut in waiters:
            if not fut.done():
                fut.set_result(info)

    def fail_state_requests(self) -> None:
        for fut in self._state_waiters or []:
            if not fut.done():
                fut.set_exception(RuntimeError("engine stopped"))
        self._state_waiters = []

    # --- stream trimming ---------------------------------------------------------------
    async def acked_position(self, stream: str, group: str | None = None) -> str | None:
        """The id up to which every group on `stream` (or just `group`) has acknowledged:
        the oldest pending entry when some are pending, else the last delivered id. None
        when the group does not exist (then nothing may be trimmed)."""
        try:
            groups = await self.redis.xinfo_groups(stream)
        except Exception:
            return None
        names = [g["name"] for g in groups]
        if group is not None and group not in names:
            return None
        positions: list[str | None] = []
        for g in groups:
            if g.get("pending"):
                summary = await self.redis.xpending(stream, g["name"])
                positions.append(summary.get("min"))
            else:
                positions.append(g["last-delivered-id"])
        return min_stream_id(*positions)

    def _minid_with_margin(self, minid: str) -> str:
        ms = id_tuple(minid)[0]
        margin = self.settings.trim_margin_ms
        return minid if margin <= 0 else f"{max(0, ms - margin)}-0"

    async def trim_streams(self) -> dict[str, int]:
        """XTRIM MINID on both streams, never past what a reader still needs:
        MESSAGES:{M} up to min(stored snapshot's lastStreamId, every group's acknowledged
        position); events:{M} up to every group's acknowledged position, and only when the
        dbproc group exists. Both keep `trim_margin_ms` more of history."""
        removed = {"commands": 0, "events": 0}
        acked = await self.acked_position(self.stream, keys.ENGINE_GROUP)
        minid = min_stream_id(self._stored_snapshot_id, acked)
        if minid is not None:
            removed["commands"] = int(await self.redis.xtrim(
                self.stream, minid=self._minid_with_margin(minid), approximate=False))
        events = keys.events_stream(self.symbol)
        acked = await self.acked_position(events, keys.DBPROC_GROUP)
        if acked is not None:
            removed["events"] = int(await self.redis.xtrim(
                events, minid=self._minid_with_margin(acked), approximate=False))
        if removed["commands"] or removed["events"]:
            log.info("streams trimmed", extra={"market": self.symbol, **removed})
        return removed

    async def update_lag(self) -> None:
        """Entries not yet read (all ever added minus this engine's entries-read) and the
        age of the oldest of them."""
        info = await self.redis.xinfo_stream(self.stream)
        lag = max(0, int(info.get("entries-added") or 0) - self.entries_read)
        metrics.ENGINE_STREAM_LAG.labels(**self._labels).set(lag)
        age = 0.0
        if lag:
            nxt = await self.redis.xrange(self.stream, min=f"({self.last_stream_id}", count=1)
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
        except BaseException:
            # on an error (fenced, Redis gone) nothing more is written: an in-flight
            # snapshot is dropped (and refused by its script anyway once fenced)
            if self._snapshot_task is not None:
                self._snapshot_task.cancel()
            raise
        finally:
            lease.cancel()
            self.fail_state_requests()
        # graceful stop: the last batch is settled; snapshot and hand the market over
        stopping = time.monotonic()
        if self._group_at:
            await self.sync_group()
        if self.core.seq == self.settled_seq:
            await self.write_snapshot()
        else:  # stopped during the replay of already settled commands: nothing to save
            log.info("stopped during recovery; no snapshot", extra={"market": self.symbol})
        await self.release_lease()
        log.info("engine stopped", extra={
            "market": self.symbol, "seq": self.core.seq, "settled": self.settled_seq,
            "snapshot_ms": round((time.monotonic() - stopping) * 1000)})

    async def _run_owned(self, stop: asyncio.Event, lease: asyncio.Task[None]) -> None:
        await self.recover(stop)
        if stop.is_set():
            return
        await self.sequence_rules_if_needed()
        self.ready = True
        last_ticker = last_lag = time.monotonic()
        try:
            while not stop.is_set():
                if lease.done():  # the lease was lost (or Redis failed): stop owning the market
                    lease.result()
                    raise Fenced(f"lease for {self.symbol} lost")
                reply = await self.redis.xread(
                    {self.stream: self.last_stream_id},
                    count=self.settings.batch_size, block=self.settings.block_ms,
                )
                if reply:
                    await self.process(reply[0][1])
                now = time.monotonic()
                if now - last_ticker >= self.settings.ticker_interval_ms / 1000:
                    await self.publish_ticker(int(time.time() * 1000))
                    last_ticker = now
                if now - last_lag >= 1.0:
                    await self.sync_group()
                    await self.update_lag()
                    await self.update_redis_memory()
                    last_lag = now
                self.serve_state_requests()
                if self._snapshot_task is not None and self._snapshot_task.done():
                    self._reap_snapshot_task()  # raises Fenced if the write was refused
                if self.snapshot_due():
                    self.start_snapshot()
                trim_every = self.settings.trim_every_s
                if trim_every and now - self._last_trim >= trim_every:
                    self._last_trim = now
                    try:
                        await self.trim_streams()
                    except Exception as exc:  # trimming is housekeeping, never fatal
                        log.warning("stream trim failed", extra={"market": self.symbol,
                                                                  "error": repr(exc)})
        finally:
            self.ready = False
