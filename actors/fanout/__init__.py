"""The fan-out actor: durable candles and forming candles to WebSocket subscribers (docs/protocol.md).

Each subscription (one connection, one series) has one ``last_sent`` cursor, and every closed candle it
receives passes :func:`protocol.ws_market.gate` against it. Catchup, healing and live share that gate:

- The live path is synchronous and never blocks. A publish is encoded once and its frames are shared by
  every subscriber for whom it passes whole (the common case: the next candle after the cursor).
- Anything that needs the log (a catchup, healing a hole before a live candle) makes the subscription
  *busy*: live publishes for it queue in its ``pending`` list, and a worker task does the I/O, then
  drains ``pending`` through the same gate, in order. So a catchup/live race can neither duplicate nor
  reorder a candle.
- Each connection has a bounded outbox. A live frame that finds it full (or too many pending publishes)
  marks the connection a slow consumer: it gets ``slow_consumer`` and is closed; nobody else waits.

Modules: :mod:`.hub` (subscriptions by series, publish, forming), :mod:`.delivery` (the cursor gate and
its catchup/heal workers), :mod:`.connection` (the bounded outbox), :mod:`.frames` (encoding shared by
subscribers), :mod:`.stats` (counters).
"""
