"""kopf handlers for `Market`: thin; the bodies come from render.py, the calls from k8s.py
and exchange.py.

- create / update / resume: register the market in Redis (state and fee changes reach the
  engine as a `configure` command), create or patch its engine Deployment, write status;
- delete (finalizer cryptex.io/market-drain): cancel-only; once the engine settled every
  queued command and the book is empty, closed; once `closed` is settled too and the book
  is still empty, remove the Deployment; orders resting in a closed market send it back to
  cancel-only (exchange.drain_step has the rule);
- a timer refreshes the status (engine availability, last sequence) at most once per
  interval, and writes only what changed.

Every handler is idempotent: kopf replays events and retries failures.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from cryptex_common import redis_client
from cryptex_common.markets import MarketState
from cryptex_common.registry import ImmutableFieldChanged
from cryptex_operator import exchange, k8s, render
from cryptex_operator.config import OperatorSettings
from cryptex_operator.crd import FINALIZER, GROUP, PLURAL, VERSION

MARKETS = (GROUP, VERSION, PLURAL)
SKIP_DRAIN_ANNOTATION = "cryptex.io/skip-drain"
STATUS_INTERVAL_S = OperatorSettings().status_interval_s

log = logging.getLogger("cryptex_operator")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping in annotations: the status schema is strict and would prune it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    memo.cfg = cfg
    memo.redis = redis_client.connect(cfg.redis_url, "operator")
    memo.apps = k8s.apps_api(cfg)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "redis", None) is not None:
        await memo.redis.aclose()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    server = OperatorSettings().k8s_server
    if server:  # dev and tests: a plain URL, no credentials
        return kopf.ConnectionInfo(server=server)
    return kopf.login_via_client(**kwargs)


def _fail(patch: kopf.Patch, status: dict[str, Any], generation: int | None, reason: str,
          message: str) -> kopf.PermanentError:
    patch.status.update(render.failed_status(
        reason=reason, message=message, generation=generation, now=_now(), previous=status
    ))
    return kopf.PermanentError(f"{reason}: {message}")


@kopf.on.resume(*MARKETS)
@kopf.on.create(*MARKETS)
@kopf.on.update(*MARKETS, field="spec")  # type: ignore[arg-type]
async def reconcile(
    spec: kopf.Spec, name: str, namespace: str, uid: str, meta: kopf.Meta,
    status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any,
) -> None:
    cfg: OperatorSettings = memo.cfg
    generation = meta.get("generation")
    try:
        market = render.market_spec(dict(spec))
    except ValidationError as exc:
        raise _fail(patch, dict(status), generation, "InvalidSpec", str(exc)) from None
    try:
        await exchange.register(memo.redis, market)
    except ImmutableFieldChanged as exc:
        raise _fail(patch, dict(status), generation, "ImmutableFieldChanged", str(exc)) from None
    body = render.engine_deployment(name=name, namespace=namespace, uid=uid, spec=dict(spec),
                                    cfg=cfg)
    engine = body["metadata"]["name"]
    try:
        done = await asyncio.to_thread(k8s.ensure_deployment, memo.apps, body)
    except k8s.OwnedByAnother as exc:
        raise _fail(patch, dict(status), generation, "Conflict", str(exc)) from None
    log.info("market %s: engine deployment %s %s", market.symbol, engine, done)
    available = await asyncio.to_thread(k8s.deployment_available, memo.apps, namespace, engine)
    patch.status.update(render.market_status(
        state=market.state, engine=engine, engine_available=available,
        last_seq=await exchange.last_sequence(memo.redis, market.symbol),
        generation=generation, now=_now(), previous=dict(status),
    ))


def _not_deleting(meta: kopf.Meta, status: kopf.Status, **_: Any) -> bool:
    return not meta.get("deletionTimestamp") and status.get("phase") not in (None, "Failed")


@kopf.timer(*MARKETS, interval=STATUS_INTERVAL_S, when=_not_deleting)  # type: ignore[arg-type]
async def refresh_status(
    spec: kopf.Spec, namespace: str, meta: kopf.Meta, status: kopf.Status,
    patch: kopf.Patch, memo: kopf.Memo, **_: Any,
) -> None:
    market = render.market_spec(dict(spec))
    engine = render.deployment_name(market.symbol)
    available = await asyncio.to_thread(k8s.deployment_available, memo.apps, namespace, engine)
    wanted = render.market_status(
        state=market.state, engine=engine, engine_available=available,
        last_seq=await exchange.last_sequence(memo.redis, market.symbol),
        generation=status.get("observedGeneration"), now=_now(), previous=dict(status),
    )
    patch.status.update(render.changed(dict(status), wanted))


@kopf.on.delete(*MARKETS)  # type: ignore[arg-type]
async def drain(
    spec: kopf.Spec, namespace: str, meta: kopf.Meta, status: kopf.Status,
    patch: kopf.Patch, memo: kopf.Memo, **_: Any,
) -> None:
    """Remove the engine only once `exchange.drain_step` reports the market drained (closed,
    empty book, every command settled); until then report Draining and retry."""
    cfg: OperatorSettings = memo.cfg
    symbol = spec.get("symbol", "")
    try:
        render.market_spec(dict(spec))
    except ValidationError:  # never registered, never had an engine
        return
    if meta.get("annotations", {}).get(SKIP_DRAIN_ANNOTATION) == "true":
        await exchange.set_state(memo.redis, symbol, MarketState.CLOSED)  # orders may stay locked
    else:
        state = await exchange.drain_step(memo.redis, symbol, cfg.drain_wait_s)
        if not state.done:
            patch.status.update(render.changed(dict(status), {
                "phase": "Draining", "message": f"draining: {state.describe()}"}))
            raise kopf.TemporaryError(f"{symbol} draining: {state.describe()}",
                                      delay=cfg.drain_poll_s)
    # The engine has applied `closed`; SIGTERM lets it take its final snapshot.
    engine = render.deployment_name(symbol)
    await asyncio.to_thread(k8s.delete_deployment, memo.apps, namespace, engine)
    patch.status.update({"phase": "Closed", "message": "delisted; engine removed"})
    log.info("market %s closed, engine %s removed", symbol, engine)
