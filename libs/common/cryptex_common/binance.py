"""Names the Binance-compatible facade shares between the API (REST, `/api/v3`) and the
gateway (WebSocket, `/binance`), defined once.

A Binance symbol is the Cryptex symbol without its separator: `SOL/USDC` <-> `SOLUSDC`.
Which split is meant is decided by the registered markets, never by guessing where the
base asset ends, so `binance_symbol` is total and `cryptex_symbol` needs the registry's
symbols.

A listen key (`POST /api/v3/userDataStream`) names one user's private stream for the
gateway's `/binance/ws/<listenKey>`: Redis string `keys.listen_key(key)` holds the user id
and expires `LISTEN_KEY_TTL_S` after its last keep-alive (`PUT`), as on Binance.
"""

from __future__ import annotations

from collections.abc import Iterable

LISTEN_KEY_TTL_S = 3600
LISTEN_KEY_BYTES = 32  # secrets.token_hex(32): a 64-character key, like Binance's


def binance_symbol(symbol: str) -> str:
    """`SOL/USDC` -> `SOLUSDC`."""
    return symbol.replace("/", "")


def cryptex_symbol(binance: str, symbols: Iterable[str]) -> str | None:
    """`SOLUSDC` (any case) -> `SOL/USDC` when that market is among `symbols`, else None."""
    wanted = binance.upper()
    for symbol in symbols:
        if binance_symbol(symbol) == wanted:
            return symbol
    return None
