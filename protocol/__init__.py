"""klined's pure core: series ids, timeframes, candles, Binance payloads, aggregation, codecs.

Nothing here does I/O, imports trio or lmdb, or reads a clock: time always comes in as an argument.
"""
