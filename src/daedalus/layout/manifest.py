"""Day manifests: what a written day was computed from, so reruns can tell stale from fresh.

Each published day folder holds `_manifest.json`, written last inside the
staging folder and so published atomically with the day. It records the day's
row count and files, a fingerprint of every input file it read (size, mtime and
a hash of its bytes), a hash of the operators and config that shaped it, and the
code version. A day without a valid manifest is not complete.

A source file counts as changed when its bytes change, not when it is merely rewritten: a feed
that re-exports identical files leaves its days up to date. The bytes are hashed only where size
or mtime differ from the manifest's record (as git's index does), so an untouched source costs a
`stat` and a touched one a read at hashing speed (bench/README.md).

A day with no rows has no folder (docs/data-contract.md); its manifest, with `rows: 0`, is a sidecar
`<root>/.manifests/dt=YYYY-MM-DD.json`, so an unchanged rerun skips the empty day too and
a change of its inputs recomputes it. `read_manifest` and `day_state` read the sidecar when
the day folder is absent; a published folder always wins over a sidecar.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daedalus import __version__
from daedalus.core.config import Config, parse_duration
from daedalus.layout.days import day_path
from daedalus.layout.names import MANIFEST_NAME, MANIFESTS_DIR, day_name
from daedalus.layout.object_days import committed, read_object_manifest
from daedalus.layout.sources import object_fingerprints, parquet_files, partition_days, sources_root
from daedalus.storage.objects import ObjectPath
from daedalus.storage.uri import Root

FORMAT = 1


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fingerprint:
    """Everything that decides a day's content; equal fingerprints mean an up-to-date day."""

    inputs: dict[str, list[list[Any]]]
    operators: dict[str, str]
    config: str
    code_version: str = __version__

    def staleness(self, recorded: Fingerprint) -> str | None:
        """Why a day recorded with `recorded` is stale for `self`, or None if it is not.

        The DAG and config come first: a changed lookback also changes which files are read.
        """
        changed_ops = sorted(name for name in set(self.operators) | set(recorded.operators)
                             if self.operators.get(name) != recorded.operators.get(name))
        if changed_ops:
            return f"compiled DAG changed (operator {', '.join(changed_ops)})"
        if self.config != recorded.config:
            return "config changed since last run"
        for source in sorted(set(self.inputs) | set(recorded.inputs)):
            now, then = _content(self.inputs.get(source)), _content(recorded.inputs.get(source))
            if now != then:
                changed = sorted(now ^ then, key=lambda entry: entry[0])
                detail = f" ({changed[0][0]})" if changed else ""
                return f"{source} changed since last run{detail}"
        if self.code_version != recorded.code_version:
            return f"code version changed ({recorded.code_version} → {self.code_version})"
        return None


HASH_CHUNK = 8 << 20


