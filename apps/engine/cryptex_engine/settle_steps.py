"""The settle steps' round trips for the engine's hot loop: step A, then the bucket calls
(each followed by a WAIT when CRYPTEX_REDIS_WAIT_REPLICAS asks for one), over the lean
pipelined client (one Redis or a cluster: each command to the node of its key) or, without
one, redis-py. What the answers mean is the service's business (service.py)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from cryptex_common import metrics, resp_cluster
from cryptex_common.ledger import Ledger, SettleResult, settle_result
from cryptex_common.settle_calls import SettlePlan
from cryptex_engine.settings import EngineSettings


def _noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError) or (isinstance(reply, ResponseError)
                                                and str(reply).startswith("NOSCRIPT"))


class SettleSteps:
    def __init__(self, redis: Redis, fast: resp_cluster.OrderClient | None, ledger: Ledger,
                 settings: EngineSettings) -> None:
        self.redis = redis
        self.fast = fast
        self.ledger = ledger
        self.settings = settings

    async def pipeline(self, commands: list[tuple[Any, ...]], route_keys: list[str | None] | None = None) -> list[Any]:
        """`commands` in one round trip (per node on a cluster, each to the node of its
        `route_keys` entry when given: WAIT names no key), replies in order."""
        if isinstance(self.fast, resp_cluster.ClusterRespClient):
            return await self.fast.pipeline(*commands, route_keys=route_keys)
        if self.fast is not None:
            return await self.fast.pipeline(*commands)
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        answers: list[Any] = await pipe.execute(raise_on_error=False)
        return answers

    def _wait(self, route_key: str) -> list[tuple[tuple[Any, ...], str]]:
        """The WAIT that follows a write to the node of `route_key`, when configured."""
        n = self.settings.redis_wait_replicas
        return [(("WAIT", n, self.settings.redis_wait_timeout_ms), route_key)] if n else []

    def _check_waits(self, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            if int(reply) < self.settings.redis_wait_replicas:
                metrics.REDIS_WAIT_SHORTFALL.labels("engine").inc()

    async def run_market(self, plan: SettlePlan) -> SettleResult:
        """Step A (then its WAIT, when configured, before any bucket applies it)."""
        call = plan.market
        waits = self._wait(call.keys[0])
        reply, *waited = await self.pipeline(
            [("EVALSHA", self.ledger.settle_market_sha, len(call.keys), *call.keys, *call.args),
             *(w for w, _ in waits)], [call.keys[0], *(k for _, k in waits)])
        self._check_waits(waited)
        if _noscript(reply):
            return await self.ledger.run_market(call)  # Redis restarted: load the script, run it alone
        if isinstance(reply, Exception):
            raise reply
        return settle_result(reply)

    async def run_buckets(self, plan: SettlePlan, then: list[tuple[Any, ...]]) -> list[Any]:
        """The batch's bucket calls' answers (SettleResult or exception), then `then`'s replies."""
        sha = self.ledger.settle_bucket_sha
        calls = [call for _tag, call in plan.buckets]
        commands: list[tuple[Any, ...]] = [("EVALSHA", sha, len(c.keys), *c.keys, *c.args) for c in calls]
        route: list[str | None] = [c.keys[0] for c in calls]
        waits = [w for c in calls for w in self._wait(c.keys[0])]
        answers = await self.pipeline([*commands, *(w for w, _ in waits), *then],
                                       [*route, *(k for _, k in waits), *(None for _ in then)])
        self._check_waits(answers[len(calls):len(calls) + len(waits)])
        answers = answers[:len(calls)] + answers[len(calls) + len(waits):]
        out: list[Any] = []
        for call, reply in zip(calls, answers, strict=False):
            if _noscript(reply):
                out.append(SettleResult("ok", subscribed=await self.ledger.apply_bucket(call)))
            else:
                out.append(reply if isinstance(reply, Exception) else settle_result(reply))
        return out + answers[len(calls):]

