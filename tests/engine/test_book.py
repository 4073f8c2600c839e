"""The order book's own invariants: best price at the end of the keys, FIFO levels, indexes."""

from __future__ import annotations

from cryptex_engine.domain.book import Order, OrderBook


def order(oid: int, user: str, is_buy: bool, price: int, lots: int) -> Order:
    return Order(oid, user, is_buy, price, lots, locked_remaining=0)


def test_best_prices_are_the_highest_bid_and_the_lowest_ask():
    book = OrderBook()
    for oid, (is_buy, price) in enumerate(
        [(True, 99), (True, 101), (True, 100), (False, 105), (False, 103), (False, 104)], start=1
    ):
        book.rest(order(oid, "u", is_buy, price, 1))
    assert book.bids.best_price() == 101 and book.asks.best_price() == 103
    assert [lv.price_ticks for lv in book.bids.levels_best_first()] == [101, 100, 99]
    assert [lv.price_ticks for lv in book.asks.levels_best_first()] == [103, 104, 105]
    assert book.bids.depth(2) == [(101, 1), (100, 1)]


def test_a_level_is_a_fifo_queue_and_disappears_when_empty():
    book = OrderBook()
    a, b, c = order(1, "x", False, 100, 2), order(2, "y", False, 100, 3), order(3, "x", False, 101, 1)
    for o in (a, b, c):
        book.rest(o)
    assert list(book.asks.levels[100].orders) == [1, 2]
    assert book.asks.levels[100].total_lots == 5
    book.remove(a)
    assert list(book.asks.levels[100].orders) == [2] and book.asks.levels[100].total_lots == 3
    book.remove(b)
    assert 100 not in book.asks.levels and book.asks.best_price() == 101
    assert list(book.by_user) == ["x"] and list(book.orders) == [3]
    book.remove(c)
    assert book.asks.best_price() is None and book.by_user == {} and book.orders == {}


def test_dropping_a_level_that_is_not_the_best_keeps_the_keys_sorted():
    book = OrderBook()
    for oid, price in enumerate([100, 98, 99, 97], start=1):
        book.rest(order(oid, "u", True, price, 1))
    book.remove(book.orders[3])  # 99: in the middle
    assert book.bids.keys == [97, 98, 100]
    assert book.bids.best_price() == 100
