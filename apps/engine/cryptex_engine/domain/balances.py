"""The settlement fold of the matching core: fills and lock releases in, balance changes out.

Pure and stateless: `fold_balances` reads only its arguments. A match walk (execution.py)
decides what trades and which locks are freed; this module turns that into the per
(user, asset) changes of available and locked balance that the settle script applies.

Rules (matching.py states the invariants they keep):
- the taker buys: its quote lock gives up `consumed` (what it locked for the executed lots
  at its own limit, or the exact cost of a market buy), of which the part above the trade
  cost (price improvement) returns to available; it receives base minus the buyer fee;
- the taker sells: its base lock gives up the base sold; it receives quote minus the
  seller fee;
- each maker gives up from its lock what its fill delivers (base when it sells, quote when
  it buys, at its own price) and receives the other asset minus its fee;
- a released lock moves from locked back to available; fees go to the fee account;
- entries are listed in first-touch order (the taker's quote and base first, then makers in
  fill order, the fee account last), and entries that net to zero are dropped.
"""

from __future__ import annotations

from cryptex_engine.domain.commands import BalanceDelta, Fill

# (user id, units): a lock freed during a walk, in the lock asset of the makers' side (base
# when the taker buys, quote when it sells): what a filled maker locked beyond its fills, or
# what an order of the taker's own user expired by STP held. Either user already has that
# entry (the maker from its fill, the taker from the start), so releases apply after the
# fills without changing the first-touch order.
Release = tuple[str, int]


def fold_balances(fills: list[Fill], releases: list[Release], taker_user: str, taker_buys: bool,
                  taker_consumed: int, taker_release: int, base_asset: str, quote_asset: str,
                  fee_account: str) -> list[BalanceDelta]:
    """The balance changes of one taker's walk (rules: the module doc). `taker_consumed`:
    what its fills used of its lock; `taker_release`: what it frees of the rest."""
    taker_quote = BalanceDelta(taker_user, quote_asset, 0, 0)
    taker_base = BalanceDelta(taker_user, base_asset, 0, 0)
    # the entries accumulate in place; first-touch order (dicts keep insertion order)
    deltas = {(taker_user, quote_asset): taker_quote, (taker_user, base_asset): taker_base}
    get = deltas.get
    lock_asset, gain_asset = (base_asset, quote_asset) if taker_buys else (quote_asset, base_asset)
    fee_base = fee_quote = executed_base = executed_quote = 0
    for fill in fills:
        base_units = fill.base_units
        quote_units = fill.quote_units
        buyer_fee = fill.buyer_fee_units
        seller_fee = fill.seller_fee_units
        executed_base += base_units
        executed_quote += quote_units
        fee_base += buyer_fee
        fee_quote += seller_fee
        # the maker sells (the taker buys): base leaves its lock, quote in; or the reverse
        given = base_units if taker_buys else quote_units
        gained = quote_units - seller_fee if taker_buys else base_units - buyer_fee
        maker = fill.maker_user_id
        entry = get((maker, lock_asset))
        if entry is None:
            deltas[(maker, lock_asset)] = BalanceDelta(maker, lock_asset, 0, -given)
        else:
            entry.locked -= given
        entry = get((maker, gain_asset))
        if entry is None:
            deltas[(maker, gain_asset)] = BalanceDelta(maker, gain_asset, gained, 0)
        else:
            entry.available += gained
    for user_id, units in releases:
        entry = get((user_id, lock_asset))
        if entry is None:  # (never: see Release)
            deltas[(user_id, lock_asset)] = BalanceDelta(user_id, lock_asset, units, -units)
        else:
            entry.available += units
            entry.locked -= units

    if taker_buys:
        taker_quote.available += taker_consumed - executed_quote + taker_release
        taker_quote.locked -= taker_consumed + taker_release
        taker_base.available += executed_base - fee_base
    else:
        taker_base.available += taker_release
        taker_base.locked -= taker_consumed + taker_release
        taker_quote.available += executed_quote - fee_quote
    # the fee account last
    for asset, fee in ((base_asset, fee_base), (quote_asset, fee_quote)):
        entry = get((fee_account, asset)) if fee else None
        if entry is not None:
            entry.available += fee
        elif fee:
            deltas[(fee_account, asset)] = BalanceDelta(fee_account, asset, fee, 0)
    changes = []  # (a loop, not a comprehension: one frame less on every taker)
    for d in deltas.values():
        if d.available or d.locked:
            changes.append(d)
    return changes
