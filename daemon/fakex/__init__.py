"""A fake Binance exchange (WebSocket kline streams + REST) on loopback, speaking the real formats.

klined's tests, benchmarks and demos talk to it: there is no exchange on this network.
"""
