"""Day partitions in object storage: `<root>/dt=YYYY-MM-DD/`, each complete or absent, without
a rename.

The commit protocol (docs/object-storage.md):
1. A run stages the day (`days.staged_day`): on local disk as for a local root, or, for
   writers that write into the store, under the run-unique prefix itself.
2. It uploads the parts under a run-unique prefix, `dt=D/r-<run>/part-*.parquet`. Nothing
   names them yet, so no reader of ours sees them.
3. It puts `dt=D/_manifest.json`, listing exactly those parts. This single PUT is the commit:
   a reader sees the previous manifest (the previous day, whole) or this one.
4. Only then are the keys under `dt=D/` that the new manifest does not name deleted (the
   previous run's parts, a killed run's orphans).
A run killed between any two requests leaves the previous day or the new one, plus unnamed
keys that the day's next commit deletes. Every reader of ours reads a day through its
manifest (`manifest_files`), never by listing.

A day with no rows any more: its manifest is deleted (the commit: the day is absent), then its
parts; its 0-row sidecar `.manifests/dt=D.json` is put after.

Two runs of one day refuse each other with a lease lock, `.locks/dt=D.lock`, created with
`If-None-Match: *` (the server refuses a second create). The holder renews it before its lease
runs out and deletes it with `If-Match` its ETag. A lock whose lease ran out, or whose holder
is a dead process on this host, is taken over with `If-Match` the stale lock's ETag, so only
one of two runs racing to take it over wins.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.layout.names import LOCK_DIR, MANIFEST_NAME, MANIFESTS_DIR, RUN_PREFIX, day_name
from daedalus.storage.objects import ObjectPath, PreconditionFailed

LEASE_SECONDS = 60.0


def manifest_files(folder: ObjectPath, manifest: dict) -> list[ObjectPath]:
    """The day's parts, as its manifest names them."""
    return [folder / name for name in manifest.get("files", [])]


# -- the lock -----------------------------------------------------------------------------------


class DayLease:
    """A held lock on one day: renewed on a thread until released."""

    def __init__(self, path: ObjectPath, etag: str, body: dict):
        self.path, self.etag, self.body = path, etag, body
        self.lost: str | None = None
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"lease-{path.name}")
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            with contextlib.suppress(DaedalusError):
                self.renew()

    def renew(self) -> None:
        """Extend the lease; raises the one-line error if another run took the lock."""
        with self._mutex:
            if self.lost:
                raise DaedalusError(self.lost)
            body = {**self.body, "expires": time.time() + LEASE_SECONDS}
            try:
                self.etag = self.path.write_text(json.dumps(body), if_match=self.etag)
            except PreconditionFailed:
                self.lost = (f"{self.path}: another run took over this day's lock (fix: rerun"
                             " when it is done)")
                raise DaedalusError(self.lost) from None
            self.body = body

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        # A lock we cannot delete (taken over, or the store is down) lapses by itself.
        with self._mutex, contextlib.suppress(PreconditionFailed, DaedalusError):
            if not self.lost:
                self.path.unlink(if_match=self.etag)


