"""Stable integer query ids (qid) per feed session, kept in `qid_map.parquet` at the output root.

The map only grows (docs/data-contract.md): a session keeps its qid forever; qids start at 0 and new
sessions get the next integers in order of their first impression (ties by session), days
assigned in date order. `assign_qid` is the Arrow function of the `assign_qid` operator;
`QidMap` owns the file: it is read under a lock, appended in memory and replaced atomically
(temp file + rename), always before the day that introduced the new sessions is published, so
a rerun of that day finds its sessions already mapped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.layout.days import LOCK_DIR, day_path, present_days
from daedalus.layout.object_days import manifest_files, object_lock, read_object_manifest
from daedalus.storage.objects import ObjectPath, parquet_dataset

# How long a writer of an object-store map waits for another day's writer to finish with it.
OBJECT_LOCK_WAIT_SECONDS = 600.0


def assign_qid(
    sessions: pa.ChunkedArray | pa.Array,
    known: pa.Table,
    key: str = "feed_session",
    value: str = "qid",
) -> tuple[pa.Array, pa.Table]:
    """qid per row of `sessions` (given in first-impression order), and the map rows it adds.

    Known sessions keep their qid; unknown ones get max(qid) + 1, + 2, ... in order of first
    appearance in `sessions`; a null session gets a null qid.
    """
    sessions = pa.chunked_array([sessions]) if isinstance(sessions, pa.Array) else sessions
    sessions = sessions.cast(pa.string())
    day = pc.unique(sessions.filter(pc.is_valid(sessions)))
    idx = pc.index_in(day, value_set=known[key].cast(pa.string()))
    new = pc.is_null(idx)
    start = pc.max(known[value]).as_py() + 1 if len(known) else 0
    flags = pc.cast(new, pa.int64())
    ranks = np.cumsum(_int64_view(flags), dtype=np.int64) + (start - 1)
    new_qid = pa.Array.from_buffers(pa.int64(), len(ranks), [None, pa.py_buffer(ranks)])
    known_qid = pc.take(known[value], idx) if len(known) else pa.nulls(len(day), pa.int64())
    day_qid = pc.if_else(new, new_qid, known_qid)
    added = pa.table({key: day.filter(new), value: day_qid.filter(new)})
    per_row = pc.take(day_qid, pc.index_in(sessions, value_set=day)).combine_chunks()
    return per_row, added


def _int64_view(arr: pa.Array) -> np.ndarray:
    """A null-free int64 Arrow array as numpy via its buffer: to_numpy imports pandas (~1 s)."""
    return np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr)]


class QidMap:
    """The session → qid map file of one output root, shared by every day of a run."""

    def __init__(
        self, output_root: Path | ObjectPath, state_file: str, key: str = "feed_session",
        value: str = "qid"
    ):
        self.root = output_root if isinstance(output_root, ObjectPath) else Path(output_root)
        self.path = self.root / state_file
        self.key, self.value = key, value
        self._table: pa.Table | None = None
        self._stamp: tuple[int, int] | None = None
        self._mutex = threading.Lock()

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(self.key, pa.string()), (self.value, pa.int64())])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer of the map at a time, across threads and processes (and machines, for an
        object-store root: a lease lock beside the day locks)."""
        if isinstance(self.root, ObjectPath):
            with self._mutex, object_lock(self.root / LOCK_DIR / f"{self.path.name}.lock",
                                          str(self.path), wait=OBJECT_LOCK_WAIT_SECONDS):
                yield
            return
        lock_dir = self.root / LOCK_DIR
        lock_dir.mkdir(parents=True, exist_ok=True)
        with self._mutex:
            fd = os.open(lock_dir / f"{self.path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                for leftover in self.root.glob(f".{self.path.name}.*.tmp"):
                    leftover.unlink(missing_ok=True)  # a killed writer's; writers hold this lock
                yield
            finally:
                os.close(fd)

    def _file_stamp(self) -> tuple[int, int] | str | None:
        if isinstance(self.path, ObjectPath):
            return self.path.etag()
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _load(self) -> pa.Table:
        stamp = self._file_stamp()
        if self._table is not None and stamp == self._stamp:
            return self._table
        if stamp is None:
            table = self._recover()
        else:
            try:
                source = (pa.BufferReader(self.path.read_bytes())
                          if isinstance(self.path, ObjectPath) else self.path)
                table = pq.read_table(source, columns=[self.key, self.value])
            except Exception as exc:  # noqa: BLE001 - any unreadable map is the same fix
                raise DaedalusError(
                    f"{self.path}: not a readable qid map ({type(exc).__name__}: {exc})"
                    " (fix: delete it; it is rebuilt from the days already written)"
                ) from None
            table = table.cast(self.schema)
        self._table, self._stamp = table, stamp
        return table

    def _recover(self) -> pa.Table:
        """No map file: rebuild it from the days already written, so their qids stay valid."""
        files = self._day_files()
        if not files:
            return pa.Table.from_batches([], schema=self.schema)
        import duckdb

        con = duckdb.connect()
        try:
            con.execute("SET enable_progress_bar = false")
            if isinstance(self.root, ObjectPath):  # read through pyarrow's S3 filesystem
                con.register("days", parquet_dataset(files))
                source, params = "days", {}
            else:
                source, params = "read_parquet($files)", {"files": [str(f) for f in files]}
            table = con.sql(
                f"SELECT {self.key}, min({self.value}) AS {self.value} FROM {source}"
                f" WHERE {self.key} IS NOT NULL AND {self.value} IS NOT NULL"
                f" GROUP BY {self.key} ORDER BY {self.value}, {self.key}",
                params=params,
            ).to_arrow_table()
        finally:
            con.close()
        table = table.cast(self.schema)
        if len(table):
            self._write(table)
        return table

    def _day_files(self) -> list:
        """The written days' parts: listed on disk, named by the manifests in object storage."""
        if isinstance(self.root, ObjectPath):
            return [f for d in sorted(present_days(self.root))
                    for f in manifest_files(day_path(self.root, d),
                                            read_object_manifest(day_path(self.root, d)) or {})]
        return [f for d in sorted(present_days(self.root))
                for f in sorted((self.root / f"dt={d:%Y-%m-%d}").glob("*.parquet"))]

    def _write(self, table: pa.Table) -> None:
        if isinstance(self.path, ObjectPath):  # one PUT replaces the map whole
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            crash_point("qid.before_replace")
            self.path.write_bytes(sink.getvalue().to_pybytes())
            self._stamp = self._file_stamp()
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        crash_point("qid.before_replace")
        os.replace(tmp, self.path)
        self._stamp = self._file_stamp()

    def recover_if_missing(self) -> None:
        """Rebuild a lost map from the written days now, before any day is skipped or added."""
        if self._file_stamp() is None:
            with self._locked():
                self._load()

    def assign(self, sessions: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, int]:
        """qid per row; new sessions are appended to the file before this returns."""
        with self._locked():
            known = self._load()
            per_row, added = assign_qid(sessions, known, self.key, self.value)
            if len(added):
                table = pa.concat_tables([known, added.cast(self.schema)]).combine_chunks()
                self._write(table)
                self._table = table
            return per_row, len(added)
