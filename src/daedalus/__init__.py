"""Daedalus: point-in-time-correct training data."""