def _stale(body: dict) -> bool:
    if body.get("expires", 0) < time.time():
        return True
    if body.get("host") == socket.gethostname() and isinstance(body.get("pid"), int):
        try:
            os.kill(body["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def object_day_lock(root: ObjectPath, day: dt.date):
    """Exclusive lease on one day of an object-store root; refuses a second writer."""
    return object_lock(root / LOCK_DIR / f"{day_name(day)}.lock",
                       f"{root / day_name(day)}: day {day}")


@contextlib.contextmanager
def object_lock(path: ObjectPath, what: str, wait: float = 0.0) -> Iterator[DayLease]:
    """Exclusive lease at `path` (`what` names the locked thing in the refusal); `wait`:
    seconds to keep trying while another live run holds it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            lease = _acquire(path, what)
            break
        except DaedalusError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    try:
        yield lease
    finally:
        lease.release()


def _acquire(path: ObjectPath, what: str) -> DayLease:
    body = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "expires": time.time() + LEASE_SECONDS}
    text = json.dumps(body)
    try:
        etag = path.write_text(text, if_none_match=True)
    except PreconditionFailed:
        held = path.read_with_etag()
        if held is None:  # released between our two requests: one more create
            try:
                etag = path.write_text(text, if_none_match=True)
            except PreconditionFailed:
                _refuse(what, {})
        else:
            data, stale_etag = held
            try:
                holder = json.loads(data)
            except ValueError:
                holder = {}
            if not _stale(holder):
                _refuse(what, holder)
            try:  # take over the stale lock: only one of two racing runs can
                etag = path.write_text(text, if_match=stale_etag)
            except PreconditionFailed:
                _refuse(what, {})
    return DayLease(path, etag, body)


def _refuse(what: str, holder: dict) -> None:
    who = (f"pid {holder['pid']} on {holder.get('host', '?')}" if "pid" in holder
           else "another run")
    raise DaedalusError(f"{what} is being written by {who} (fix: wait for that run to finish,"
                        f" then rerun; a killed run's lock lapses within {LEASE_SECONDS:.0f} s)")


# -- reading ------------------------------------------------------------------------------------


def read_object_manifest(folder: ObjectPath) -> dict | None:
    """The day's committed manifest; for a day without one, its 0-row sidecar, if any."""
    data = _read_json(folder / MANIFEST_NAME)
    if data is None:
        data = _read_json(folder.parent / MANIFESTS_DIR / f"{folder.name}.json")
        if data is not None and (data.get("rows") != 0 or data.get("files")):
            return None
    return data


def committed(folder: ObjectPath) -> bool:
    """Whether the day has a committed manifest (its "folder exists")."""
    return (folder / MANIFEST_NAME).is_file()


def _read_json(path: ObjectPath) -> dict | None:
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def present_object_days(root: ObjectPath) -> set[dt.date]:
    """Days with a committed manifest."""
    out = set()
    for child in root.children():
        if child.name.startswith("dt=") and committed(child):
            with contextlib.suppress(ValueError):
                out.add(dt.date.fromisoformat(child.name[3:]))
    return out


# -- writing ------------------------------------------------------------------------------------


def run_folder(root: ObjectPath, day: dt.date) -> ObjectPath:
    """A fresh run-unique prefix under the day, for parts written straight to the store."""
    return root / day_name(day) / f"{RUN_PREFIX}{uuid.uuid4().hex[:12]}"


def publish_staged(root: ObjectPath, day: dt.date, staging: Path | ObjectPath) -> None:
    """Steps 2-4 of the protocol for a staged day: `staging` holds the parts and a
    `_manifest.json` whose `files` are names in it. A local folder is uploaded under a
    run-unique prefix first; a `run_folder` (parts written there already) is committed as is."""
    folder = root / day_name(day)
    if isinstance(staging, ObjectPath):
        run = staging
        manifest = json.loads((run / MANIFEST_NAME).read_bytes())
    else:
        run = run_folder(root, day)
        manifest = json.loads((staging / MANIFEST_NAME).read_text())
        for name in manifest["files"]:
            (run / name).upload(str(staging / name))
    names = [f"{run.name}/{name}" for name in manifest["files"]]
    crash_point("objects.before_commit")
    _check_still_ours(root / LOCK_DIR / f"{day_name(day)}.lock", folder)  # a lost lock: no commit
    committed_manifest = {**manifest, "files": names}
    (folder / MANIFEST_NAME).write_text(json.dumps(committed_manifest, indent=2, default=str))
    crash_point("objects.after_commit")
    (root / MANIFESTS_DIR / f"{day_name(day)}.json").unlink()
    _delete_unnamed(folder, [folder / n for n in names])


def _check_still_ours(lock: ObjectPath, folder: ObjectPath) -> None:
    """Refuse to commit unless the day's lock is still held by this process."""
    held = lock.read_with_etag()
    holder = json.loads(held[0]) if held else {}
    if holder.get("pid") != os.getpid() or holder.get("host") != socket.gethostname():
        raise DaedalusError(f"{folder}: this run lost the day's lock while writing (fix: rerun"
                            " when the other run is done)")


def retire_object_day(root: ObjectPath, day: dt.date) -> ObjectPath | None:
    """Take a committed day out of sight: its manifest first (the commit), then its parts.
    Returns the day's path if it had one; the caller writes the 0-row sidecar after."""
    folder = root / day_name(day)
    if not committed(folder):
        return None
    (folder / MANIFEST_NAME).unlink()
    crash_point("objects.after_retire")
    _delete_unnamed(folder, [])
    return folder


def sweep_object_orphans(root: ObjectPath, day: dt.date) -> None:
    """Delete keys under the day that its manifest does not name (caller holds the lock)."""
    folder = root / day_name(day)
    _delete_unnamed(folder, manifest_files(folder, _read_json(folder / MANIFEST_NAME) or {}))


def _delete_unnamed(folder: ObjectPath, named: list[ObjectPath]) -> None:
    """Delete every key under the day but `named` and its committed manifest."""
    keep = {str(p) for p in named} | {str(folder / MANIFEST_NAME)}
    for info in folder.iter_objects():
        if str(info.path) not in keep:
            info.path.unlink()
