"""Factor plugins over closed candles (FACTORS.md): the framework in base, one module per factor."""
