"""Private streams: which users this process follows, their registration in
its bucket's `keys.subscribers_key` (engines publish `user@<id>` only for registered users), and the
`user@<id>` events turned into `user.orders`, `user.fills` and `user.balances` messages.

Invariants:
- `followed_users` is exactly the set of users with a `user@<id>` route: a user is followed
  while at least one local socket holds one of their private topics;
- `follow(user)` returns only once (a) the user is registered with an expiry at least
  `ttl_ms` ahead of Redis's clock (the ZADD has returned) and (b) Redis has confirmed this
  process's subscription to `user@<id>`, so every event an engine settles afterwards
  arrives; it raises RedisError/OSError, or TimeoutError past SUBSCRIBE_CONFIRM_S;
- a followed user's registration never lapses while Redis answers: `keep_registered` renews
  it every `refresh_s` (retried every second after a failure, and at once after a pub/sub
  reconnect), `ttl_ms` leaving several intervals of margin; expiries only grow (ZADD GT,
  Redis's clock), so no gateway, whatever its clock, shortens another's; gateways never
  remove a registration, they let it expire (another gateway may follow the same user);
- balances are read from Redis with one read in flight per user, so the last message a
  subscriber gets is never older than the last hint.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

import cryptex_common.metrics as metrics
from cryptex_common import keys
from cryptex_common.money import format_units
from cryptex_wsgateway.market_data import MarketData, Spawn
from cryptex_wsgateway.publisher import Publisher
from cryptex_wsgateway.streams import PRIVATE_STREAMS
from cryptex_wsgateway.subscriptions import private_topic
from cryptex_wsgateway.upstream import SERVICE, Upstream

log = logging.getLogger("cryptex_wsgateway.gateway")
SUBSCRIBE_CONFIRM_S = 5.0  # how long a private SUBSCRIBE waits for Redis's confirmation
# A user's deposits and withdrawals `{"asset", "delta" (smallest units), "txId"}`: a topic
# only taps follow (no client stream carries it; the native user.balances shows the result).
TRANSFERS = "user.transfers"
# KEYS[1] the private-subscribers ZSET; ARGV[1] ttl ms, ARGV[2..] user ids. Expiries come from
# Redis's clock and only grow (GT); expired members are removed. Returns the expiry written.
REGISTER_LUA = """
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = string.format("%d", now + tonumber(ARGV[1]))
for i = 2, #ARGV do
  redis.call("ZADD", KEYS[1], "GT", expiry, ARGV[i])
