"""The order path's lean client (`resp.RespClient`) on a Redis Cluster (decision 0013).

`ClusterRespClient` has RespClient's interface (`call`, `pipeline`, `evalsha`, `aclose`)
and keeps one RespClient per node it talks to, plus the cluster's slot table (16384 slots,
from `CLUSTER SLOTS` of any reachable node). Each command goes to the primary owning the
hash slot of its key (`command_key`): a script call's first key, XREAD's first stream,
otherwise the command's first argument; `route_key=` says where a keyless command (WAIT)
must go, and a command with neither goes to any primary (PUBLISH is cluster-wide).

Invariants:
- `pipeline` answers in the order asked; the commands of one node are sent in order, as
  one RespClient pipeline, and the nodes' pipelines run concurrently. Error replies are
  answered in place as ResponseError, as RespClient does.
- A command is retried only when Redis said it did not run it: MOVED (the table is
  refreshed and the slot pointed at the named node), ASK (ASKING then the command, on the
  named node; the table stays: the slot is still the source's while it migrates), TRYAGAIN
  and CLUSTERDOWN (after 50 ms and a refresh), at most 5 times and within `timeout_s`.
- A connection error or a timeout is never retried (the command may have run): the node's
  client is dropped, the table is refreshed from another node (after a failover it names
  the promoted replica), and the error is raised. The next call goes by the new table.
Only plain redis:// nodes without authentication are supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cryptex_common.redis_client import cluster_nodes
from cryptex_common.resp import RespClient, as_text, run_script, supports

SLOTS = 16384
MAX_REDIRECTS = 5
RETRY_PAUSE_S = 0.05
_SCRIPT_CALLS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
_STREAM_READS = frozenset({"XREAD", "XREADGROUP"})
_ANY_NODE = frozenset({"PUBLISH", "PING", "ECHO", "INFO", "CLUSTER", "SCRIPT", "FUNCTION", "TIME",
                       "WAIT", "WAITAOF", "DBSIZE", "COMMAND", "HELLO", "CLIENT", "CONFIG"})

Addr: TypeAlias = tuple[str, int]


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), Redis Cluster's key hash."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _as_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    return str(key).encode()  # ints and floats are sent as their decimal text


@functools.lru_cache(maxsize=65536)
def _slot_of(hashed: bytes) -> int:
    return crc16(hashed) % SLOTS


def key_slot(key: bytes | str | int | float) -> int:
    """The hash slot of `key`, as `CLUSTER KEYSLOT`: only the part between the first `{`
    and the first `}` after it is hashed when that part is not empty."""
    raw = _as_bytes(key)
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return _slot_of(raw)


def _name(args: Sequence[Any]) -> str:
    return as_text(_as_bytes(args[0])).upper() if args else ""


def command_key(args: Sequence[Any]) -> Any | None:
    """The key `args` is routed by, or None when any primary may run it."""
    name = _name(args)
    if name in _SCRIPT_CALLS:
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    if name in _STREAM_READS:
        words = [as_text(_as_bytes(a)).upper() if isinstance(a, (bytes, str)) else "" for a in args]
        if "STREAMS" in words:
            at = words.index("STREAMS") + 1
            return args[at] if at < len(args) else None
        return None
    if name in _ANY_NODE or len(args) < 2:
        return None
    return args[1]


def _redirect(exc: BaseException) -> tuple[str, int, Addr] | None:
    """(MOVED|ASK, slot, node) of a redirection error; None for any other reply."""
    if not isinstance(exc, ResponseError):
        return None
    parts = str(exc).split()
    if len(parts) == 3 and parts[0] in ("MOVED", "ASK"):
        host, _, port = parts[2].rpartition(":")
        return parts[0], int(parts[1]), (host, int(port))
    return None


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith(("TRYAGAIN", "CLUSTERDOWN"))


def _should_retry(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and (_redirect(reply) is not None or _busy(reply))


def _slot_table(reply: Any, queried: Addr) -> tuple[list[Addr | None], list[Addr]]:
    """The slot -> primary table and every node named (primaries, then replicas) of a
    `CLUSTER SLOTS` reply from `queried` (an empty host there means the queried host)."""
    table: list[Addr | None] = [None] * SLOTS
    nodes: list[Addr] = []
    for entry in reply:
        start, end, *owners = entry
        addrs = []
        for owner in owners:
            host = as_text(owner[0]) or queried[0]
            if host != "?":
                addrs.append((host, int(owner[1])))
        if not addrs:
            continue
        for slot in range(int(start), int(end) + 1):
            table[slot] = addrs[0]
        nodes.extend(a for a in addrs if a not in nodes)
    return table, nodes


class ClusterRespClient:
    """RespClient's interface over a Redis Cluster named by a `redis+cluster://` URL."""

    def __init__(self, url: str, timeout_s: float = 5.0, decode: bool = False) -> None:
        seeds = cluster_nodes(url)
        if seeds is None:
            raise ValueError(f"not a redis+cluster:// URL: {url!r}")
        self.timeout_s = timeout_s
        self._decode = decode
        self._known: list[Addr] = list(seeds)  # seeds and every node CLUSTER SLOTS named
        self._clients: dict[Addr, RespClient] = {}
        self._slots: list[Addr | None] | None = None
        self._refreshing: asyncio.Lock | None = None
        self._generation = 0  # counts refreshes: concurrent askers share one

    def _client(self, addr: Addr) -> RespClient:
        client = self._clients.get(addr)
        if client is None:
            host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            client = RespClient(f"redis://{host}:{addr[1]}/0", self.timeout_s, self._decode)
            self._clients[addr] = client
        return client

    async def _drop(self, addr: Addr, client: RespClient) -> None:
        if self._clients.get(addr) is client:
            del self._clients[addr]
        await client.aclose()

    async def refresh(self, avoid: frozenset[Addr] = frozenset()) -> None:
        """Reload the slot table from the first node that answers, trying nodes in `avoid`
        (just failed) last. Raises the last error when no node answers."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        generation = self._generation
        async with self._refreshing:
            if self._generation != generation:
                return  # someone refreshed while this one waited
            error: Exception = RedisConnectionError("no Redis Cluster node known")
            for addr in sorted(self._known, key=lambda a: a in avoid):
                client = self._client(addr)
                try:
                    reply = await client.call("CLUSTER", "SLOTS")
                except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                    error = exc
                    if not isinstance(exc, ResponseError):
                        await self._drop(addr, client)
                    continue
                table, nodes = _slot_table(reply, addr)
                if not nodes:
                    continue
                self._slots = table
                self._known = nodes + [a for a in self._known if a not in nodes]
                self._generation += 1
                return
            raise error

    async def _node_for(self, key: Any | None) -> Addr:
        if self._slots is None:
            await self.refresh()
        assert self._slots is not None
        slot = 0 if key is None else key_slot(key)
        addr = self._slots[slot]
        if addr is None:
            raise ResponseError(f"CLUSTERDOWN Hash slot {slot} not served")
        return addr

    async def _send(self, addr: Addr, items: list[tuple[int, tuple[Any, ...], bool]]) -> list[Any]:
        """One node's commands as one pipeline (an asked command preceded by ASKING);
        their replies, in `items`' order."""
        commands: list[tuple[Any, ...]] = []
        for _, command, asking in items:
            if asking:
                commands.append(("ASKING",))
            commands.append(command)
        client = self._client(addr)
        try:
            replies = await client.pipeline(*commands)
        except (RedisConnectionError, RedisTimeoutError):
            await self._drop(addr, client)
            raise
        out, at = [], 0
        for _, _, asking in items:
            at += 1 if asking else 0
            out.append(replies[at])
            at += 1
        return out

    async def _round(self, commands: Sequence[tuple[Any, ...]], keys: list[Any | None], pending: list[int],
                     asked: dict[int, Addr], results: list[Any]) -> None:
        """Send the `pending` commands, each to its node, the nodes concurrently; store the
        replies in `results`. A node's connection error or timeout is raised (after a
        refresh), the other nodes' replies being lost with it."""
        groups: dict[Addr, list[tuple[int, tuple[Any, ...], bool]]] = {}
        for i in pending:
            addr = asked[i] if i in asked else await self._node_for(keys[i])
            groups.setdefault(addr, []).append((i, commands[i], i in asked))
        order = list(groups)
        if len(order) == 1:
            outcomes: list[Any] = [await self._gathered(order[0], groups[order[0]])]
        else:
            outcomes = await asyncio.gather(*(self._gathered(a, groups[a]) for a in order))
        failed = [(a, o) for a, o in zip(order, outcomes, strict=True) if isinstance(o, BaseException)]
        if failed:
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, ResponseError):
                await self.refresh(avoid=frozenset(a for a, _ in failed))
            raise failed[0][1]
        for addr, replies in zip(order, outcomes, strict=True):
            for (i, _, _), reply in zip(groups[addr], replies, strict=True):
                results[i] = reply

    async def _gathered(self, addr: Addr, items: list[tuple[int, tuple[Any, ...], bool]]) -> Any:
        try:
            return await self._send(addr, items)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            return exc

    async def _follow(self, retry: list[int], results: list[Any]) -> dict[int, Addr]:
        """Act on the redirections in `results[retry]`: the ASKed commands' nodes."""
        asked: dict[int, Addr] = {}
        moved: dict[int, Addr] = {}
        busy = False
        for i in retry:
            redirect = _redirect(results[i])
            if redirect is None:
                busy = True
            elif redirect[0] == "ASK":
                asked[i] = redirect[2]
            else:
                moved[redirect[1]] = redirect[2]
        if busy:
            await asyncio.sleep(RETRY_PAUSE_S)
        if busy or moved:
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, ResponseError):
                await self.refresh()
        if moved and self._slots is not None:
            for slot, addr in moved.items():  # the owner's word wins over a stale table
                self._slots[slot] = addr
                if addr not in self._known:
                    self._known.append(addr)
        return asked

    async def pipeline(self, *commands: tuple[Any, ...],
                       route_keys: Sequence[Any | None] | None = None) -> list[Any]:
        """RespClient.pipeline across the cluster: each command to the node of its key
        (`route_keys[i]` when given and not None, else `command_key`); replies in the
        order asked, Redis errors in place. Connection errors and timeouts raise."""
        keys = [route_keys[i] if route_keys is not None and route_keys[i] is not None else command_key(c)
                for i, c in enumerate(commands)]
        results: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        asked: dict[int, Addr] = {}
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(MAX_REDIRECTS + 1):
            await self._round(commands, keys, pending, asked, results)
            pending = [i for i in pending if _should_retry(results[i])]
            if not pending or attempt == MAX_REDIRECTS or time.monotonic() >= deadline:
                break
            asked = await self._follow(pending, results)
        return results

    async def call(self, *args: Any, route_key: Any | None = None) -> Any:
        """One command to the node of `route_key` (default: `command_key(args)`); a Redis
        error reply raises ResponseError, as RespClient.call."""
        reply = (await self.pipeline(args, route_keys=[route_key]))[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def evalsha(self, sha: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on the node of keys[0] (any node without keys); EVAL on NOSCRIPT."""
        return await run_script(self.call, sha, source, keys, args)

    async def wait_replicas(self, route_key: Any, numreplicas: int, timeout_ms: int) -> int:
        """WAIT on the node owning `route_key`: how many of its replicas acknowledged every
        write this client sent that node (one connection per node, so all of them)."""
        return int(await self.call("WAIT", numreplicas, timeout_ms, route_key=route_key))

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


OrderClient: TypeAlias = RespClient | ClusterRespClient


async def wait_replicas(client: OrderClient, route_key: Any, numreplicas: int, timeout_ms: int) -> int:
    """WAIT for `numreplicas` replicas to acknowledge this client's writes to the node of
    `route_key` (a single Redis: its one connection). Answers how many did. The call
    holds the client's (pipelined) connection to that node for up to `timeout_ms`."""
    if isinstance(client, ClusterRespClient):
        return await client.wait_replicas(route_key, numreplicas, timeout_ms)
    return int(await client.call("WAIT", numreplicas, timeout_ms))


def order_client(url: str, timeout_s: float = 5.0, decode: bool = False) -> OrderClient:
    """The order path's client: ClusterRespClient for a redis+cluster:// URL, else RespClient."""
    if cluster_nodes(url) is not None:
        return ClusterRespClient(url, timeout_s, decode)
    return RespClient(url, timeout_s, decode)


def fast_client(url: str, timeout_s: float = 5.0, decode: bool = False) -> OrderClient | None:
    """`order_client` for the URLs it serves (plain TCP, unix socket, redis+cluster://);
    None for any other (TLS): the caller then uses redis-py."""
    if supports(url) or cluster_nodes(url) is not None:
        return order_client(url, timeout_s, decode)
    return None
