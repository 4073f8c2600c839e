"""Issue 11 defect 1: market rule changes are sequenced on the command stream.

minQuantity, maxQuantity, minNotional and selfTradePrevention used to be read from the
registry when an engine started: a rule change reached the running engine never, and a
replay after a crash re-judged already settled commands under the *new* rules. Now the
registry appends a `configure` carrying every mutable rule whenever one changes, the core
applies it at that sequence number, and live matching, a restart and `cryptex replay` agree.
"""

from __future__ import annotations

import shutil
from typing import Any

import redis.asyncio as aioredis

from cryptex_client import CryptexClient
from cryptex_common import keys
from cryptex_common.ledger import Ledger
from cryptex_common.markets import MarketSpec
from cryptex_common.registry import get_market, register_market
from cryptex_engine.replay import replay_market
from tests.chaos.support import (
    ADMIN,
    SOL,
    FlowLog,
    engine_name,
    funded_users,
    make_stack,
    register_all,
    replay_cli,
    wait_engine_caught_up,
)
from tests.support.eventually import eventually
from tests.support.servers import redis_server

# No periodic snapshot: a kill -9 makes the restart rebuild from the whole stream.
NO_SNAPSHOTS = {"CRYPTEX_SNAPSHOT_EVERY_S": "0", "CRYPTEX_SNAPSHOT_EVERY_COMMANDS": "0"}


async def wait_api_rules(client: CryptexClient, symbol: str, min_quantity: str,
                         timeout_s: float = 10.0) -> None:
    """Until the API's registry view shows `min_quantity` (it reloads on markets:changed)."""
    async def seen() -> bool:
        r = await client.markets()
        return any(m.get("symbol") == symbol and m.get("minQuantity") == min_quantity
                   for m in (r.body if isinstance(r.body, list) else r.body.get("markets", [])))

    await eventually(seen, timeout_s, interval_s=0.1, what=f"the API seeing minQuantity {min_quantity}")


async def change_rules(url: str, **update: Any) -> MarketSpec:
    redis = aioredis.Redis.from_url(url)
    try:
        spec = await get_market(redis, SOL)
        assert spec is not None
        new = spec.model_copy(update=update)
        MarketSpec.model_validate(new.model_dump())  # still a valid spec
        assert await register_market(redis, new)
        return new
    finally:
        await redis.aclose()


async def conserved(url: str) -> dict[str, dict[str, int]]:
    redis = aioredis.Redis.from_url(url)
    try:
        report = await Ledger(redis).conservation_report()
    finally:
        await redis.aclose()
    for asset, row in report.items():
        assert row["held"] == row["deposits"] - row["withdrawals"], (asset, row)
    return report


async def test_a_rule_change_is_sequenced_live_restart_and_replay_agree() -> None:
    """issue 11 defect 1: a rule change between live matching and a crash + replay.

    An order resting under the old maxQuantity stays on the rebuilt book (and can be
    cancelled); an order the loosened minQuantity admits is accepted live and by every
    replay; /state after kill -9 + restart, replay_market and `cryptex replay` all give the
    live state hash; balances are conserved exactly."""
    with redis_server(appendonly=True) as server:
        await register_all(server.url)
        await change_rules(server.url, min_quantity="1")  # strict at first: >= 1 SOL
        stack = make_stack(server.url, env=NO_SNAPSHOTS)
        stack.start_all()
        name = engine_name(SOL)
        port = stack.services[name].ops_port
        assert port
        try:
            async with CryptexClient(f"http://127.0.0.1:{stack.api_port}", admin_token=ADMIN) as admin:
                alice, bob = await funded_users(admin, 2, FlowLog())
                await wait_api_rules(alice, SOL, "1")
                # (a) 8 SOL rests under maxQuantity 100000
                r = await alice.place_order(side="sell", type="limit", price="150", quantity="8", market=SOL)
                assert r.status == 200 and r.body["order"]["status"] == "new", r.body
                big = r.body["order"]["orderId"]
                # the rules change: at most 5 SOL, at least 0.001 SOL
                await change_rules(server.url, min_quantity="0.001", max_quantity="5")
                await wait_api_rules(alice, SOL, "0.001")
                # (b) 0.5 SOL: the API and the engine both judge it by the new rules
                r = await bob.place_order(side="buy", type="limit", price="100", quantity="0.5", market=SOL)
                assert r.status == 200 and r.body["order"]["status"] == "new", r.body
                small = r.body["order"]["orderId"]
                r = await bob.place_order(side="buy", type="limit", price="100", quantity="6", market=SOL)
                assert r.status == 422 and r.body["code"] == "QUANTITY_TOO_LARGE", r.body
                live = await wait_engine_caught_up(server.url, SOL, port)

                stack.kill(name)  # kill -9: no snapshot, the restart replays the whole stream
                redis = aioredis.Redis.from_url(server.url)
                assert await redis.get(keys.snapshot_key(SOL)) is None
                await redis.aclose()
                stack.start(name)
                again = await wait_engine_caught_up(server.url, SOL, port)
                assert again["stateHash"] == live["stateHash"], (live, again)
                rep = await replay_market(server.url, SOL)
                assert (rep["seq"], rep["stateHash"]) == (live["seq"], live["stateHash"])
                cli = replay_cli(server.url, SOL)
                assert (cli["seq"], cli["stateHash"]) == (str(live["seq"]), live["stateHash"])

                # both resting orders are still on the book: cancellable, funds released
                for client, oid in ((alice, big), (bob, small)):
                    r = await client.cancel_order(oid)
                    assert r.status == 200 and r.body["order"]["status"] == "cancelled", r.body
                for client in (alice, bob):
                    balances = await client.balance_map()
                    assert all(b["locked"] in ("0", "0.0") or float(b["locked"]) == 0
                               for b in balances.values()), balances
            await wait_engine_caught_up(server.url, SOL, port)
            await conserved(server.url)
            after = await replay_market(server.url, SOL)
            assert after["stateHash"] == (await wait_engine_caught_up(server.url, SOL, port))["stateHash"]
            print(f"\nrule change: live {live['stateHash']} seq {live['seq']}; "
                  f"restart {again['stateHash']}; replay {rep['stateHash']}; cli {cli['stateHash']}")
        finally:
            codes = stack.stop_all()
            shutil.rmtree(stack.state_dir, ignore_errors=True)
        assert all(c == 0 for c in codes.values()), codes
