"""Scratch folders that a killed run cannot leak.

A stage's scratch folder (DuckDB stage files, a store's build folder) holds an
flock on its `.held` file for as long as it is in use. Whoever opens the next
scratch folder in the same parent removes every folder whose `.held` nobody
holds: its owner died (SIGKILL, OOM, power) before it could clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

HELD = ".held"
_NEW = ".new-"


@contextlib.contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    """Create `path`, held for the duration of the block, then remove it.

    The folder is made and locked under a temporary name and only then renamed to
    `path`, so a sweeper never meets a scratch folder that is not yet held.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_scratch(path.parent)
    fresh = path.with_name(f"{_NEW}{uuid.uuid4().hex[:8]}-{path.name}")
    fresh.mkdir()
    fd = os.open(fresh / HELD, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fresh.rename(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)
        os.close(fd)


def sweep_scratch(parent: Path) -> list[Path]:
    """Remove the scratch folders under `parent` that no live process holds; return them."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for child in parent.iterdir():
        if child.name.startswith(_NEW) or not (child / HELD).is_file():
            continue
        try:
            fd = os.open(child / HELD, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
        finally:
            os.close(fd)
    return removed
