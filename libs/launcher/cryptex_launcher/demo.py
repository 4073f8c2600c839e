"""The demo market maker: keeps a live two-sided book on every market and trades a little,
so the page, the charts and the streams have something to show. Uses the signed client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from decimal import Decimal

from cryptex_client import CryptexClient

log = logging.getLogger("cryptex.demo")

START_PRICES = {"SOL/USDC": Decimal("150"), "BTC/USDC": Decimal("60000")}


def _on_grid(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value() * step


async def make_market(admin: CryptexClient, spec: dict, levels: int = 8, rng: random.Random | None = None,
                      stop: asyncio.Event | None = None) -> None:
    rng = rng or random.Random()
    symbol = spec["symbol"]
    tick, lot = Decimal(spec["tickSize"]), Decimal(spec["lotSize"])
    mid = START_PRICES.get(symbol, Decimal("100"))
    big = str(_on_grid(mid * 100_000, Decimal(1)))
    maker = await admin.new_funded_user({spec["baseAsset"]: "1000000", spec["quoteAsset"]: big},
                                        tx_prefix=f"demo-{rng.random()}-")
    taker = await admin.new_funded_user({spec["baseAsset"]: "1000000", spec["quoteAsset"]: big},
                                        tx_prefix=f"demo-{rng.random()}-")
    step = max(tick, _on_grid(mid / 2000, tick))
    qty = max(lot, _on_grid(Decimal(1000) / mid, lot))
    try:
        await _quote_loop(maker, taker, symbol, mid, tick, step, qty, levels, rng, stop)
    finally:
        with contextlib.suppress(OSError, asyncio.TimeoutError):  # the API may be gone already
            await maker.cancel_all(symbol)


async def _quote_loop(maker: CryptexClient, taker: CryptexClient, symbol: str, mid: Decimal, tick: Decimal,
                      step: Decimal, qty: Decimal, levels: int, rng: random.Random,
                      stop: asyncio.Event | None) -> None:
    while stop is None or not stop.is_set():
        mid = max(step * 10, _on_grid(mid + step * rng.choice([-2, -1, 0, 1, 2]), tick))
        await maker.cancel_all(symbol)
        for i in range(1, levels + 1):
            size = str(qty * rng.randint(1, 5))
            await maker.place_order(side="buy", type="limit", price=str(mid - step * i), quantity=size,
                                    market=symbol, postOnly=True)
            await maker.place_order(side="sell", type="limit", price=str(mid + step * i), quantity=size,
                                    market=symbol, postOnly=True)
        for _ in range(rng.randint(0, 3)):
            await taker.place_order(side=rng.choice(["buy", "sell"]), type="market", quantity=str(qty),
                                    market=symbol)
        if stop is None:
            await asyncio.sleep(1.0)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def run_demo(api_url: str, admin_token: str) -> None:
    """Until SIGTERM/SIGINT: then the demo's resting orders are cancelled and it exits 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with CryptexClient(api_url, admin_token=admin_token) as admin:
        for _ in range(60):  # the API may still be starting
            try:
                markets = (await admin.markets()).body
                break
            except OSError:
                await asyncio.sleep(0.5)
        else:
            raise SystemExit("demo: the API did not answer")
        await asyncio.gather(*(make_market(admin, m, stop=stop) for m in markets))
