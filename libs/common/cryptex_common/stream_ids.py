"""Redis stream entry ids (`<ms>-<n>`), parsed, compared and formatted here only.

An id orders as the pair (ms, n); an id without `-n` (as XADD's `<ms>` or XRANGE's bounds
accept) means n = 0. `ms` is the Redis server clock when the entry was added.
"""

from __future__ import annotations

StreamId = tuple[int, int]
ZERO_ID: StreamId = (0, 0)


def parse(raw: bytes | str) -> StreamId:
    """`b"1700000000000-3"` -> (1700000000000, 3)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, n = text.partition("-")
    return int(ms), int(n or 0)


def text(sid: StreamId) -> str:
    """(1700000000000, 3) -> `1700000000000-3`."""
    return f"{sid[0]}-{sid[1]}"


def ts_ms(raw: str) -> int:
    """When the entry was added: the id's milliseconds."""
    return int(raw.split("-", 1)[0])


def min_id(*ids: str | None) -> str | None:
    """The smallest of the given ids; None if any is None (unknown = keep all)."""
    if not ids or any(i is None for i in ids):
        return None
    return min((i for i in ids if i is not None), key=parse)
