"""Outgoing data messages: built and encoded once per upstream event, queued on every
subscriber through `fanout.Hub`, counted per stream type.

Invariants:
- a frame is encoded once, whatever the number of subscribers, and nothing is encoded for a
  topic nobody follows;
- every stream type in `STREAM_TYPES` has its metric series from construction on (zero
  before the first message, subscription or error);
- a tap (`taps[topic]`, e.g. the Binance facade's translator) sees every message published on
  its topic, after the topic's own subscribers got it; a tap that raises loses only its copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

import cryptex_common.metrics as metrics
from cryptex_wsgateway.fanout import Hub
from cryptex_wsgateway.protocol import data_message, encode_text_frame
from cryptex_wsgateway.streams import PRIVATE_STREAMS
from cryptex_wsgateway.subscriptions import Subscriptions, stream_of_topic

log = logging.getLogger("cryptex_wsgateway.gateway")
STREAM_TYPES = ("depth", "trades", "ticker", "bookTicker", "kline", *PRIVATE_STREAMS)


def now_ms() -> int:
    return int(time.time() * 1000)


def stream_type(topic: str) -> str:
    """The metric label of a topic: its channel, every `kline_<interval>` counted as `kline`."""
    name = stream_of_topic(topic)
    channel = name.partition("@")[0]
    return "kline" if channel.startswith("kline_") else channel


def raw_message(stream: str, raw: bytes) -> bytes:
    """A data message around an upstream JSON payload, used as it is (not decoded)."""
    return b'{"stream":' + orjson.dumps(stream) + b',"data":' + raw + b"}"


class Publisher:
    """Fans data messages out to a topic's subscribers (`Subscriptions` -> `Hub`)."""

    def __init__(self, subs: Subscriptions, hub: Hub) -> None:
        self.subs = subs
        self.hub = hub
        # topic -> called with each payload published on it (decoded data, or the raw bytes
        # of publish_raw), whoever subscribes: how other protocols follow the same topics
        self.taps: dict[str, Callable[[Any], None]] = {}
        self._sent = {t: metrics.WS_MESSAGES_SENT.labels(t) for t in STREAM_TYPES}
        self._delay = {t: metrics.WS_FANOUT_DELAY.labels(t) for t in STREAM_TYPES}
        for t in STREAM_TYPES:  # zero series before the first subscription / error
            metrics.WS_SUBSCRIPTIONS.labels(t)

    def wanted(self, topic: str) -> bool:
        """Whether anything follows `topic`: a subscriber or a tap."""
        return bool(self.subs.subscribers(topic)) or topic in self.taps

    def publish(self, topic: str, kind: str, data: Any, ts: int | None = None) -> None:
        conns = self.subs.subscribers(topic)
        if conns:
            frame = encode_text_frame(data_message(stream_of_topic(topic), data))
            self._broadcast(conns, frame, kind, ts)
        if self.taps:
            self._tap(topic, data)

    def publish_raw(self, stream: str, kind: str, raw: bytes, ts: int | None) -> None:
        """Forward an upstream JSON payload as it is, without decoding and encoding it."""
        conns = self.subs.subscribers(stream)
        if conns:
            self._broadcast(conns, encode_text_frame(raw_message(stream, raw)), kind, ts)
        if self.taps:
            self._tap(stream, raw)

    def _tap(self, topic: str, payload: Any) -> None:
        tap = self.taps.get(topic)
        if tap is None:
            return
        try:
            tap(payload)
        except Exception:
            log.exception("tap failed", extra={"topic": topic})

    def _broadcast(self, conns: Iterable[Any], frame: bytes, kind: str, ts: int | None) -> None:
        sent = self.hub.broadcast(conns, frame)
        self._sent[kind].inc(sent)
        if ts:
            self._delay[kind].observe(max(0, now_ms() - ts) / 1000)


def count_subscriptions(topics: Iterable[str], delta: int) -> None:
    """Move the WS_SUBSCRIPTIONS gauge of each topic's stream type by `delta` (+1/-1)."""
    for topic in topics:
        gauge = metrics.WS_SUBSCRIPTIONS.labels(stream_type(topic))
        if delta > 0:
            gauge.inc(delta)
        else:
            gauge.dec(-delta)