def content_digest(path: Path) -> str:
    """A file's bytes, hashed: equal digests mean byte-identical files. SHA-256, because CPUs
    with SHA extensions hash it ~3× faster than blake2b (bench/README.md)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def file_fingerprints(root: Root, folders: list[Root],
                      known: list[list[Any]] | None = None) -> list[list[Any]]:
    """[path relative to root, size, stamp, content digest] of every parquet file under the
    folders, sorted (layout.sources: mtime and SHA-256 on disk, last-modified and ETag in
    object storage). A file whose size and stamp match `known` keeps its digest unread."""
    if isinstance(root, ObjectPath):
        return object_fingerprints(root, folders)
    return fingerprint_files(root, [p for f in folders for p in parquet_files(f)], known)


def fingerprint_files(root: Path, paths: list[Path],
                      known: list[list[Any]] | None = None) -> list[list[Any]]:
    """`file_fingerprints` of given local files (the embedding store's source listing)."""
    recorded = {e[0]: e for e in known or [] if len(e) == 4}
    out = []
    for path in paths:
        st = path.stat()
        name = str(path.relative_to(root))
        seen = recorded.get(name)
        same = seen and seen[1] == st.st_size and seen[2] == st.st_mtime_ns
        out.append([name, st.st_size, st.st_mtime_ns, seen[3] if same else content_digest(path)])
    return out


def content_fingerprint(entries: list[list[Any]]) -> str:
    """One digest of a listing's content (paths, sizes, digests; not mtimes)."""
    return _digest(sorted(_content(entries)))


def partition_versions(entries: list[list[Any]]) -> dict[str, str]:
    """One content digest per `dt=` folder of a listing: {"YYYY-MM-DD": digest}. The data
    version of a source day, whoever lists it (a day's manifest, an observation)."""
    by_day: dict[str, list[list[Any]]] = {}
    for entry in entries:
        folder = Path(entry[0]).parent.name
        if folder.startswith("dt="):
            by_day.setdefault(folder[3:], []).append(entry)
    return {day: content_fingerprint(listed) for day, listed in sorted(by_day.items())}


def source_partition_versions(config: Config, source: str) -> dict[str, str]:
    """`partition_versions` of every `dt=` folder of one source, hashing every file."""
    root = sources_root(config)
    folders = [root / source / f"dt={d:%Y-%m-%d}" for d in partition_days(root / source)]
    return partition_versions(file_fingerprints(root, folders))


def _content(entries: list[list[Any]] | None) -> set[tuple]:
    """What a listing says about content: path, size and digest (not mtime)."""
    return {(e[0], e[1], e[3]) if len(e) == 4 else tuple(e) for e in entries or []}


def scan_days(day: dt.date, lookback: str | None) -> list[dt.date]:
    """The dt partitions a scan with this lookback reads for `day`, oldest first."""
    back = math.ceil(parse_duration(lookback) / dt.timedelta(days=1)) if lookback else 0
    return [day - dt.timedelta(days=i) for i in range(back, -1, -1)]


def skeleton_fingerprint(pipeline, config: Config, day: dt.date,
                         previous: Fingerprint | None = None) -> Fingerprint:
    """The skeleton day's fingerprint now; `previous` (the day's recorded one) spares hashing
    the files it saw unchanged."""
    root = sources_root(config)
    inputs = {}
    for op in pipeline.of_kind("Scan"):
        folders = [root / op.source / f"dt={d:%Y-%m-%d}" for d in scan_days(day, op.lookback)]
        known = previous.inputs.get(op.source) if previous else None
        inputs[op.source] = file_fingerprints(root, folders, known)
    operators = {op.name: _digest(op.model_dump(mode="json", exclude={"description"}))
                 for op in pipeline.source_side}
    shaping = {"output_columns": [c.model_dump(mode="json") for c in config.runtime.output_columns],
               "engine": config.runtime.compute.engine,
               "chunk_rows": config.runtime.skeleton_chunk_rows,
               "sources_root": str(root if isinstance(root, ObjectPath) else root.resolve())}
    return Fingerprint(inputs=inputs, operators=operators, config=_digest(shaping))


def enrich_fingerprint(pipeline, config: Config, day: dt.date, skeleton_root: Path,
                       stores: dict[str, Any]) -> Fingerprint:
    """An enriched day depends on its skeleton day (by manifest) and the stores' versions."""
    recorded = read_manifest(day_path(skeleton_root, day)) or {}
    inputs = {"skeleton": [[f"dt={day:%Y-%m-%d}", recorded.get("rows"), recorded.get("written_at")]],
              **{f"store:{name}": [[str(v)]] for name, v in sorted(stores.items())}}
    operators = {op.name: _digest(op.model_dump(mode="json", exclude={"description"}))
                 for op in pipeline.enrichment}
    specs = [s.model_dump(mode="json") for s in config.aggregations.enrichment_specs]
    stores_cfg = [s.model_dump(mode="json") for s in config.aggregations.embedding_stores]
    return Fingerprint(inputs=inputs, operators=operators, config=_digest([specs, stores_cfg]))


@dataclass(frozen=True)
class Manifest:
    stage: str
    day: str
    rows: int
    files: list[str]
    fingerprint: Fingerprint
    timings: dict[str, float] = field(default_factory=dict)
    written_at: str = ""
    format: int = FORMAT


def write_manifest(folder: Path | ObjectPath, manifest: Manifest) -> Path | ObjectPath:
    """Write the manifest last, fsynced, inside the (staging) day folder."""
    folder = folder if isinstance(folder, ObjectPath) else Path(folder)
    return _write_json(folder / MANIFEST_NAME, manifest)


def _write_json(path: Path | ObjectPath, manifest: Manifest) -> Path | ObjectPath:
    """The manifest as JSON at `path`: a local file replaced whole (temp file, fsync, rename),
    or an object put whole in one request."""
    data = asdict(manifest)
    data["written_at"] = manifest.written_at or dt.datetime.now(dt.UTC).isoformat()
    if isinstance(path, ObjectPath):
        path.write_text(json.dumps(data, indent=2, default=str))
        return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def empty_manifest_path(folder: Path) -> Path:
    """The sidecar of day folder `<root>/dt=D`: `<root>/.manifests/dt=D.json`."""
    folder = Path(folder)
    return folder.parent / MANIFESTS_DIR / f"{folder.name}.json"


def write_empty_manifest(root: Path, day: dt.date, manifest: Manifest) -> Path:
    """Record a day with no rows, without a day folder (caller holds the day lock)."""
    if manifest.rows != 0 or manifest.files:
        raise ValueError(f"{day}: an empty-day manifest has no rows and no files")
    if isinstance(root, ObjectPath):
        return _write_json(root / MANIFESTS_DIR / f"{day_name(day)}.json", manifest)
    path = empty_manifest_path(day_path(root, day))
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f"{path.name}.*.tmp"):  # a killed run's
        leftover.unlink(missing_ok=True)
    _write_json(path, manifest)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def remove_empty_manifest(root: Path, day: dt.date) -> None:
    """Drop the day's 0-row sidecar once the day has rows again (caller holds the day lock)."""
    if isinstance(root, ObjectPath):
        (root / MANIFESTS_DIR / f"{day_name(day)}.json").unlink()
        return
    path = Path(root) / MANIFESTS_DIR / f"{day_name(day)}.json"
    path.unlink(missing_ok=True)


