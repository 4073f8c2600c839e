"""The trading page in a real headless Chromium against the whole exchange as processes.

What a person does, checked on the screen: the book, trades, ticker and chart fill with
live data from the demo market maker; a funded user signs in with an API key (requests
signed in the browser); a bad price is explained before anything is sent, and an API
refusal is shown in words; a resting order appears in open orders and locks funds; a
crossing order fills (the fill in the fills list and in the public trades, the balances
change, open orders update); the resting order is cancelled; a gap in the depth stream is
repaired from a fresh REST snapshot; a gateway restart is survived (reconnect with
backoff, book rebuilt, private streams re-authenticated); signing out forgets the account.

Screenshots of each step go to artifacts/browser/.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptex_client import CryptexClient
from cryptex_launcher.stack import Stack, wait_for_port
from tests.browser.conftest import ADMIN

MARKET = "SOL/USDC"
TIMEOUT_MS = 20_000


def page_url(stack: Stack) -> str:
    return (f"http://127.0.0.1:{stack.api_port}/?market=SOL_USDC"
            f"&ws=ws://127.0.0.1:{stack.ws_port}/ws")


async def new_page(browser: Any) -> tuple[Any, list[str]]:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(TIMEOUT_MS)
    return page, errors


@contextlib.asynccontextmanager
async def screenshot_on_failure(page: Any, path: Path) -> AsyncIterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(path), full_page=True)
        raise


async def balance(page: Any, asset: str, column: str = "available") -> Decimal:
    text = await page.locator(f'#balances tr[data-asset="{asset}"] td.{column}').inner_text()
    return Decimal(text)


async def wait_balance(page: Any, asset: str, predicate: Any, column: str = "available") -> Decimal:
    """Wait until the shown balance satisfies `predicate` (polled; the page updates it
    from the stream and from REST)."""
    for _ in range(TIMEOUT_MS // 100):
        try:
            value = await balance(page, asset, column)
            if predicate(value):
                return value
        except Exception:  # not rendered yet
            pass
        await page.wait_for_timeout(100)
    raise AssertionError(f"{asset} {column} never matched; last shown: "
                         f"{await page.locator('#balances').inner_text()}")


async def best_prices(page: Any) -> tuple[Decimal, Decimal]:
    bid = await page.locator("#bids tbody tr").first.get_attribute("data-price")
    ask = await page.locator("#asks tbody tr").last.get_attribute("data-price")
    assert bid and ask
    return Decimal(bid), Decimal(ask)


async def fill_order(page: Any, *, side: str, type_: str, price: str | None = None,
                     quantity: str | None = None, tif: str | None = None,
                     post_only: bool = False) -> None:
    await page.check(f"#side-{side}")
    await page.select_option("#order-type", type_)
    if price is not None:
        await page.fill("#price", price)
    if quantity is not None:
        await page.fill("#quantity", quantity)
    if tif is not None:
        await page.select_option("#tif", tif)
    await page.set_checked("#post-only", post_only)


async def submit(page: Any) -> None:
    await page.locator("#order-result").evaluate("e => { e.textContent = '' }")
    await page.click("#submit-order")


async def wait_book_live(page: Any, min_checksums: int = 1) -> None:
    await page.wait_for_function(
        """n => { const p = document.getElementById('book-panel');
                  return p.dataset.state === 'live' && Number(p.dataset.checksumsOk) >= n
                    && document.querySelectorAll('#bids tbody tr').length > 0
                    && document.querySelectorAll('#asks tbody tr').length > 0; }""",
        arg=min_checksums,
    )


async def test_trading_page_end_to_end(web_stack: Stack, browser: Any, artifacts: Path) -> None:
    from playwright.async_api import expect

    api_url = f"http://127.0.0.1:{web_stack.api_port}"
    async with CryptexClient(api_url, admin_token=ADMIN) as admin:
        user = await admin.new_funded_user({"USDC": "100000", "SOL": "1000"}, tx_prefix="browser-")
        page, page_errors = await new_page(browser)
        await page.goto(page_url(web_stack))
        async with screenshot_on_failure(page, artifacts / "failure-end-to-end.png"):
            # --- the market is alive: book (with verified checksums), trades, ticker, chart ---
            await expect(page.locator("#market")).to_have_value(MARKET)
            await wait_book_live(page, min_checksums=3)
            await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
            await expect(page.locator("#trades tbody tr[data-trade-id]").first).to_be_visible()
            await expect(page.locator("#ticker-last")).not_to_have_text("\N{EN DASH}")
            await page.wait_for_function("Number(document.getElementById('chart').dataset.candles) >= 1")
            await expect(page.locator("#chart canvas").first).to_be_visible()
            # cumulative sizes: each row's total is the previous total plus its size (exact)
            rows = await page.locator("#bids tbody tr").evaluate_all(
                "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
            running = Decimal(0)
            for _, size, total in rows:
                running += Decimal(size)
                assert Decimal(total) == running, rows
            await page.screenshot(path=str(artifacts / "01-live-market.png"), full_page=True)

            # --- sign in with the API key; the secret is not left in the form ---
            await page.fill("#api-key", user.api_key)
            await page.fill("#api-secret", user.api_secret)
            await page.click("#signin-button")
            await expect(page.locator("#signed-in")).to_be_visible()
            await expect(page.locator("#api-secret")).to_have_value("")
            usdc0 = await wait_balance(page, "USDC", lambda v: v == Decimal("100000"))
            sol0 = await wait_balance(page, "SOL", lambda v: v == Decimal("1000"))
            await expect(page.locator("#submit-order")).to_have_text("Buy SOL")
            await page.wait_for_function("window.cryptex && window.cryptex.state.authed === true")

            # --- a bad price is explained next to the form, and nothing is sent ---
            await fill_order(page, side="buy", type_="limit", price="150.005", quantity="1", tif="GTC")
            await submit(page)
            await expect(page.locator("#order-error")).to_contain_text("not on the price grid")
            await expect(page.locator("#order-error")).to_contain_text("0.01")
            await expect(page.locator("#price")).to_have_attribute("aria-invalid", "true")
            assert (await user.open_orders()).body == []
            await page.fill("#price", "abc")
            await submit(page)
            await expect(page.locator("#order-error")).to_contain_text("Price must be a plain decimal number")
            await page.screenshot(path=str(artifacts / "02-bad-price.png"), full_page=True)

            # --- an API refusal in words: more than the user can pay ---
            bid, ask = await best_prices(page)
            await fill_order(page, side="buy", type_="limit", price=str(bid), quantity="99999", tif="GTC")
            await submit(page)
            await expect(page.locator("#order-error")).to_contain_text("Not enough funds")
            await expect(page.locator("#order-error")).to_contain_text("Insufficient USDC available")
            await page.screenshot(path=str(artifacts / "03-api-error.png"), full_page=True)

            # --- a resting buy far below the market: open orders and locked funds ---
            rest_price = (bid / 2).quantize(Decimal("0.01"))
            await fill_order(page, side="buy", type_="limit", price=str(rest_price), quantity="0.100",
                             tif="GTC", post_only=True)
            await submit(page)
            await expect(page.locator("#order-error")).to_be_empty()
            await expect(page.locator("#order-result")).to_contain_text("new")
            resting = page.locator("#open-orders tbody tr[data-order-id]")
            await expect(resting).to_have_count(1)
            resting_id = await resting.first.get_attribute("data-order-id")
            locked = rest_price * Decimal("0.100")
            await wait_balance(page, "USDC", lambda v: v == locked, column="locked")
            await wait_balance(page, "USDC", lambda v: v == usdc0 - locked)

            # --- a crossing buy: it fills against the demo maker's asks ---
            # (IOC, so it never rests; tried again if it met the maker between cancel and re-quote)
            for _attempt in range(5):
                _, ask = await best_prices(page)
                cross_price = ask + Decimal("1.00")
                await fill_order(page, side="buy", type_="limit", price=str(cross_price),
                                 quantity="0.100", tif="IOC")
                await submit(page)
                await expect(page.locator("#order-result")).to_contain_text("Buy order")
                if "filled" in await page.locator("#order-result").inner_text():
                    break
                await page.wait_for_timeout(300)
            await expect(page.locator("#order-result")).to_contain_text("filled (0.100 SOL executed)")
            fill_row = page.locator("#fills tbody tr[data-trade-id]").first
            await expect(fill_row).to_contain_text("buy")
            await expect(fill_row).to_contain_text("0.100")
            await expect(fill_row).to_contain_text("taker")
            trade_id = await fill_row.get_attribute("data-trade-id")
            # the same trade in the public trades list, from the stream
            await expect(page.locator(f'#trades tbody tr[data-trade-id="{trade_id}"]')).to_contain_text("0.100")
            # balances: +0.100 SOL less the 0.2% taker fee in SOL; USDC down by what was paid
            sol1 = await wait_balance(page, "SOL", lambda v: v == sol0 + Decimal("0.0998"))
            usdc1 = await wait_balance(page, "USDC", lambda v: v < usdc0 - locked)
            paid = usdc0 - locked - usdc1
            fill_price = Decimal(await fill_row.locator("td").nth(2).inner_text())
            assert fill_price <= cross_price
            assert paid == fill_price * Decimal("0.100"), (paid, fill_price)  # buyer's fee is in SOL
            assert sol1 == Decimal("1000.0998")
            # open orders: the IOC order never rests; the resting one is still there
            await expect(resting).to_have_count(1)
            await expect(resting.first).to_have_attribute("data-order-id", resting_id or "")
            await page.screenshot(path=str(artifacts / "04-filled.png"), full_page=True)

            # --- cancel the resting order: open orders empty, funds unlocked ---
            cancel = page.get_by_role("button", name=re.compile(f"Cancel order {resting_id}"))
            await cancel.focus()
            await page.keyboard.press("Enter")  # keyboard works as well as a click
            await expect(page.locator("#orders-message")).to_contain_text(f"Order {resting_id} cancelled")
            await expect(resting).to_have_count(0)
            await wait_balance(page, "USDC", lambda v: v == 0, column="locked")
            await wait_balance(page, "USDC", lambda v: v == usdc1 + locked)
            assert (await user.open_orders()).body == []
            await page.screenshot(path=str(artifacts / "05-cancelled.png"), full_page=True)

            # --- a gap in the depth stream: the page rebuilds from a fresh REST snapshot ---
            await page.evaluate("() => { cryptex.state.book.lastU -= 3; }")
            await page.wait_for_function("Number(document.getElementById('book-panel').dataset.resyncs) >= 1")
            await wait_book_live(page)
            stats = await page.evaluate("() => cryptex.state.book.stats")
            assert stats["restSnapshots"] >= 1, stats

            # --- the gateway goes away and comes back: reconnect, rebuild, re-authenticate ---
            before = int(await page.locator("#book-panel").get_attribute("data-last-update-id") or 0)
            web_stack.restart("wsgateway")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
            await page.screenshot(path=str(artifacts / "06-reconnecting.png"), full_page=True)
            wait_for_port(web_stack.ws_port)
            await expect(page.locator("#conn")).to_have_attribute("data-connects", "2", timeout=30_000)
            await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
            await wait_book_live(page)
            # the rebuilt book keeps following the engine: the demo market maker requotes about
            # once a second, so an update past `before` arrives (the snapshot alone may equal it)
            await page.wait_for_function(
                f"Number(document.getElementById('book-panel').dataset.lastUpdateId) > {before}",
                timeout=15_000)
            await page.wait_for_function("window.cryptex.state.authed === true")
            # live private updates still arrive: an order placed elsewhere (the Python client)
            # shows up through user.orders / user.balances alone, and is cancelled on the page
            await page.wait_for_timeout(2500)  # engines pick up a new private subscriber within ~1 s
            placed = await user.place_order(side="sell", type="limit", market="sol/usdc",
                                            price=str((ask * 2).quantize(Decimal("0.01"))),
                                            quantity="0.050")
            assert placed.status == 200, placed
            await expect(resting).to_have_count(1)
            await wait_balance(page, "SOL", lambda v: v == Decimal("0.050"), column="locked")
            await resting.first.get_by_role("button").click()
            await expect(resting).to_have_count(0)
            await wait_balance(page, "SOL", lambda v: v == 0, column="locked")
            await page.screenshot(path=str(artifacts / "07-after-reconnect.png"), full_page=True)

            # --- sign out: the account is gone from the page and the socket is anonymous again ---
            await page.click("#signout-button")
            await expect(page.locator("#signin-form")).to_be_visible()
            await expect(page.locator("#balances tbody")).to_contain_text("Sign in to see your balances")
            await expect(page.locator("#submit-order")).to_be_disabled()
            await expect(page.locator("#conn")).to_have_attribute("data-connects", "3")
            await wait_book_live(page)
            assert await page.evaluate("() => cryptex.state.authed") is False

        assert page_errors == []
        await page.close()


async def test_page_modules_match_the_server(web_stack: Stack, browser: Any, artifacts: Path) -> None:
    """The page's own building blocks, run in the browser, against the server's rules:
    CRC32 of the depth checksum string (zlib), HMAC signing with WebCrypto and with the
    pure-JS fallback (Python's hmac), exact decimal checks (no floats), and interval
    switching with the klines history missing or present, and switching markets."""
    import hashlib
    import hmac

    from playwright.async_api import expect

    page, page_errors = await new_page(browser)
    await page.goto(page_url(web_stack))
    await wait_book_live(page)

    text = "b:150.00:1.500,149.99:0.250|a:150.01:3.000"
    secret = "f" * 64
    message = "1700000000000POST/api/v1/order{\"market\":\"SOL_USDC\"}"
    got = await page.evaluate(
        """async ([text, secret, message]) => {
             const book = await import('/static/js/book.js');
             const sign = await import('/static/js/sign.js');
             const D = await import('/static/js/decimal.js');
             const web = await sign.Signer.create(secret);
             const js = await sign.Signer.create(secret, {forceJs: true});
             const long = await sign.Signer.create(secret.repeat(3), {forceJs: true});
             const longWeb = await sign.Signer.create(secret.repeat(3));
             return {
               crc: book.crc32(text), crcEmpty: book.crc32('b:|a:'),
               web: [web.kind, await web.sign('1700000000000', 'POST', '/api/v1/order', '{"market":"SOL_USDC"}')],
               js: [js.kind, await js.sign('1700000000000', 'POST', '/api/v1/order', '{"market":"SOL_USDC"}')],
               longJs: await long.sign('1', 'GET', '/ws'), longWeb: await longWeb.sign('1', 'GET', '/ws'),
               sum: D.add('0.1', '0.2'), mul: D.mul('150.01', '0.333'),
               grid: [D.isMultiple('150.01', '0.01'), D.isMultiple('150.005', '0.01'),
                      D.isMultiple('100000000000000000.01', '0.01')],
               cmp: [D.cmp('9.99', '10'), D.cmp('10.000', '10'),
                     D.cmp('12345678901234567890.5', '12345678901234567890.49')],
             };
           }""",
        [text, secret, message],
    )
    assert got["crc"] == zlib.crc32(text.encode())
    assert got["crcEmpty"] == zlib.crc32(b"b:|a:")
    expected = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert got["web"] == ["webcrypto", expected]
    assert got["js"] == ["js", expected]
    long_expected = hmac.new((secret * 3).encode(), b"1GET/ws", hashlib.sha256).hexdigest()
    assert got["longJs"] == got["longWeb"] == long_expected
    assert got["sum"] == "0.3"
    assert got["mul"] == "49.95333"
    assert got["grid"] == [True, False, True]
    assert got["cmp"] == [-1, 0, 1]

    checks = await page.evaluate(
        """async () => {
             const { validateOrder } = await import('/static/js/validate.js');
             const m = cryptex.state.markets.find(x => x.symbol === 'SOL/USDC');
             const body = (f) => validateOrder(f, m).body;
             const v = (f) => validateOrder(f, m).errors.map(e => e.field);
             const limit = (side, price, quantity, tif, more) =>
               ({side, type: 'limit', price, quantity, timeInForce: tif, ...more});
             const mkt = (side, more) => ({side, type: 'market', timeInForce: 'IOC', ...more});
             return {
               ok: body(limit('buy', '150.01', '1.000', 'GTC')),
               offLot: v(limit('buy', '150', '0.0001', 'GTC')),
               tooSmall: v(limit('buy', '0.01', '1', 'GTC')),
               tooBig: v(mkt('sell', {quantity: '100000.001'})),
               marketGtc: v(mkt('sell', {quantity: '1', timeInForce: 'GTC'})),
               postOnlyIoc: v(limit('buy', '1', '2', 'IOC', {postOnly: true})),
               quote: body(mkt('buy', {amountIn: 'quote', quoteQuantity: '25.5'})),
               quoteDecimals: v(mkt('buy', {amountIn: 'quote', quoteQuantity: '25.0000001'})),
               negative: v(limit('buy', '-1', '1', 'GTC')),
               exponent: v(limit('buy', '1e2', '1', 'GTC')),
             };
           }""")
    assert checks["ok"] == {"market": "SOL/USDC", "side": "buy", "type": "limit", "price": "150.01",
                            "quantity": "1.000", "timeInForce": "GTC"}
    assert checks["offLot"] == ["quantity"]
    assert checks["tooSmall"] == ["quantity"]  # 0.01 x 1 is below the 1 USDC minimum
    assert checks["tooBig"] == ["quantity"]
    assert checks["marketGtc"] == ["timeInForce"]
    assert checks["postOnlyIoc"] == ["postOnly"]
    assert checks["quote"] == {"market": "SOL/USDC", "side": "buy", "type": "market",
                               "timeInForce": "IOC", "quoteQuantity": "25.5"}
    assert checks["quoteDecimals"] == ["quoteQuantity"]
    assert checks["negative"] == ["price"]
    assert checks["exponent"] == ["price"]

    # interval switch: the 5m stream replaces the 1m one; history missing or not, the page says so
    await page.click('label[for="interval-5m"]')
    await expect_subscriptions(page, "kline_5m@SOL/USDC", "kline_1m@SOL/USDC")
    # with the history route missing (404) or PostgreSQL away (503) the page says so in words
    await page.wait_for_function(
        "!document.getElementById('chart-note').textContent.startsWith('Loading')")
    note = await page.locator("#chart-note").inner_text()
    assert "5m candles" in note or "unavailable" in note or "No 5m candle history" in note, note
    await page.wait_for_function("Number(document.getElementById('chart').dataset.candles) >= 1")
    await page.screenshot(path=str(artifacts / "08-interval-5m.png"), full_page=True)

    # another market: its streams replace the old ones and its book and rules show
    await page.select_option("#market", "BTC/USDC")
    await expect_subscriptions(page, "depth@BTC/USDC", "depth@SOL/USDC")
    await expect_subscriptions(page, "kline_5m@BTC/USDC", "kline_5m@SOL/USDC")
    await wait_book_live(page)
    assert Decimal(await page.locator("#bids tbody tr").first.get_attribute("data-price") or 0) > 1000
    await expect(page.locator("#rules")).to_contain_text("quantity step 0.00001 BTC")
    await page.screenshot(path=str(artifacts / "09-btc-market.png"), full_page=True)
    assert page_errors == []
    await page.close()


async def expect_subscriptions(page: Any, present: str, absent: str) -> None:
    for _ in range(100):
        subs = await page.evaluate("() => cryptex.ws.request('LIST_SUBSCRIPTIONS')")
        if present in subs and absent not in subs:
            return
        await page.wait_for_timeout(100)
    raise AssertionError(f"subscriptions: {subs}")
