"""The hub's counters, apart so the connections, the live path and the workers can all count into them."""

from __future__ import annotations

import attrs


@attrs.define
class FanOutStats:
    subscriptions: int = 0
    publishes: int = 0
    frames_shared: int = 0
    frames_custom: int = 0
    catchups: int = 0
    heals: int = 0
    healed_candles: int = 0
    slow_consumers: int = 0
    forming_sent: int = 0
