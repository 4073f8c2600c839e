"""The registry of live markets in Redis (`market:{M}` per market, the `markets` hash
indexing them all, the `markets:changed` channel).

Written by the local launcher from markets.yaml and by the operator from Market resources.
Every change of a mutable field (state, fees, minQuantity, maxQuantity, minNotional,
selfTradePrevention) also goes onto the market's command stream as a `configure` carrying
all of them, in the same transaction as the write of `market:{M}` (both in the market's
hash slot, so on a Redis Cluster too): the engine applies the rules at that command's
sequence number, and every replay sees them at the same place (see
docs/decisions/0010-sequenced-market-rules.md). The `markets` hash (what the API pre-checks
with and every service lists markets from) is written right after from `market:{M}`; a
crash in between leaves it one change behind until the next registration, which always
rewrites it. Symbol, assets and grid are immutable once registered.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from cryptex_common import keys
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import ConfigureMarketCommand
from cryptex_common.resp import as_text
from cryptex_common.wire import WireFormat

IMMUTABLE_FIELDS = (
    "symbol", "base_asset", "base_decimals", "quote_asset", "quote_decimals", "tick_size",
    "lot_size",
)
# What a `configure` carries: everything else may change after registration.
MUTABLE_FIELDS = (
    "state", "maker_fee_bps", "taker_fee_bps", "min_quantity", "max_quantity", "min_notional",
    "self_trade_prevention",
)


class ImmutableFieldChanged(ValueError):
    pass


async def load_markets(redis: Redis) -> dict[str, MarketSpec]:
    raw = await redis.hgetall(keys.MARKETS_HASH)
    return {as_text(k): MarketSpec.model_validate_json(v) for k, v in raw.items()}


class MarketRegistry:
    """The registered markets as this process last read them, with the views the services
    derive from them (wire formats, asset decimals), rebuilt together on every `adopt` so
    they never disagree. The API and the gateway each own one and reload it on
    `markets:changed`."""

    def __init__(self) -> None:
        self.specs: dict[str, MarketSpec] = {}
        self.formats: dict[str, WireFormat] = {}
        self.asset_decimals: dict[str, int] = {}

    async def reload(self, redis: Redis) -> tuple[list[str], list[str]]:
        """Re-read the registry; (markets added, markets removed) since the last read."""
        return self.adopt(await load_markets(redis))

    def adopt(self, specs: dict[str, MarketSpec]) -> tuple[list[str], list[str]]:
        added = [m for m in specs if m not in self.specs]
        removed = [m for m in self.specs if m not in specs]
        self.specs = specs
        self.formats = {symbol: WireFormat(spec) for symbol, spec in specs.items()}
        decimals: dict[str, int] = {}
        for spec in specs.values():
            decimals[spec.base_asset] = spec.base_decimals
            decimals[spec.quote_asset] = spec.quote_decimals
        self.asset_decimals = decimals
        return added, removed


async def get_market(redis: Redis, symbol: str) -> MarketSpec | None:
    raw = await redis.hget(keys.MARKETS_HASH, symbol)
    return MarketSpec.model_validate_json(raw) if raw else None


def configure_fields(spec: MarketSpec) -> dict[str, str]:
    """The stream entry of the configure that puts `spec`'s mutable fields in force."""
    return {"c": ConfigureMarketCommand.for_spec(spec).model_dump_json(by_alias=True)}


def _mutable(spec: MarketSpec) -> tuple[Any, ...]:
    return tuple(getattr(spec, f) for f in MUTABLE_FIELDS)


async def _registered(redis: Redis, pipe: Any, symbol: str) -> MarketSpec | None:
    """The spec as registered: `market:{M}` (watched), else the index (data written before
    `market:{M}` existed)."""
    raw = await pipe.get(keys.market_spec_key(symbol))
    if raw is None:
        raw = await redis.hget(keys.MARKETS_HASH, symbol)
    return MarketSpec.model_validate_json(raw) if raw else None


async def register_market(redis: Redis, spec: MarketSpec) -> bool:
    """Create or update a market. Returns True when anything changed. Idempotent.

    Read, compare and write are one optimistic transaction (WATCH on `market:{M}`), so two
    concurrent writers can never leave the stream's last configure disagreeing with the
    registered spec; the index and the change notice follow."""
    text = spec.model_dump_json(by_alias=True)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.market_spec_key(spec.symbol))
                old = await _registered(redis, pipe, spec.symbol)
                if old is not None:
                    changed = [f for f in IMMUTABLE_FIELDS if getattr(old, f) != getattr(spec, f)]
                    if changed:
                        raise ImmutableFieldChanged(f"{spec.symbol}: immutable fields changed: {changed}")
                pipe.multi()
                pipe.set(keys.market_spec_key(spec.symbol), text)
                if old is None or _mutable(old) != _mutable(spec):
                    pipe.xadd(keys.commands_stream(spec.symbol), configure_fields(spec))
                await pipe.execute()
                break
            except WatchError:
                continue
    indexed = await redis.hget(keys.MARKETS_HASH, spec.symbol)
    if indexed is not None and old == spec and MarketSpec.model_validate_json(indexed) == spec:
        return False
    await redis.hset(keys.MARKETS_HASH, spec.symbol, text)
    await redis.publish(keys.MARKETS_CHANGED_CHANNEL, orjson.dumps({"symbol": spec.symbol}))
    return True


async def sequence_current_rules(redis: Redis, symbol: str) -> bool:
    """Append a configure with the registry's current state, fees and rules, atomically
    with reading them (WATCH). For a market whose stream has never carried its rules (it
    was registered before they travelled on the stream): from this entry on, live matching
    and every replay judge by the same rules. False when the market is not registered."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.market_spec_key(symbol))
                spec = await _registered(redis, pipe, symbol)
                if spec is None:
                    return False
                pipe.multi()
                pipe.set(keys.market_spec_key(symbol), spec.model_dump_json(by_alias=True))
                pipe.xadd(keys.commands_stream(symbol), configure_fields(spec))
                await pipe.execute()
                return True
            except WatchError:
                continue
