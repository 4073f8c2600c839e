"""Snapshots of one market's state: the stored format, and the engine's snapshotter.

Format (v2): `<header JSON>\n<state JSON>`; the header holds version, seq, codec, length
and the sha256 of the state bytes exactly as stored (docs/decisions/0008).

Invariants:
- Only a fully settled state is captured (core seq == settled seq): a snapshot ahead of
  the ledger would make a restart skip commands whose funds were never moved.
- The capture is synchronous, between two batches, and shares no mutable object with the
  live state; serialising and hashing run in a worker thread; the Redis write is fenced
  (snapshot_set.lua: same epoch + lease check as settle), so a fenced engine writes nothing.
- At most one snapshot is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from cryptex_common import keys
from cryptex_common.ledger import lua_source
from cryptex_engine.lease import Fenced

if TYPE_CHECKING:
    from cryptex_engine.service import EngineService

log = logging.getLogger("cryptex.engine")

SNAPSHOT_VERSION = 2
# What load_snapshot still reads: v1 = one JSON document {"version","seq","checksum","state"}.
SNAPSHOT_VERSIONS_READ = (1, 2)


class SnapshotError(ValueError):
    """A snapshot that must not be trusted (unknown version, bad checksum, truncated)."""


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


class Snapshots:
    """The snapshotter an EngineService owns: when one is due, capture, store, reap."""

    def __init__(self, owner: EngineService) -> None:
        self.owner = owner
        self.seq = 0  # the seq of the last snapshot captured (or loaded)
        self.at = time.monotonic()
        self.stored_id: str | None = None  # lastStreamId of the snapshot in Redis
        self.last_pause_s = 0.0  # how long the last capture held the matching loop
        self._task: asyncio.Task[None] | None = None
        self._script: Any = None

    def loaded(self, seq: int, last_id: str) -> None:
        self.seq, self.stored_id = seq, last_id

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def capture(self) -> tuple[int, str, dict[str, Any]] | None:
        """A consistent copy of the whole market state, taken between batches (synchronous,
        so nothing changes meanwhile). The copy shares no mutable object with the live
        state, so it can be serialised elsewhere while matching goes on. Only a fully
        settled state is captured: a snapshot ahead of the ledger would make a restart skip
        commands whose funds were never moved."""
        o = self.owner
        if o.core.seq != o.settled_seq:
            log.error("snapshot skipped: state not settled",
                      extra={"market": o.symbol, "seq": o.core.seq, "settled": o.settled_seq})
            return None
        state = {
            "market": o.symbol,
            "lastStreamId": o.last_stream_id,
            "core": o.core.snapshot(),
            "meta": o.translator.snapshot(),
            "ticker": o.market_data.ticker.snapshot(),
        }
        return o.core.seq, o.last_stream_id, state

    async def _store(self, seq: int, last_id: str, state: dict[str, Any]) -> None:
        """Serialise + checksum in a worker thread, then one fenced SET (snapshot_set.lua:
        only while this engine's epoch and lease hold, so a fenced engine writes nothing)."""
        started = time.perf_counter()
        raw = await asyncio.to_thread(encode_snapshot, state, seq)
        del state
        o = self.owner
        if self._script is None:
            self._script = o.redis.register_script(lua_source("snapshot_set.lua"))
        ok = await self._script(
            keys=[keys.engine_epoch_key(o.symbol), keys.engine_lease_key(o.symbol),
                  keys.snapshot_key(o.symbol)],
            args=[str(o.lease.epoch), raw],
        )
        if not int(ok):
            o.metrics.fenced.inc()
            raise Fenced(f"snapshot refused: market {o.symbol} has a newer epoch")
        self.stored_id = last_id
        o.metrics.snapshot_age.set(0)
        log.info("snapshot written", extra={
            "market": o.symbol, "seq": seq, "bytes": len(raw),
            "pause_ms": round(self.last_pause_s * 1000, 1),
            "write_ms": round((time.perf_counter() - started) * 1000, 1)})

    def start(self) -> bool:
        """Capture now (the only part that holds up matching) and store in the background.
        At most one snapshot is in flight; False if none was started."""
        if self._task is not None and not self._task.done():
            return False
        self.reap()
        t0 = time.perf_counter()
        with gc_paused():
            captured = self.capture()
        self.last_pause_s = time.perf_counter() - t0
        if captured is None:
            return False
        self.seq = captured[0]
        self.at = time.monotonic()
        self._task = asyncio.create_task(self._store(*captured))
        return True

    def reap(self) -> None:
        """Surface a finished background snapshot's failure: fenced stops the engine; any
        other failure (Redis away) is logged and retried at the next due time."""
        task, self._task = self._task, None
        if task is None or not task.done() or task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, Fenced):
            raise exc
        if exc is not None:
            log.error("snapshot write failed", extra={"market": self.owner.symbol, "error": repr(exc)})

    async def write(self) -> None:
        """Snapshot now and wait until it is stored (graceful stop, tests, benches)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self.reap()
        if self.start():
            assert self._task is not None
            await self._task
            self.reap()

    def due(self) -> bool:
        s, seq = self.owner.settings, self.owner.core.seq
        by_count = s.snapshot_every_commands and seq - self.seq >= s.snapshot_every_commands
        by_time = s.snapshot_every_s and seq != self.seq and (
            time.monotonic() - self.at >= s.snapshot_every_s
        )
        return bool(by_count or by_time)

    def poll(self) -> None:
        """Between batches: surface a finished write (Fenced if refused), start one if due."""
        if self._task is not None and self._task.done():
            self.reap()
        if self.due():
            self.start()
