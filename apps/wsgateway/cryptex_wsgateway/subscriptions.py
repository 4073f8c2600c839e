"""Who follows which topic. Pure, no I/O; the gateway keeps one per process.

A topic is a public stream name (`depth@SOL/USDC`) or a private stream bound to its owner
(`user.orders#17`), so a private topic is only ever fanned out to its owner's sockets.

Invariants:
- `subscribers(t)` contains `c` exactly when `t in topics_of(c)` (both maps kept in step);
- a connection never holds more than its limit of topics (`TooManyStreams` otherwise,
  with nothing changed);
- a topic with no subscriber is removed from the map, so `topics()` lists only live ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class TooManyStreams(ValueError):
    pass


def private_topic(stream_name: str, user_id: str) -> str:
    return f"{stream_name}#{user_id}"


def stream_of_topic(topic: str) -> str:
    """The stream name a client sees for a topic (the owner suffix removed)."""
    return topic.partition("#")[0]


class Subscriptions:
    def __init__(self) -> None:
        self._by_topic: dict[str, set[Hashable]] = {}
        self._by_conn: dict[Hashable, set[str]] = {}

    def add(self, conn: Hashable, topics: Iterable[str], limit: int) -> list[str]:
        """Subscribe `conn` to every topic, all or none; returns the newly added ones."""
        held = self._by_conn.get(conn, set())
        new = [t for t in dict.fromkeys(topics) if t not in held]
        if len(held) + len(new) > limit:
            raise TooManyStreams(
                f"a socket may hold at most {limit} streams ({len(held)} held, {len(new)} asked)"
            )
        if new:
            self._by_conn.setdefault(conn, set()).update(new)
            for t in new:
                self._by_topic.setdefault(t, set()).add(conn)
        return new

    def remove(self, conn: Hashable, topics: Iterable[str]) -> list[str]:
        """Unsubscribe; returns the topics that were held."""
        held = self._by_conn.get(conn)
        if not held:
            return []
        removed = [t for t in dict.fromkeys(topics) if t in held]
        for t in removed:
            held.discard(t)
            subs = self._by_topic[t]
            subs.discard(conn)
            if not subs:
                del self._by_topic[t]
        if not held:
            del self._by_conn[conn]
        return removed

    def drop(self, conn: Hashable) -> list[str]:
        """Forget a closed connection; returns the topics it held."""
        return self.remove(conn, list(self._by_conn.get(conn, ())))

    def subscribers(self, topic: str) -> set[Hashable]:
        return self._by_topic.get(topic, set())

    def topics_of(self, conn: Hashable) -> set[str]:
        return self._by_conn.get(conn, set())

    def topics(self) -> list[str]:
        return list(self._by_topic)

    def count(self, conn: Hashable) -> int:
        return len(self._by_conn.get(conn, ()))
