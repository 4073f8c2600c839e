"""The order book of one market: price levels with FIFO queues. Pure data, no I/O.

Invariants (kept by every method here, relied on by `matching`):
- a side holds one `PriceLevel` per price that has at least one resting order; an empty
  level is removed at once, so `best_price()` is always a price with liquidity;
- `BookSide.keys` is sorted ascending with the best price at the END (bids store the price,
  asks store minus the price), so reading or popping the best level is O(1);
- a level's `orders` dict is its FIFO queue: insertion order is arrival order (dicts keep
  insertion order), and a cancel is an O(1) `del`;
- `level.total_lots` is the sum of `remaining_lots` of its orders;
- `OrderBook.orders` holds every resting order in arrival order (the snapshot order), and
  `OrderBook.by_user` the same orders per user, also in arrival order;
- a resting order is always a GTC limit order with `remaining_lots > 0`.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator


class Order:
    """An order the engine is working on: the taker while it matches, then a resting order."""

    __slots__ = (
        "client_order_id",
        "executed_lots",
        "executed_quote_units",
        "is_buy",
        "locked_remaining",  # units still locked for this order (quote if buy, base if sell)
        "order_id",
        "price_ticks",  # limit price; None for a market order (never rests)
        "quantity_lots",
        "remaining_lots",
        "user_id",
    )

    def __init__(
        self,
        order_id: int,
        user_id: str,
        is_buy: bool,
        price_ticks: int | None,
        quantity_lots: int,
        locked_remaining: int,
        client_order_id: str | None = None,
    ) -> None:
        self.order_id = order_id
        self.user_id = user_id
        self.is_buy = is_buy
        self.price_ticks = price_ticks
        self.quantity_lots = quantity_lots
        self.remaining_lots = quantity_lots
        self.executed_lots = 0
        self.executed_quote_units = 0
        self.locked_remaining = locked_remaining
        self.client_order_id = client_order_id


class PriceLevel:
    __slots__ = ("orders", "price_ticks", "total_lots")

    def __init__(self, price_ticks: int) -> None:
        self.price_ticks = price_ticks
        self.total_lots = 0
        self.orders: dict[int, Order] = {}


class BookSide:
    """One side of the book. `keys` is ascending with the best price last (see module doc)."""

    __slots__ = ("is_buy", "keys", "levels")

    def __init__(self, is_buy: bool) -> None:
        self.is_buy = is_buy
        self.levels: dict[int, PriceLevel] = {}
        self.keys: list[int] = []

    def key_of(self, price_ticks: int) -> int:
        return price_ticks if self.is_buy else -price_ticks

    def best_price(self) -> int | None:
        keys = self.keys
        if not keys:
            return None
        return keys[-1] if self.is_buy else -keys[-1]

    def level_for_insert(self, price_ticks: int) -> PriceLevel:
        """The level at this price, created (and indexed) when it does not exist yet."""
        level = self.levels.get(price_ticks)
        if level is None:
            level = PriceLevel(price_ticks)
            self.levels[price_ticks] = level
            insort(self.keys, price_ticks if self.is_buy else -price_ticks)
        return level

    def drop_level(self, price_ticks: int) -> None:
        """Forget an empty level. The best level is the last key, so it is popped in O(1)."""
        del self.levels[price_ticks]
        keys = self.keys
        key = price_ticks if self.is_buy else -price_ticks
        if keys[-1] == key:
            keys.pop()
        else:
            del keys[bisect_left(keys, key)]

    def levels_best_first(self) -> Iterator[PriceLevel]:
        levels = self.levels
        sign = 1 if self.is_buy else -1
        for key in reversed(self.keys):
            yield levels[sign * key]

    def depth(self, limit: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for level in self.levels_best_first():
            if len(out) >= limit:
                break
            out.append((level.price_ticks, level.total_lots))
        return out


class OrderBook:
    __slots__ = ("asks", "bids", "by_user", "orders")

    def __init__(self) -> None:
        self.bids = BookSide(is_buy=True)
        self.asks = BookSide(is_buy=False)
        self.orders: dict[int, Order] = {}  # every resting order, arrival order
        self.by_user: dict[str, dict[int, Order]] = {}

    def side(self, is_buy: bool) -> BookSide:
        return self.bids if is_buy else self.asks

    def rest(self, order: Order) -> PriceLevel:
        """Append an order to the back of its level's queue. Returns the level."""
        assert order.price_ticks is not None and order.remaining_lots > 0
        level = (self.bids if order.is_buy else self.asks).level_for_insert(order.price_ticks)
        level.orders[order.order_id] = order
        level.total_lots += order.remaining_lots
        self.orders[order.order_id] = order
        mine = self.by_user.get(order.user_id)
        if mine is None:
            self.by_user[order.user_id] = {order.order_id: order}
        else:
            mine[order.order_id] = order
        return level

    def unindex(self, order: Order) -> None:
        """Remove an order from the id and user indexes (not from its level)."""
        del self.orders[order.order_id]
        mine = self.by_user[order.user_id]
        del mine[order.order_id]
        if not mine:
            del self.by_user[order.user_id]

    def remove(self, order: Order) -> PriceLevel:
        """Take a resting order out of the book (cancel, STP). Returns its level, which may
        now be empty and already dropped from the side."""
        side = self.bids if order.is_buy else self.asks
        level = side.levels[order.price_ticks]  # type: ignore[index]
        del level.orders[order.order_id]
        level.total_lots -= order.remaining_lots
        if not level.orders:
            side.drop_level(level.price_ticks)
        self.unindex(order)
        return level
