"""Market data of one market, built from each settled batch: replies, the depth diff, the
REST depth book, the book ticker, public trades, private user updates, the 24 h ticker.
The public payloads' shapes are `cryptex_common.market_data`'s.

A batch's market data travels in its step A (`MarketDataWrite`), its private updates in
its bucket calls and its replies right after them (settle_calls.py), so each is written and
published only once the batch is recorded and applied.

Invariants:
- The depth diff of a batch holds, per changed level, its absolute total after the batch
  (0 = gone); `U`..`u` are the batch's first and last seq (gap-free across batches).
- The REST book (`keys.depth_keys`) is written with every batch that changed a level, like
  the diff, so its `lastUpdateId` never lags a published diff; only the changed levels are
  written (their count, not the book's size, is the cost). After a snapshot load or a
  replay the next settled batch replaces the stored book whole (`rewrite_book`).
- Private updates go only to users whose subscription their bucket's call finds live. The
  engine formats them up front for users it has seen subscribed; a user the script reports
  subscribed for whom nothing was sent (just subscribed) gets them right after, before the
  next batch.
- Amount strings are exactly `WireFormat`'s (integer arithmetic, cached per price).
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from cryptex_common import keys
from cryptex_common import market_data as payloads
from cryptex_common.keys import FEE_ACCOUNT
from cryptex_common.ledger import MarketDataWrite, Payload
from cryptex_common.markets import MarketSpec
from cryptex_common.messages import Side
from cryptex_common.wire import WireFormat, fill_dicts
from cryptex_engine.domain.book import BookSide
from cryptex_engine.domain.commands import CommandResult
from cryptex_engine.domain.matching import MatchingEngine
from cryptex_engine.domain.ticker import RollingTicker
from cryptex_engine.settings import EngineSettings
from cryptex_engine.translate import BatchOutput, Record

PRICE_CACHE_MAX = 100_000  # formatted prices kept; the cache starts over beyond this


class MarketData:
    """The market-data builder an EngineService owns."""

    def __init__(self, spec: MarketSpec, settings: EngineSettings) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.settings = settings
        self.fmt = WireFormat(spec)
        self.ticker = RollingTicker()
        self.ticker_dirty = False
        self._prices: dict[int, str] = {}
        self._last_top: tuple[Any, Any] = (None, None)
        self.rewrite_book = True  # the stored book may differ from the core's: send it whole
        self.subscribers: set[str] = set()  # users last seen with a live private subscription
        self._channels = (keys.depth_channel(self.symbol), keys.book_ticker_channel(self.symbol),
                          keys.trades_channel(self.symbol))

    def price_text(self, ticks: int) -> str:
        text = self._prices.get(ticks)
        if text is None:
            if len(self._prices) >= PRICE_CACHE_MAX:
                self._prices.clear()
            text = self._prices[ticks] = self.fmt.price_text(ticks)
        return text

    def invalidate(self) -> None:
        """The book changed without this builder seeing it (a snapshot was loaded, settled
        commands were replayed): the next settled batch replaces the stored book whole."""
        self.rewrite_book = True

    # --- one batch ---------------------------------------------------------------------
    def build(self, core: MatchingEngine, out: BatchOutput, results: list[CommandResult],
              first_seq: int, last_seq: int, ts_ms: int) -> MarketDataWrite:
        """The writes and publishes of one batch (only the results with seq >= first_seq)."""
        levels: dict[tuple[Side, int], int] = {}
        for r in results:
            if r.seq >= first_seq:
                for side, price, qty in r.depth_changes:
                    levels[(side, price)] = qty
        publishes: list[tuple[str, Payload]] = []
        ptext, qtext = self.price_text, self.fmt.quantity_text
        diff = payloads.depth_diff(
            self.symbol, first_seq, last_seq,
            [[ptext(p), qtext(q)] for (s, p), q in levels.items() if s is Side.BUY],
            [[ptext(p), qtext(q)] for (s, p), q in levels.items() if s is Side.SELL],
            ts_ms)
        publishes.append((self._channels[0], orjson.dumps(diff)))
        header, stored, replace = None, [], self.rewrite_book
        if replace:
            stored = self._whole_book(core)
            self.rewrite_book = False
        else:
            stored = [("b" if s is Side.BUY else "a", p, f"{ptext(p)} {qtext(q)}" if q else "")
                      for (s, p), q in levels.items()]
        if stored or replace:
            header = orjson.dumps(payloads.depth_header(self.symbol, last_seq, ts_ms))
            self._book_ticker(core, last_seq, ts_ms, publishes)
        trades: list[Payload] = []
        if out.trades:
            trades = self._public_trades(out.trades)
            publishes.append((self._channels[2], b"[" + b",".join(trades) + b"]"))  # type: ignore[arg-type]
        return MarketDataWrite(self.symbol, header, stored, replace, self.settings.recent_trades, trades, publishes)

    def _whole_book(self, core: MatchingEngine) -> list[tuple[str, int, str]]:
        """Every level of the core's book, as the stored book's entries."""
        ptext, qtext = self.price_text, self.fmt.quantity_text
        return [(tag, price, f"{ptext(price)} {qtext(level.total_lots)}")
                for tag, side in (("b", core.book.bids), ("a", core.book.asks))
                for price, level in side.levels.items()]

    def _book_ticker(self, core: MatchingEngine, last_seq: int, ts_ms: int,
                     publishes: list[tuple[str, Payload]]) -> None:
        """The book ticker, published when the best bid or ask (price or quantity) moved."""
        top = (self._best(core.book.bids), self._best(core.book.asks))
        if top == self._last_top:
            return
        self._last_top = top
        bid, ask = top
        publishes.append((self._channels[1], orjson.dumps(payloads.book_ticker(
            self.symbol, [self.price_text(bid[0]), self.fmt.quantity_text(bid[1])] if bid else None,
            [self.price_text(ask[0]), self.fmt.quantity_text(ask[1])] if ask else None, last_seq, ts_ms))))

    @staticmethod
    def _best(side: BookSide) -> tuple[int, int] | None:
        price = side.best_price()
        return None if price is None else (price, side.levels[price].total_lots)

    @staticmethod
    def replies(out: BatchOutput) -> list[tuple[str, Payload]]:
        """One JSON array per reply channel (REPLY_BATCH_ADAPTER), channels in first-use order."""
        by_channel: dict[str, list[Record]] = {}
        for channel, reply in out.replies:
            group = by_channel.get(channel)
            if group is None:
                by_channel[channel] = [reply]
            else:
                group.append(reply)
        return [(channel, orjson.dumps(replies)) for channel, replies in by_channel.items()]

    def _public_trades(self, trades: list[Record]) -> list[Payload]:
        ptext, fmt, symbol = self.price_text, self.fmt, self.symbol
        return [orjson.dumps(payloads.public_trade(
            t["tradeId"], symbol, ptext(t["priceTicks"]), fmt.quantity_text(t["quantityLots"]),
            fmt.quote_text(t["quoteUnits"]), t["takerSide"], t["tsMs"], t["seq"],
        )) for t in trades]

    # --- private updates ---------------------------------------------------------------
    @staticmethod
    def touched_users(out: BatchOutput, results: list[CommandResult], first_seq: int) -> list[str]:
        """Every user whose orders, fills or balances the unsettled part of the batch changed
        (the fee account is nobody's socket)."""
        users: dict[str, None] = {rec["userId"]: None for rec in out.orders.values()}
        for t in out.trades:
            users[t["buyUserId"]] = None
            users[t["sellUserId"]] = None
        for r in results:
            if r.seq >= first_seq:
                for d in r.balance_deltas:
                    users[d.user_id] = None
        users.pop(FEE_ACCOUNT, None)
        return list(users)

    def user_messages(self, out: BatchOutput, results: list[CommandResult], first_seq: int,
                      wanted: set[str] | frozenset[str]) -> list[tuple[str, str, list[Payload]]]:
        """(user, channel, messages) for each wanted user: their orders, fills, then one
        balance hint naming the assets that changed."""
        per_user: dict[str, list[Payload]] = {}
        fmt = self.fmt
        for rec in out.orders.values():
            if rec["userId"] in wanted:
                per_user.setdefault(rec["userId"], []).append(
                    orjson.dumps({"type": "order", "data": fmt.order_dict(rec)}))
        base, quote = self.spec.base_asset, self.spec.quote_asset
        for t in out.trades:
            for f in fill_dicts(t, base, quote):
                if f["userId"] in wanted:
                    per_user.setdefault(f["userId"], []).append(
                        orjson.dumps({"type": "fill", "data": fmt.fill_dict(f)}))
        touched: dict[str, set[str]] = {}
        for r in results:
            if r.seq >= first_seq:
                for d in r.balance_deltas:
                    if d.user_id in wanted:
                        touched.setdefault(d.user_id, set()).add(d.asset)
        for user_id, assets in touched.items():
            per_user.setdefault(user_id, []).append(
                orjson.dumps({"type": "balance", "data": {"assets": sorted(assets)}}))
        return [(u, keys.user_channel(u), msgs) for u, msgs in per_user.items()]

    def learn_subscribers(self, touched: list[str], subscribed: frozenset[str]) -> set[str]:
        """Update the users known subscribed from the settle script's answer; returns the
        subscribed users that got nothing in the script call (to be sent now)."""
        sent_to = self.subscribers.intersection(touched)
        self.subscribers.difference_update(touched)
        self.subscribers.update(subscribed)
        return set(subscribed) - sent_to

    async def publish_late(self, redis: Redis, messages: list[tuple[str, str, list[Payload]]]) -> None:
        """Publish one by one (rare: users who just subscribed); a Redis Cluster client
        refuses PUBLISH in a pipeline."""
        for _, channel, msgs in messages:
            for msg in msgs:
                await redis.publish(channel, msg)

    # --- the 24 h ticker ---------------------------------------------------------------
    def add_trades(self, ts_ms: int, result: CommandResult) -> None:
        for f in result.fills:
            self.ticker.add_trade(ts_ms, f.price_ticks, f.quantity_lots, f.quote_units)
        self.ticker_dirty = True

    async def publish_ticker(self, redis: Redis, core: MatchingEngine, now_ms: int) -> None:
        if not self.ticker_dirty:
            return
        self.ticker_dirty = False
        v = self.ticker.view(now_ms)
        fmt = self.fmt
        change_pct = None
        if v.open_ticks and v.last_ticks is not None:
            # percentage with 2 decimals, exact: integer arithmetic on ticks
            change_pct = f"{(v.last_ticks - v.open_ticks) * 10000 // v.open_ticks / 100:.2f}"
        body = orjson.dumps(payloads.ticker(
            self.symbol,
            open_=fmt.price(v.open_ticks), high=fmt.price(v.high_ticks),
            low=fmt.price(v.low_ticks), last=fmt.price(v.last_ticks),
            volume=fmt.quantity(v.volume_lots), quote_volume=fmt.quote(v.quote_units),
            change_percent=change_pct, count=v.count,
            best_bid=fmt.price(core.best_bid()), best_ask=fmt.price(core.best_ask()),
            open_time_ms=v.open_time_ms, close_time_ms=v.close_time_ms, ts_ms=now_ms,
        ))
        # two round trips once per ticker interval: a Redis Cluster client refuses PUBLISH
        # in a pipeline
        await redis.set(keys.ticker_key(self.symbol), body)
        await redis.publish(keys.ticker_channel(self.symbol), body)
