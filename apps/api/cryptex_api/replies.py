"""One reply channel per API process: engines publish each command's result to it, and
the waiting request picks its reply by request id. Subscribed once at start.

Replies are decoded with orjson into plain dicts (the CommandReply shape, camelCase keys,
as the engine's translate layer builds them) and formatted for clients by `WireFormat.order_dict` / `fill_dict`;
no pydantic on the order path. A request waits on a future resolved by the
listener or, after its timeout, with None by a timer (no task per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

import orjson
from redis.asyncio import Redis

from cryptex_common import keys, redis_client, resp

log = logging.getLogger("cryptex.api.replies")
Reply = dict[str, Any]  # a CommandReply as the engine publishes it


def _expire(fut: asyncio.Future[Reply | None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ReplyWaiter:
    """`url`: subscribe over cryptex_common.resp (hiredis, no per-message redis-py work) when
    it is a plain redis:// URL or a cluster's (then to one seed node at a time: a PUBLISH
    reaches every node of a cluster; after a failure, the next seed); otherwise through
    `redis`'s pubsub."""

    def __init__(self, redis: Redis, instance_id: str, url: str | None = None) -> None:
        self.redis = redis
        urls = [u for u in redis_client.pubsub_urls(url) if resp.supports(u)] if url is not None else []
        self.urls = urls
        self.channel = keys.reply_channel(instance_id)
        self._pending: dict[str, asyncio.Future[Reply | None]] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{instance_id}:"
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.on_markets_changed: asyncio.Event = asyncio.Event()

    def new_request(self) -> tuple[str, asyncio.Future[Reply | None]]:
        request_id = f"{self._prefix}{next(self._ids)}"
        fut: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        return request_id, fut

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    async def wait(self, request_id: str, fut: asyncio.Future[Reply | None], timeout_s: float) -> Reply | None:
        """The reply, or None when none arrives within `timeout_s` (then forgotten)."""
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, fut)
        try:
            reply = await fut
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)
        return reply

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._subscribed.wait(), 10)

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and self._subscribed.is_set()

    async def _listen(self) -> None:
        if self.urls:
            await self._listen_resp(self.urls)
        changed = (keys.MARKETS_CHANGED_CHANNEL, keys.MARKETS_CHANGED_CHANNEL.encode())
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, keys.MARKETS_CHANGED_CHANNEL)
                self._subscribed.set()
                async for message in pubsub.listen():
                    if message["channel"] in changed:
                        self.on_markets_changed.set()
                        continue
                    self._deliver(message["data"])
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception:
                self._subscribed.clear()
                log.exception("reply subscription failed; resubscribing")
                await asyncio.sleep(0.5)

    async def _listen_resp(self, urls: list[str]) -> None:
        changed = keys.MARKETS_CHANGED_CHANNEL.encode()

        def on_push(message: list[bytes]) -> None:
            if message[1] == changed:
                self.on_markets_changed.set()
            else:
                self._deliver(message[2])

        for url in itertools.cycle(urls):
            try:
                await resp.subscribe(url, [self.channel, keys.MARKETS_CHANGED_CHANNEL], on_push,
                                     self._subscribed.set)
                log.warning("reply subscription lost; resubscribing")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reply subscription failed; resubscribing")
            self._subscribed.clear()
            await asyncio.sleep(0.5)

    def _deliver(self, data: bytes | str) -> None:
        try:
            replies = orjson.loads(data)
            if not isinstance(replies, list):
                raise ValueError("a reply batch is a JSON array")
            for reply in replies:
                fut = self._pending.pop(reply["requestId"], None)
                if fut is not None and not fut.done():
                    fut.set_result(reply)
        except Exception:
            log.exception("malformed reply dropped")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
