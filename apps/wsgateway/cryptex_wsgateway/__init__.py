"""The WebSocket gateway: `/ws` market data and private updates, fanned out from Redis pub/sub.

Pure domain modules (no I/O): `streams` (stream names), `subscriptions` (who follows what),
`book` (local order book, sequence and checksum), `klines` (candles from trades), `protocol`
(control messages, rate limit, frame encoding). Adapters: `fanout` (per-socket send queues),
`gateway` (aiohttp + Redis), `__main__` (process entry).
"""
