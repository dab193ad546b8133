"""Named crash points, so reliability tests can kill a run exactly where it hurts.

A test sets `DAEDALUS_TEST_CRASH_AT=<point>[@<n>]` to SIGKILL the process the n-th
time (default: the first) it passes `<point>`, or `DAEDALUS_TEST_PAUSE_AT=...` to
SIGSTOP it there, holding its locks, until the test sends SIGCONT. Unset, a crash
point costs two environment lookups. The points:

- `skeleton.before_publish`: a skeleton day is fully written in its staging folder.
- `qid.before_replace`: the grown qid map is written to its temp file, not yet renamed.
- `days.after_exchange`: a recomputed day replaced the old one, which waits in staging.
- `days.after_retire`: a day that has no rows any more was renamed out of sight, not yet deleted.
- `days.after_publish`: a day (skeleton or enriched) was just published: between days.
- `enrich.before_publish`: an enriched day is fully written in its staging folder.
- `store.after_first_batch`: Lance has taken the first batch of a store build.
- `store.before_publish`: the store is built and indexed beside its final path.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

CRASH_ENV = "DAEDALUS_TEST_CRASH_AT"
PAUSE_ENV = "DAEDALUS_TEST_PAUSE_AT"

_passes: Counter[str] = Counter()
_mutex = threading.Lock()


def crash_point(name: str) -> None:
    """SIGKILL (or SIGSTOP) this process here if a test asked for it."""
    for env, sig in ((CRASH_ENV, signal.SIGKILL), (PAUSE_ENV, signal.SIGSTOP)):
        spec = os.environ.get(env)
        if not spec:
            continue
        point, _, nth = spec.partition("@")
        if point != name:
            continue
        with _mutex:
            _passes[env] += 1
            hit = _passes[env] == int(nth or 1)
        if hit:
            os.kill(os.getpid(), sig)
