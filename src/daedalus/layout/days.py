"""Day partitions on disk: `<root>/dt=YYYY-MM-DD/`, each complete or absent.

A stage writes a day into a hidden staging folder beside it and renames it into
place, so readers never see half a day. A per-day lock file keeps two runs
from writing the same day at once; staging folders left by a killed run are
removed by the next writer of that day, or by the next stage's `sweep_staging`.

A root may also be `s3://bucket/prefix` (an `ObjectPath`): there is no rename there, so each
function below hands such a root to `daedalus.layout.object_days`, whose commit protocol
gives readers the same guarantee.

A day that once had rows and now has none is retired (`retire_day`): renamed out of sight
in one step, then deleted. Its 0-row manifest lives in `<root>/.manifests/`, never in a
`dt=` folder: an empty day has no folder (docs/data-contract.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.layout.names import LOCK_DIR, STAGING_PREFIX, day_name
from daedalus.layout.object_days import (
    object_day_lock,
    present_object_days,
    publish_staged,
    retire_object_day,
    run_folder,
    sweep_object_orphans,
)
from daedalus.storage.objects import ObjectPath


def day_path(root: Path | ObjectPath, day: dt.date) -> Path | ObjectPath:
    return (root if isinstance(root, ObjectPath) else Path(root)) / day_name(day)


def present_days(root: Path | ObjectPath) -> set[dt.date]:
    """Days whose folder has been published (staging folders are invisible)."""
    if isinstance(root, ObjectPath):
        return present_object_days(root)
    root = Path(root)
    if not root.is_dir():
        return set()
    out = set()
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith("dt="):
            with contextlib.suppress(ValueError):
                out.add(dt.date.fromisoformat(child.name[3:]))
    return out


def ensure_writable(root: Path | ObjectPath, what: str = "output root") -> Path | ObjectPath:
    if isinstance(root, ObjectPath):
        root.check_bucket()
        probe = root / f".write-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
        return root
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise DaedalusError(f"{root}: {what} is not writable ({exc.strerror})"
                            " (fix: choose a writable --output-root or fix its permissions)") from None
    return root


@contextlib.contextmanager
def day_lock(root: Path, day: dt.date, blocking: bool = False) -> Iterator[None]:
    """Exclusive lock on one day of one root; refuses a second writer with a clear error."""
    if isinstance(root, ObjectPath):
        with object_day_lock(root, day):
            yield
        return
    lock_dir = Path(root) / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{day_name(day)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise DaedalusError(f"{day_path(root, day)}: day {day} is being written by {holder}"
                                " (fix: wait for that run to finish, then rerun)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


def clean_staging(root: Path, day: dt.date) -> None:
    """Remove staging folders a killed run left for this day (caller holds the day lock)."""
    if isinstance(root, ObjectPath):
        sweep_object_orphans(root, day)
        return
    root = Path(root)
    if root.is_dir():
        for child in root.glob(f"{STAGING_PREFIX}{day_name(day)}-*"):
            shutil.rmtree(child, ignore_errors=True)


def sweep_staging(root: Path) -> None:
    """Remove the staging folders killed runs left, for every day no live run is writing.

    `staged_day` cleans a day it writes; this also reaches days that are never rewritten
    (a run killed after publishing a day, before removing the day it replaced). An object-store
    root has no staging folders: each day's next commit deletes what a killed run left.
    """
    if isinstance(root, ObjectPath):
        return
    root = Path(root)
    days = set()
    for child in root.glob(f"{STAGING_PREFIX}dt=*") if root.is_dir() else ():
        with contextlib.suppress(ValueError):
            days.add(dt.date.fromisoformat(child.name[len(STAGING_PREFIX) + 3:][:10]))
    for day in sorted(days):
        with contextlib.suppress(DaedalusError), day_lock(root, day):
            clean_staging(root, day)


@contextlib.contextmanager
def staged_day(root: Path | ObjectPath, day: dt.date,
               direct: bool = False) -> Iterator[Path | ObjectPath]:
    """Yield an empty staging folder; on success publish it as the day, atomically.

    An existing day is exchanged with the new one in a single rename, so a reader sees
    the old day or the new one, never a mix or a gap. On failure the staging folder is removed.
    For an object-store root the staging folder is local scratch, published by
    `object_days.publish_staged` (caller holds the day lock); with `direct`, it is a run-unique
    prefix in the store itself (`ObjectPath`), for writers that write there (on any node).
    """
    if isinstance(root, ObjectPath) and direct:
        run = run_folder(root, day)
        try:
            yield run
            publish_staged(root, day, run)
        except BaseException:
            with contextlib.suppress(DaedalusError):
                for info in run.iter_objects():
                    info.path.unlink()
            raise
        return
    if isinstance(root, ObjectPath):
        staging = Path(tempfile.mkdtemp(prefix=f"daedalus-{day_name(day)}-"))
        try:
            yield staging
            publish_staged(root, day, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    root = Path(root)
    clean_staging(root, day)
    staging = root / f"{STAGING_PREFIX}{day_name(day)}-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        yield staging
        _fsync_dir(staging)
        final = day_path(root, day)
        if final.exists() and _exchange(staging, final):
            crash_point("days.after_exchange")
            shutil.rmtree(staging, ignore_errors=True)
        elif final.exists():
            retired = root / f"{STAGING_PREFIX}{day_name(day)}-old-{uuid.uuid4().hex[:12]}"
            final.rename(retired)
            staging.rename(final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(final)
        _fsync_dir(root)
        crash_point("days.after_publish")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def retire_day(root: Path, day: dt.date) -> Path | None:
    """Remove a published day atomically (caller holds the day lock); the path it had, or None.

    One rename takes the whole day out of sight, so a reader sees the old day or none, never
    part of one; a run killed before the delete leaves a staging folder that the next
    writer of the day, or `sweep_staging`, removes.
    """
    if isinstance(root, ObjectPath):
        return retire_object_day(root, day)
    root = Path(root)
    final = day_path(root, day)
    if not final.is_dir():
        return None
    retired = root / f"{STAGING_PREFIX}{day_name(day)}-old-{uuid.uuid4().hex[:12]}"
    final.rename(retired)
    _fsync_dir(root)
    crash_point("days.after_retire")
    shutil.rmtree(retired, ignore_errors=True)
    return final


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE), so a recomputed day
    replaces the old one with no moment where the day is absent. False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir() if path.is_dir() else ():
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
