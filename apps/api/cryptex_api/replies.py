"""One reply channel per API process: engines publish each command's result to it, and
the waiting request picks its reply by request id. Subscribed once at start."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

from redis.asyncio import Redis

from cryptex_common import keys
from cryptex_common.messages import REPLY_BATCH_ADAPTER, CommandReply

log = logging.getLogger("cryptex.api.replies")


class ReplyWaiter:
    def __init__(self, redis: Redis, instance_id: str) -> None:
        self.redis = redis
        self.channel = keys.reply_channel(instance_id)
        self._pending: dict[str, asyncio.Future[CommandReply]] = {}
        self._ids = itertools.count(1)
        self._prefix = instance_id
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.on_markets_changed: asyncio.Event = asyncio.Event()

    def new_request(self) -> tuple[str, asyncio.Future[CommandReply]]:
        request_id = f"{self._prefix}:{next(self._ids)}"
        fut: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        return request_id, fut

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._subscribed.wait(), 10)

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and self._subscribed.is_set()

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, keys.MARKETS_CHANGED_CHANNEL)
                self._subscribed.set()
                async for message in pubsub.listen():
                    if message["channel"] in (keys.MARKETS_CHANGED_CHANNEL,
                                              keys.MARKETS_CHANGED_CHANNEL.encode()):
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

    def _deliver(self, data: bytes | str) -> None:
        try:
            replies = REPLY_BATCH_ADAPTER.validate_json(data)
        except Exception:
            log.exception("malformed reply dropped")
            return
        for reply in replies:
            fut = self._pending.pop(reply.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
