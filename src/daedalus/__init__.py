"""Daedalus: point-in-time-correct training data, one day at a time."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("daedalus")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
