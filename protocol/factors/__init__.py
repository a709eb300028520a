"""Factor plugins over closed candles (docs/factors.md): the framework in base, one module per factor."""
