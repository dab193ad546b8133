"""`DateOrder`: concurrent days take the one serial step, qid assignment, strictly in date order.

`assign_qid` appends to `qid_map.parquet`, so the qids a day gets depend on every earlier day
having taken its turn; with it the output of `--day-workers N` is the output of N = 1.
"""

from __future__ import annotations

import threading


class Abandoned(Exception):
    """An earlier day failed; this one stops before touching the qid map."""


class DateOrder:
    """Turn `i` opens once turns 0..i-1 have passed; a failure releases every waiter."""

    def __init__(self, count: int):
        self._passed = [False] * count
        self._failed = False
        self._cond = threading.Condition()

    def wait_turn(self, i: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._failed or all(self._passed[:i]))
            if self._failed:
                raise Abandoned()

    def pass_turn(self, i: int) -> None:
        with self._cond:
            self._passed[i] = True
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()
