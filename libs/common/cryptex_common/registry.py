"""The registry of live markets in Redis (`markets` hash + `markets:changed` channel).

Written by the local launcher from markets.yaml and by the operator from Market resources.
A change of state or fees also goes onto the market's command stream as a `configure`
command, so the engine applies it in sequence and a replay sees it at the same place.
Symbol, assets and grid are immutable once registered.
"""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from cryptex_common import keys
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import ConfigureMarketCommand

IMMUTABLE_FIELDS = (
    "symbol", "base_asset", "base_decimals", "quote_asset", "quote_decimals", "tick_size",
    "lot_size",
)


class ImmutableFieldChanged(ValueError):
    pass


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


async def load_markets(redis: Redis) -> dict[str, MarketSpec]:
    raw = await redis.hgetall(keys.MARKETS_HASH)
    return {_s(k): MarketSpec.model_validate_json(v) for k, v in raw.items()}


async def get_market(redis: Redis, symbol: str) -> MarketSpec | None:
    raw = await redis.hget(keys.MARKETS_HASH, symbol)
    return MarketSpec.model_validate_json(raw) if raw else None


async def register_market(redis: Redis, spec: MarketSpec) -> bool:
    """Create or update a market. Returns True when anything changed. Idempotent."""
    old = await get_market(redis, spec.symbol)
    if old is not None:
        changed = [f for f in IMMUTABLE_FIELDS if getattr(old, f) != getattr(spec, f)]
        if changed:
            raise ImmutableFieldChanged(f"{spec.symbol}: immutable fields changed: {changed}")
        if old == spec:
            return False
    needs_configure = old is None or (old.state, old.maker_fee_bps, old.taker_fee_bps) != (
        spec.state, spec.maker_fee_bps, spec.taker_fee_bps
    )
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.MARKETS_HASH, spec.symbol, spec.model_dump_json(by_alias=True))
        if needs_configure:
            command = ConfigureMarketCommand(
                state=spec.state,
                makerFeeBps=spec.maker_fee_bps,
                takerFeeBps=spec.taker_fee_bps,
            )
            pipe.xadd(keys.commands_stream(spec.symbol), {"c": command.model_dump_json(by_alias=True)})
        pipe.publish(keys.MARKETS_CHANGED_CHANNEL, orjson.dumps({"symbol": spec.symbol}))
        await pipe.execute()
    return True