def read_manifest(folder: Path) -> dict | None:
    """The day folder's manifest; for an absent folder, its 0-row sidecar, if any."""
    if isinstance(folder, ObjectPath):
        data = read_object_manifest(folder)
        return data if data is not None and data.get("format") == FORMAT else None
    folder = Path(folder)
    data = _read_json(folder / MANIFEST_NAME)
    if data is None and not folder.exists():
        data = _read_json(empty_manifest_path(folder))
        if data is not None and (data.get("rows") != 0 or data.get("files")):
            return None
    return data


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def recorded_day_fingerprint(folder: Path) -> Fingerprint | None:
    """The fingerprint a day folder (or its 0-row sidecar) was written with, if any."""
    data = read_manifest(folder)
    return recorded_fingerprint(data) if data else None


def recorded_fingerprint(data: dict) -> Fingerprint | None:
    try:
        return Fingerprint(**data["fingerprint"])
    except (KeyError, TypeError):
        return None


def day_state(folder: Path, current: Fingerprint) -> tuple[str, str]:
    """('absent'|'incomplete'|'stale'|'complete'|'empty', reason) for a day folder.

    'empty' is complete with no rows: no folder, an up-to-date 0-row sidecar.
    """
    published = committed(folder) if isinstance(folder, ObjectPath) else Path(folder).exists()
    if not published:
        data = read_manifest(folder)
        recorded = recorded_fingerprint(data) if data else None
        if recorded is None:
            return "absent", "not written yet"
        reason = current.staleness(recorded)
        return ("stale", reason) if reason else ("empty", "no impressions")
    data = read_manifest(folder)
    recorded = recorded_fingerprint(data) if data else None
    if recorded is None:
        return "incomplete", "no valid manifest"
    reason = current.staleness(recorded)
    if reason:
        return "stale", reason
    return "complete", "up to date"
