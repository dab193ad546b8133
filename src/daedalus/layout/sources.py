"""Raw sources where they live: `<sources_root>/<source>/dt=YYYY-MM-DD/*.parquet`, on local disk
or in object storage (`sources_root: s3://bucket/prefix`).

Every reader of sources lists through here, so a local root and an object-store root give the
same files in the same order (names sorted). A file's fingerprint is [path, size, stamp,
digest]: on disk the stamp is the mtime and the digest a SHA-256 of the bytes (hashed only
when size or mtime moved); in object storage the stamp is the last-modified time and the
digest the object's ETag, which the server computes from the bytes on upload (a byte-identical
re-upload keeps it), so nothing is downloaded to fingerprint a source.

DuckDB reads local files; a day's object-store sources are first copied into the day's
scratch folder through pyarrow's S3 filesystem (`local_copies`), so the SQL and the output
bytes are the same as for a local root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Any

from daedalus.core.config import Config
from daedalus.storage.objects import ObjectPath
from daedalus.storage.uri import Root, parse_root


def sources_root(config: Config) -> Root:
    """The config's sources root: an absolute local path or an `ObjectPath`."""
    root = parse_root(config.base.sources_root, "sources_root", config.base.object_storage)
    return root if isinstance(root, ObjectPath) else Path(root)


def parquet_files(folder: Root) -> list[Root]:
    """The parquet files directly in `folder`, sorted by name; none when it is absent."""
    if isinstance(folder, ObjectPath):
        return sorted((i.path for i in folder.iter_objects()
                       if i.path.name.endswith(".parquet") and i.path.parent == folder),
                      key=lambda p: p.name)
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def partition_days(source: Root) -> list[dt.date]:
    """The `dt=` partitions of one source folder, oldest first."""
    children = source.children() if isinstance(source, ObjectPath) else (
        [c for c in source.iterdir() if c.is_dir()] if source.is_dir() else [])
    days = []
    for child in children:
        if child.name.startswith("dt="):
            with contextlib.suppress(ValueError):
                days.append(dt.date.fromisoformat(child.name[3:]))
    return sorted(days)


def first_parquet(source: Root) -> Root | None:
    """The first parquet file of any `dt=` partition of a source (by name)."""
    if isinstance(source, ObjectPath):
        for info in source.iter_objects():
            if info.path.name.endswith(".parquet") and info.path.parent.name.startswith("dt=") \
                    and info.path.parent.parent == source:
                return info.path
        return None
    return next(iter(sorted(source.glob("dt=*/*.parquet"))), None)


def relative_name(root: Root, path: Root) -> str:
    if isinstance(path, ObjectPath):
        return path.key[len(root.key):].strip("/")
    return str(path.relative_to(root))


def object_fingerprints(root: ObjectPath, folders: list[ObjectPath]) -> list[list[Any]]:
    """[key relative to root, size, last-modified (ns), ETag] of every parquet object directly
    in `folders`: the listing alone, nothing downloaded (the server's ETag is its digest)."""
    out = []
    for folder in folders:
        for info in sorted(folder.iter_objects(), key=lambda i: i.path.name):
            if info.path.name.endswith(".parquet") and info.path.parent == folder:
                stamp = int(info.modified.timestamp() * 1e9)
                out.append([relative_name(root, info.path), info.size, stamp, info.etag])
    return out


def local_copies(files: list[Root], work: Path) -> list[str]:
    """Local paths of `files` for DuckDB: object-store files are copied under `work` first."""
    out = []
    for i, path in enumerate(files):
        if isinstance(path, ObjectPath):
            target = work / "sources" / f"{i:05d}-{path.parent.name}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.download(target)
            out.append(str(target))
        else:
            out.append(str(path))
    return out


def mirror(folder: ObjectPath, target: Path) -> Path:
    """Keep `target` a local copy of every parquet file under the object-store `folder`
    (by relative name), downloading only objects whose ETag changed since the last mirror:
    an unchanged object leaves its local file, and its mtime, as they were. Files no longer
    in the store are removed. Returns `target`."""
    import json

    target.mkdir(parents=True, exist_ok=True)
    record = target / ".etags.json"
    try:
        seen = json.loads(record.read_text())
    except (OSError, ValueError):
        seen = {}
    now = {}
    for info in folder.iter_objects():
        if not info.path.name.endswith(".parquet"):
            continue
        name = relative_name(folder, info.path)
        local = target / name
        if seen.get(name) != info.etag or not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f".{local.name}.part")
            info.path.download(partial)
            partial.replace(local)
        now[name] = info.etag
    for stale in set(seen) - set(now):
        (target / stale).unlink(missing_ok=True)
    record.write_text(json.dumps(now, sort_keys=True))
    return target
