"""Binance user data (`executionReport`, `outboundAccountPosition`) for the sockets that
follow a user: `/binance/ws/<listenKey>` and the WebSocket API's
`userDataStream.subscribe.signature`.

It follows the user the way a native private SUBSCRIBE does: taps on the user's private
topics (`user.orders#<id>`, `user.fills#<id>`, `user.balances#<id>`), and
`PrivateFeed.follow`, which registers the user in the user's bucket `keys.subscribers_key` (engines
publish `user@<id>` only for registered users) and waits for Redis's subscription
confirmation.

Invariants:
- `attach` returns only once `PrivateFeed.follow` has returned, so every event settled after
  it reaches the socket; on failure nothing stays attached and the error propagates;
- a user's taps exist exactly while a socket is attached to the user or an attach is under
  way; the last detach removes them and lets `PrivateFeed` drop `user@<id>` when no native
  socket follows the user either;
- a socket gets only its own user's events; each event is encoded once per delivery form
  (bare, or wrapped for a combined stream or a WebSocket API subscription);
- the balances of one refresh (one native message per asset, published together) become
  one `outboundAccountPosition`; a deposit or withdrawal becomes one `balanceUpdate`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from cryptex_common.money import format_units
from cryptex_wsgateway.binance.orders import ExecutionReports, account_position
from cryptex_wsgateway.binance.payloads import Zeros
from cryptex_wsgateway.fanout import Connection
from cryptex_wsgateway.private import TRANSFERS
from cryptex_wsgateway.protocol import encode_text_frame
from cryptex_wsgateway.publisher import now_ms
from cryptex_wsgateway.subscriptions import private_topic

if TYPE_CHECKING:
    from cryptex_wsgateway.gateway import Gateway

# A socket's delivery: (prefix, suffix) around each encoded event, or None for bare events.
Wrapper = tuple[bytes, bytes] | None


@dataclass
class _UserFeed:
    reports: ExecutionReports
    conns: dict[Connection, Wrapper] = field(default_factory=dict)
    attaching: int = 0
    balances: list[dict[str, Any]] = field(default_factory=list)


class UserData:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.feeds: dict[str, _UserFeed] = {}
        # sockets attached before their handshake is complete: frames wait here, in order
        self.held: dict[Connection, list[bytes]] = {}

    def hold(self, conn: Connection) -> None:
        self.held[conn] = []

    def release(self, conn: Connection) -> None:
        """The socket is open: send what waited for it, then send directly."""
        for frame in self.held.pop(conn, ()):
            self.gw.hub.send(conn, frame)

    async def attach(self, conn: Connection, user_id: str, wrapper: Wrapper) -> None:
        """Follow `user_id` for `conn`; raises RedisError/OSError/TimeoutError (nothing
        attached) when the user's events cannot be ensured."""
        feed = self.feeds.get(user_id)
        if feed is None:
            feed = self.feeds[user_id] = _UserFeed(ExecutionReports(self._zeros, now_ms()))
            self._tap(user_id, feed)
        feed.attaching += 1
        try:
            await self.gw.private.follow(user_id)
        except BaseException:
            feed.attaching -= 1
            await self._release(user_id)
            raise
        feed.attaching -= 1
        feed.conns[conn] = wrapper

    async def detach(self, conn: Connection, user_id: str) -> None:
        self.held.pop(conn, None)
        feed = self.feeds.get(user_id)
        if feed is not None:
            feed.conns.pop(conn, None)
        await self._release(user_id)

    async def _release(self, user_id: str) -> None:
        feed = self.feeds.get(user_id)
        if feed is None or feed.conns or feed.attaching:
            return
        del self.feeds[user_id]
        taps = self.gw.publisher.taps
        for stream in ("user.orders", "user.fills", "user.balances", TRANSFERS):
            taps.pop(private_topic(stream, user_id), None)
        with contextlib.suppress(RedisError, OSError):
            await self.gw.private.unfollow_if_unused(user_id)

    def _tap(self, user_id: str, feed: _UserFeed) -> None:
        taps = self.gw.publisher.taps
        taps[private_topic("user.orders", user_id)] = \
            lambda o: self._send(feed, feed.reports.on_order(o, now_ms()))
        taps[private_topic("user.fills", user_id)] = \
            lambda f: self._send(feed, feed.reports.on_fill(f, now_ms()))
        taps[private_topic("user.balances", user_id)] = lambda b: self._on_balance(feed, b)
        taps[private_topic(TRANSFERS, user_id)] = lambda t: self._on_transfer(feed, t)

    def _on_transfer(self, feed: _UserFeed, transfer: dict[str, Any]) -> None:
        """A deposit or withdrawal as Binance's `balanceUpdate` (`d` signed, asset decimals)."""
        decimals = self.gw.market.asset_decimals.get(transfer["asset"])
        if decimals is not None:
            now = now_ms()
            delta = format_units(int(transfer["delta"]), decimals)
            self._send(feed, [{"e": "balanceUpdate", "E": now, "a": transfer["asset"], "d": delta, "T": now}])

    def _on_balance(self, feed: _UserFeed, balance: dict[str, Any]) -> None:
        """Native balances come one asset per message, all in one go: send them together
        on the next turn of the event loop."""
        if not feed.balances:
            asyncio.get_running_loop().call_soon(self._flush_balances, feed)
        feed.balances.append(balance)

    def _flush_balances(self, feed: _UserFeed) -> None:
        balances, feed.balances = feed.balances, []
        if balances:
            self._send(feed, [account_position(balances, now_ms())])

    def _send(self, feed: _UserFeed, events: list[dict[str, Any]]) -> None:
        send, held = self.gw.hub.send, self.held
        for event in events:
            body = orjson.dumps(event)
            bare: bytes | None = None
            for conn, wrapper in list(feed.conns.items()):
                if wrapper is None:
                    if bare is None:
                        bare = encode_text_frame(body)
                    frame = bare
                else:
                    frame = encode_text_frame(wrapper[0] + body + wrapper[1])
                waiting = held.get(conn)
                if waiting is None:
                    send(conn, frame)
                else:
                    waiting.append(frame)

    def _zeros(self, market: str) -> tuple[str, str]:
        spec = self.gw.market.markets.get(market)
        if spec is None:
            return "0", "0"
        return Zeros(spec).qty, format_units(0, spec.quote_decimals)