end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. string.format("%d", now))
return expiry
"""


class PrivateFeed:
    def __init__(self, redis: Redis, upstream: Upstream, publisher: Publisher,
                 market: MarketData, spawn: Spawn, *, refresh_s: float, ttl_ms: int) -> None:
        self.redis = redis
        self.upstream = upstream
        self.publisher = publisher
        self.market = market
        self.refresh_s = refresh_s
        self.ttl_ms = ttl_ms
        self._spawn = spawn
        self.followed_users: set[str] = set()
        self._balance_dirty: dict[str, set[str]] = {}
        self._register_script = redis.register_script(REGISTER_LUA)

    # --- following and registration -----------------------------------------------------
    async def follow(self, user_id: str) -> None:
        """Make private events of `user_id` reach this process, before a private SUBSCRIBE
        is acknowledged: registered (ZADD returned) and `user@<id>` confirmed by Redis.
        Raises RedisError/OSError, or TimeoutError when Redis does not confirm in time."""
        channel = keys.user_channel(user_id).encode()
        confirmed = self.upstream.confirmation(channel)
        if channel not in self.upstream.routes:
            self.upstream.routes[channel] = lambda raw: self._on_user(user_id, raw)
            self.followed_users.add(user_id)
            if self.upstream.pubsub is not None:  # else `listen` subscribes it when it reconnects
                await self.upstream.pubsub.subscribe(channel)
        await self._register([user_id])
        await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_CONFIRM_S)

    async def unfollow_if_unused(self, user_id: str) -> None:
        """Drop `user@<id>` once no local socket follows the user. Its registration is left
        to expire: another gateway may follow the same user."""
        channel = keys.user_channel(user_id).encode()
        if channel not in self.upstream.routes or self._follows(user_id):
            return
        del self.upstream.routes[channel]
        self.followed_users.discard(user_id)
        self.upstream.forget_confirmation(channel)
        if self.upstream.pubsub is not None:
            await self.upstream.pubsub.unsubscribe(channel)

    def _follows(self, user_id: str) -> bool:
        wanted = self.publisher.wanted  # a socket's subscription or a tap (Binance user data)
        return any(wanted(private_topic(s, user_id)) for s in PRIVATE_STREAMS)

    async def _register(self, user_ids: list[str]) -> None:
        """Tell the engines these users have live private subscriptions (their bucket's
        `keys.subscribers_key`, score = expiry ms by Redis's clock): the settle scripts
        publish `user@<id>` only for them. One script call per bucket (one slot each)."""
        by_tag: dict[str, list[str]] = {}
        for user_id in user_ids:
            by_tag.setdefault(keys.user_tag(user_id), []).append(user_id)
        for tag, users in by_tag.items():
            await self._register_script(keys=[keys.subscribers_key(tag)], args=[self.ttl_ms, *users])

    async def register_followed(self) -> bool:
        try:
            await self._register(sorted(self.followed_users))
            return True
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels(SERVICE).inc()
            log.warning("private subscribers not renewed", extra={"error": str(exc)})
            return False

    async def keep_registered(self) -> None:
        """Renew every followed user's registration each `refresh_s`; after a failure, retry
        every second (the TTL leaves more intervals of margin)."""
        while True:
            ok = await self.register_followed()
            await asyncio.sleep(self.refresh_s if ok else 1.0)

    # --- events -------------------------------------------------------------------------
    def _on_user(self, user_id: str, raw: bytes) -> None:
        msg = orjson.loads(raw)
        kind = msg.get("type")
        publish = self.publisher.publish
        if kind == "order":
            publish(private_topic("user.orders", user_id), "user.orders", msg["data"])
        elif kind == "fill":
            publish(private_topic("user.fills", user_id), "user.fills", msg["data"])
        elif kind == "balance":
            data = msg.get("data") or {}
            if data.get("transfer") is not None:  # a deposit or withdrawal: for taps (Binance)
                publish(private_topic(TRANSFERS, user_id), "user.balances", data["transfer"])
            self.refresh_balances(user_id, data.get("assets") or list(self.market.asset_decimals))

    def refresh_balances(self, user_id: str, assets: list[str]) -> None:
        """Push absolute balances read from Redis; one read in flight per user, so the
        last message a subscriber gets is never older than the last hint."""
        if not self.publisher.wanted(private_topic("user.balances", user_id)):
            return
        pending = self._balance_dirty.get(user_id)
        if pending is not None:
            pending.update(assets)
            return
        self._balance_dirty[user_id] = set(assets)
        self._spawn(self._push_balances(user_id))

    async def _push_balances(self, user_id: str) -> None:
        try:
            while self._balance_dirty.get(user_id):
                decimals = self.market.asset_decimals
                assets = sorted(a for a in self._balance_dirty[user_id] if a in decimals)
                self._balance_dirty[user_id] = set()
                if not assets:
                    continue
                fields = [f for a in assets for f in (keys.available_field(a), keys.locked_field(a))]
                try:
                    values = await self.redis.hmget(keys.balance_key(user_id), fields)
                except (RedisError, OSError):
                    metrics.REDIS_ERRORS.labels(SERVICE).inc()
                    return
                self._publish_balances(user_id, assets, values)
        finally:
            self._balance_dirty.pop(user_id, None)

    def _publish_balances(self, user_id: str, assets: list[str], values: list[Any]) -> None:
        """`values` holds (available, locked) units per asset, in `assets` order."""
        topic = private_topic("user.balances", user_id)
        for i, asset in enumerate(assets):
            decimals = self.market.asset_decimals[asset]
            available, locked = values[2 * i], values[2 * i + 1]
            self.publisher.publish(topic, "user.balances", {
                "asset": asset,
                "available": format_units(int(available or 0), decimals),
                "locked": format_units(int(locked or 0), decimals),
            })
