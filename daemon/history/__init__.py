"""Repairing the past: freqtrade files, derivation from the base timeframe, the exchange over ccxt."""
