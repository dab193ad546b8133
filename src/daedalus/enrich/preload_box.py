"""The PreloadBox: hands a day's preloaded vectors (object refs) to that day's Ray actors.

Its own module, importing nothing heavy: the box runs in a worker process of its own,
which then boots on `import ray` alone (with `daedalus.enrich.stage` it also imported numpy,
pyarrow, pydantic and Lance, ~0.5 CPU-s more on every process start of Ray).
"""

from __future__ import annotations

import threading


class PreloadBox:
    """Hands a day's preloaded vectors (object refs) to that day's actors. The driver starts
    the Ray Data plan while it is still loading them, so Ray Data boots the actor pool and
    starts reading meanwhile, and each actor's constructor waits here for them instead of the
    whole plan waiting for the preload. A failed preload hands over its error message."""

    def __init__(self):
        self._lock = threading.Lock()
        self._days: dict[str, tuple[threading.Event, list]] = {}

    def _slot(self, key: str) -> tuple[threading.Event, list]:
        with self._lock:
            return self._days.setdefault(key, (threading.Event(), []))

    def put(self, key: str, value: dict | str) -> None:
        ready, held = self._slot(key)
        held.append(value)
        ready.set()

    def get(self, key: str) -> dict | str:
        ready, held = self._slot(key)
        ready.wait()
        return held[0]

    def drop(self, key: str) -> None:
        """Forget the day's vectors; an actor that asks after this gets an error, not a wait."""
        over = threading.Event()
        over.set()
        with self._lock:
            self._days[key] = (over, [f"{key}: the day's plan is over"])
