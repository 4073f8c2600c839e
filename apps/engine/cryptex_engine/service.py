"""The engine service: one process per market, a thin shell around the matching core.

Loop: XREAD a batch from MESSAGES:{M} after the engine's own position (its last stream id)
-> core.apply each command -> step A in the market's slot (records the settled sequence,
appends the events:{M} batch, journals the batch's ledger parts, writes and publishes the
market data) -> one call per touched ledger bucket (balances, order records, private
updates), the replies and the next XREAD, pipelined -> housekeeping between batches
(docs/decisions/0013-redis-cluster-sharded-ledger.md).

Collaborators it owns: `Lease` (epoch and lease), `Snapshots` (capture, store, due),
`MarketData` (depth, trades, tickers, private updates), `Housekeeping` (position marker,
trimming, gauges), `EngineMetrics` (counted per batch).

Invariants:
- The command stream is the log. State = snapshot (or empty) + every entry after it, in
  stream order; the sequence is 1 + the number of commands before an entry.
- A batch is settled exactly once: step A refuses a sequence already recorded (after a
  crash the replayed commands up to `settled` are re-matched but not re-settled) and
  refuses an engine whose fencing epoch is stale or whose lease lapsed; bucket calls run
  only after step A accepted the batch, each applies once per (market, batch), and the
  journal (replayed on recovery, `reconcile.apply_journal`) finishes a batch a crash cut.
- Publishing happens after settling and only when it applied: market data inside step A,
  private updates inside the bucket calls, replies after every bucket call; a lost
  publish loses a notification, never money; a refused batch publishes nothing.
- Reading never changes what another engine will read: the engine reads by its own position
  (XREAD), never by consumer-group delivery (docs/decisions/0011).
- Rules are sequenced: the core starts from `MatchingEngine.empty` (bootstrap rules) or a
  snapshot's rules, and only configure commands change them (docs/decisions/0010).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from cryptex_common import keys, metrics, registry, resp_cluster, stream_ids
from cryptex_common.ledger import ENTRY_OUTBOX, ENTRY_USER, BucketRefused, Ledger, SettleResult
from cryptex_common.markets import MarketSpec
from cryptex_common.settle_calls import journal_entry_id
from cryptex_engine.decode import Decoded, read_entry
from cryptex_engine.domain.commands import CommandResult
from cryptex_engine.housekeeping import Housekeeping
from cryptex_engine.lease import Fenced, Lease
from cryptex_engine.market_data import MarketData
from cryptex_engine.observe import EngineMetrics, log_commands
from cryptex_engine.reconcile import apply_journal
from cryptex_engine.recovery import SnapshotUse, batches, empty_start, find_start
from cryptex_engine.settings import EngineSettings
from cryptex_engine.settle_steps import SettleSteps
from cryptex_engine.settlement import PendingSettle, prepare_settle
from cryptex_engine.snapshots import (
    Snapshots,
    gc_paused,
)
from cryptex_engine.translate import BatchOutput

log = logging.getLogger("cryptex.engine")


class EngineService:
    def __init__(self, settings: EngineSettings, redis: Redis, spec: MarketSpec) -> None:
        self.settings = settings
        self.redis = redis
        self.spec = spec
        self.symbol = spec.symbol
        self.stream = keys.commands_stream(self.symbol)
        self.ledger = Ledger(redis)
        start = empty_start(spec)
        self.core, self.translator = start.core, start.translator
        self.settled_seq = 0
        self.last_stream_id = "0-0"
        self.ready = False
        self.metrics = EngineMetrics(self.symbol, spec.quote_decimals)
        self.lease = Lease(redis, self.symbol, settings.lease_ttl_ms)
        self.market_data = MarketData(spec, settings)
        self.snapshots = Snapshots(self)
        self.housekeeping = Housekeeping(self)
        self._dead_lettered_upto = ""
        self._journal_ack = ""  # the last batch's journal entry, applied in every bucket
        self._state_waiters: list[asyncio.Future[dict[str, Any]]] = []
        # the hot loop's connection (command XREAD + pipelined settle): the lean hiredis
        # client when the URL allows (redis-py costs ~60 us of CPU a command); everything
        # else (lease, snapshots, housekeeping, recovery) stays on `redis`. Its timeout
        # outlasts a blocking read, like the redis-py socket timeout in main.
        self.fast = resp_cluster.fast_client(settings.redis_url, timeout_s=settings.block_ms / 1000 + 5,
                                             decode=True)
        self.steps = SettleSteps(redis, self.fast, self.ledger, settings)
        # on a cluster, bucket calls and the replies go to different primaries: the
        # replies wait for the bucket calls' answers (one more round trip)
        self._replies_after_buckets = isinstance(self.fast, resp_cluster.ClusterRespClient)
        metrics.REDIS_WAIT_SHORTFALL.labels("engine")  # a zero series before any shortfall

    # --- recovery --------------------------------------------------------------------
    async def sequence_rules_if_needed(self) -> None:
        """A market whose stream never carried its rules gets a configure with the
        registry's current rules appended now (docs/decisions/0010)."""
        if self.core.rules_seq:
            return
        if await registry.sequence_current_rules(self.redis, self.symbol):
            log.warning("market rules were never sequenced; queued a configure from the registry",
                        extra={"market": self.symbol, "seq": self.core.seq})

    async def recover(self, stop: asyncio.Event | None = None) -> None:
        """Snapshot (when it verifies) + replay of the stream after it, settling only what
        was never settled (recovery.py: the loop `replay` shares). A stop request ends the
        replay at a batch boundary (graceful stop stays bounded)."""
        hk = self.housekeeping
        started = time.perf_counter()
        start = await find_start(self.redis, self.spec, SnapshotUse.PREFER)
        self.core, self.translator, self.market_data.ticker = start.core, start.translator, start.ticker
        self.last_stream_id = start.last_stream_id
        if start.from_snapshot:
            self.market_data.invalidate()
            self.snapshots.loaded(self.core.seq, self.last_stream_id)
            log.info("snapshot loaded", extra={
                "market": self.symbol, "seq": self.core.seq, "lastStreamId": self.last_stream_id,
                "load_ms": round((time.perf_counter() - started) * 1000)})
        self.settled_seq = int(await self.redis.get(keys.settled_seq_key(self.symbol)) or 0)
        repaired = await apply_journal(self.redis, self.ledger, self.symbol)
        if repaired:
            log.warning("applied journaled batches a crash had cut",
                        extra={"market": self.symbol, "batches": repaired})
        self._journal_ack = ""
        async for entries in batches(self.redis, self.stream, self.last_stream_id, self.settings.batch_size, stop):
            await self.process(entries)
        await hk.adopt_position()

    # --- one batch -------------------------------------------------------------------
    async def process(self, entries: Sequence[tuple[str, dict[str, str]]]) -> None:
        """Match a batch, then settle and publish what is not settled yet (one script
        call). Used in replay; the live loop queues the settle with its next read."""
        pending = await self.match(entries)
        if pending is not None:
            await self.settle(pending)

    async def match(self, entries: Sequence[tuple[str, dict[str, str]]]) -> PendingSettle | None:
        """Apply a batch to the core; the settle call of its unsettled part, if any.
        Commands settled before a restart are re-matched only (their order facts kept in
        step), never settled or published again."""
        t0 = time.perf_counter()
        out = BatchOutput()
        decoded_list: list[Decoded] = []
        results: list[CommandResult] = []
        first_seq = 0
        acks: list[tuple[str, str]] = []  # (user, outbox entry) of each order settled now
        core, translator, settled, md = self.core, self.translator, self.settled_seq, self.market_data
        for stream_id, fields in entries:
            decoded, error = read_entry(stream_id, fields, self.spec)
            if error is not None:
                await self.dead_letter(stream_id, error, rejected=decoded is not None)
            if decoded is None:
                continue
            result = core.apply(decoded.command, decoded.ts_ms)
            decoded_list.append(decoded)
            results.append(result)
            if result.fills:
                md.add_trades(decoded.ts_ms, result)
            if result.seq > settled:
                first_seq = first_seq or result.seq
                translator.add(decoded, result, out)
                outbox_id = fields.get(ENTRY_OUTBOX)
                if outbox_id and ENTRY_USER in fields:
                    acks.append((fields[ENTRY_USER], outbox_id))
            else:
                translator.add(decoded, result, None)
        self.last_stream_id = entries[-1][0]
        self.housekeeping.entries_read += len(entries)
        self.metrics.match_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_size.observe(len(entries))
        self.metrics.batch(decoded_list, results, core)
        if results and results[0].seq <= settled:
            md.invalidate()
        if not first_seq:
            return None
        return prepare_settle(self, out, decoded_list, results, first_seq, core.seq, self._journal_ack, acks)

    async def dead_letter(self, stream_id: str, error: str, rejected: bool) -> None:
        """Copy an undecodable entry's id and error to the dead-letter stream under the same
        stream id, so a replay of it adds nothing (XADD refuses an id not above the last)."""
        if self._dead_lettered_upto and stream_ids.parse(stream_id) <= stream_ids.parse(self._dead_lettered_upto):
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

    async def settle(self, pending: PendingSettle) -> None:
        """Run a pending batch's settle calls on their own and act on the answers."""
        if not await self._recorded(pending, await self.steps.run_market(pending.plan)):
            return
        replies = [("PUBLISH", channel, message) for channel, message in pending.replies]
        if self._replies_after_buckets:
            await self._applied(pending, await self.steps.run_buckets(pending.plan, []))
            await self.steps.pipeline(replies)
        else:
            answers = await self.steps.run_buckets(pending.plan, replies)
            await self._applied(pending, answers[:len(pending.plan.buckets)])

    def _xread_args(self) -> tuple[Any, ...]:
        return ("XREAD", "COUNT", self.settings.batch_size, "BLOCK", self.settings.block_ms,
                "STREAMS", self.stream, self.last_stream_id)

    async def _read(self) -> list[tuple[str, dict[str, str]]]:
        """The next batch of commands after the engine's position (blocks up to block_ms)."""
        if self.fast is None:
            reply = await self.redis.xread({self.stream: self.last_stream_id},
                                           count=self.settings.batch_size, block=self.settings.block_ms)
            return reply[0][1] if reply else []
        return _entries(await self.fast.call(*self._xread_args()))

    async def _settle_and_read(self, pending: PendingSettle) -> list[tuple[str, dict[str, str]]]:
        """Two round trips: step A; then the bucket calls, the replies and the next XREAD,
        pipelined (on one Redis, in that order; on a cluster the replies and the read
        follow the buckets' answers). The read is sent last, so Redis applies (and
        publishes) the batch before it blocks for new entries."""
        if not await self._recorded(pending, await self.steps.run_market(pending.plan)):
            return await self._read()
        replies = [("PUBLISH", channel, message) for channel, message in pending.replies]
        if self._replies_after_buckets:
            await self._applied(pending, await self.steps.run_buckets(pending.plan, []))
            tail = await self.steps.pipeline([*replies, self._xread_args()])
        else:
            answers = await self.steps.run_buckets(pending.plan, [*replies, self._xread_args()])
            tail = answers[len(pending.plan.buckets):]
            await self._applied(pending, answers[:len(pending.plan.buckets)])
        read_reply = tail[-1]
        if isinstance(read_reply, Exception):
            raise read_reply
        if self.fast is None:
            return read_reply[0][1] if read_reply else []
        return _entries(read_reply)

    async def _recorded(self, pending: PendingSettle, res: SettleResult) -> bool:
        """Act on step A's answer; True when the batch's bucket calls are to run now.
        Fenced stops the engine; a gap is a bug (stop before anything else is written);
        "duplicate" (recorded before, its answer lost) applies the journal instead, whose
        entries hold the batch as it was recorded."""
        if res.status == "fenced":
            self.metrics.fenced.inc()
            raise Fenced(f"settle refused: market {self.symbol} now has epoch {res.detail}")
        if res.status == "duplicate":
            log.warning("batch already settled", extra={"market": self.symbol, "seq": pending.last_seq})
            await apply_journal(self.redis, self.ledger, self.symbol)
            self.settled_seq, self._journal_ack = pending.last_seq, ""
            return False
        if res.status != "ok":
            raise RuntimeError(f"settle failed: {res.status} {res.detail}")
        return True

    async def _applied(self, pending: PendingSettle, answers: list[Any]) -> None:
        """Act on the bucket calls' answers: any failure stops the engine (the journal
        keeps the batch; recovery applies it); then the private updates of users the
        scripts found subscribed who got none in the calls."""
        subscribed: set[str] = set()
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
            if answer.status not in ("ok", "applied"):
                raise BucketRefused(answer.status, answer.detail)
            subscribed |= answer.subscribed
        self.settled_seq = pending.last_seq
        self._journal_ack = journal_entry_id(pending.last_seq) if pending.plan.buckets else ""
        self.metrics.settle_seconds.observe(time.perf_counter() - pending.started)
        log_commands(pending.decoded, pending.results, pending.first_seq)
        if pending.notify:
            md = self.market_data
            late = md.learn_subscribers(pending.notify, frozenset(subscribed))
            if late:
                await md.publish_late(self.redis, md.user_messages(
                    pending.out, pending.results, pending.first_seq, late))

    # --- state hash (ops /state) -------------------------------------------------------
    async def state(self) -> dict[str, Any]:
        """The state hash at a batch boundary: the main loop answers between batches."""
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
        for fut in self._state_waiters:
            if not fut.done():
                fut.set_exception(RuntimeError("engine stopped"))
        self._state_waiters = []

    # --- main loop -------------------------------------------------------------------
    async def write_snapshot(self) -> None:
        """Snapshot now and wait until it is stored (graceful stop, tests, benches)."""
        await self.snapshots.write()

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.lease.acquire(stop):
            return
        lease = asyncio.create_task(self.lease.keep())
        try:
            await self._run_owned(stop, lease)
        except BaseException:
            # on an error (fenced, Redis gone) nothing more is written: an in-flight
            # snapshot is dropped (and refused by its script anyway once fenced)
            self.snapshots.cancel()
            raise
        finally:
            lease.cancel()
            self.fail_state_requests()
            if self.fast is not None:
                await self.fast.aclose()
        # graceful stop: the last batch is settled; snapshot and hand the market over
        stopping = time.monotonic()
        if self.housekeeping.group_at:
            await self.housekeeping.sync_group()
        if self.core.seq == self.settled_seq:
            await self.snapshots.write()
        else:  # stopped during the replay of already settled commands: nothing to save
            log.info("stopped during recovery; no snapshot", extra={"market": self.symbol})
        await self.lease.release()
        log.info("engine stopped", extra={
            "market": self.symbol, "seq": self.core.seq, "settled": self.settled_seq,
            "snapshot_ms": round((time.monotonic() - stopping) * 1000)})

    async def _run_owned(self, stop: asyncio.Event, lease: asyncio.Task[None]) -> None:
        await self.recover(stop)
        if stop.is_set():
            return
        await self.sequence_rules_if_needed()
        self.ready = True
        last_ticker = time.monotonic()
        ticker_every = self.settings.ticker_interval_ms / 1000
        pending: PendingSettle | None = None
        try:
            while not stop.is_set():
                if lease.done():  # the lease was lost (or Redis failed): stop owning the market
                    lease.result()
                    raise Fenced(f"lease for {self.symbol} lost")
                if pending is None:
                    entries = await self._read()
                else:
                    entries, pending = await self._settle_and_read(pending), None
                if entries:
                    pending = await self.match(entries)
                now = time.monotonic()
                ticker_due = now - last_ticker >= ticker_every
                if pending is not None and (ticker_due or self._wants_settled_state(now)):
                    await self.settle(pending)  # so what follows sees a settled state
                    pending = None
                if ticker_due:
                    await self.market_data.publish_ticker(self.redis, self.core, int(time.time() * 1000))
                    last_ticker = now
                if pending is None:
                    await self.housekeeping.tick(now)
                    self.serve_state_requests()
                    self.snapshots.poll()  # raises Fenced if a write was refused
            if pending is not None:  # graceful stop: the last batch is settled first
                await self.settle(pending)
        finally:
            self.ready = False

    def _wants_settled_state(self, now: float) -> bool:
        """Whether something due between batches needs the pending settle applied first."""
        return bool(self._state_waiters) or self.snapshots.due() or self.housekeeping.due(now)


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of a one-stream XREAD reply as the lean client returns it (RESP2, str):
    [[stream, [[id, [field, value, ...]], ...]]] or None."""
    if not reply:
        return []
    return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in reply[0][1]]
