"""The WebSocket gateway: `/ws` market data and private updates, fanned out from Redis pub/sub.

Pure domain modules (no I/O): `streams` (stream names), `subscriptions` (who follows what),
`book` (local order book, sequence and checksum), `klines` (candles from trades), `protocol`
(control messages, rate limit, frame encoding). Adapters: `fanout` (per-socket send queues),
`publisher` (encode once, fan out), `upstream` (the Redis pub/sub connection), `market_data`
(market handlers, depth resyncs, candles), `private` (followed users, their registration,
private events), `frames` (inbound frame limits and closing a socket, for every protocol),
`sessions` (the native per-socket protocol), `binance` (the Binance-compatible facade over the
same topics), `gateway` (owns and wires them: aiohttp + Redis), `__main__` (process entry).
"""
