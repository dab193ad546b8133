"""The Lance embedding stores the enrich stage reads (`embedding_stores` in aggregations.yaml):
where one lives, how it is built and published, and what `daeda store info` shows.

A store is built once, on first use or by `daeda store build`, from its source (see
`daedalus.store.source`): rows stream as record batches of `build_batch_size` straight into
`lance.write_dataset`, so memory holds the id keys and one batch, never the vectors.
Embeddings are stored as FixedSizeList<float16>[dim], with a BTREE scalar index on the id.
The dataset is written beside its final path and renamed into place, so a store is complete
or absent; Lance needs that rename to be atomic, which network filesystems do not promise,
so their paths are refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from daedalus.core.config import Config, EmbeddingStoreSpec
from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.layout.manifest import content_fingerprint, fingerprint_files
from daedalus.layout.scratch import scratch_dir
from daedalus.layout.sources import sources_root
from daedalus.storage.objects import ObjectPath
from daedalus.store.source import (
    build_query,
    check_source_schema,
    connect,
    source_files,
    source_path,
    store_batches,
)

Progress = Callable[[str], None]
METADATA_KEY = b"daedalus.store"

# Filesystems without a local atomic rename (Lance commits by renaming a manifest).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "gpfs", "lustre", "ceph", "glusterfs", "beegfs",
    "afs", "9p", "panfs", "wekafs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.glusterfs",
    "fuse.juicefs", "fuse.rclone", "fuse.cephfs", "fuse.lustre", "fuse.goofys", "fuse.blobfuse",
})


def _silent(_: str) -> None:
    return None


# -- where a store lives ------------------------------------------------------------------------


def store_spec(config: Config, name: str) -> EmbeddingStoreSpec:
    names = [s.name for s in config.aggregations.embedding_stores]
    if name not in names:
        raise DaedalusError(f"{config.aggregation_path}: embedding_stores: no store named {name!r}"
                            f" (fix: use one of {names} or add it to embedding_stores)")
    return config.aggregations.store(name)


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding `path` (longest mount point prefix in /proc/mounts)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.abspath(path)
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_local_disk(path: Path, what: str = "embedding store", mounts: str | None = None) -> None:
    """Refuse URIs and network filesystems: Lance needs an atomic rename on local disk."""
    text = str(path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", text):
        raise DaedalusError(f"{text}: {what} path is a URI; the store must be on local disk"
                            " (fix: set DAEDALUS_STORE_ROOT or store_root to a local ext4/xfs"
                            " folder)")
    target = Path(os.path.abspath(path))
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    kind = filesystem_type(probe.resolve() / target.relative_to(probe), mounts)
    if kind in NETWORK_FILESYSTEMS:
        raise DaedalusError(f"{path}: {what} is on a {kind} network filesystem; Lance needs an"
                            " atomic rename on local disk (fix: set DAEDALUS_STORE_ROOT or"
                            " store_root to a local ext4/xfs folder, e.g. under /local)")


def is_store(path: Path) -> bool:
    """A published Lance dataset is there (a build in progress lives beside it, not at it)."""
    return (path / "_versions").is_dir()


# -- build --------------------------------------------------------------------------------------


def _store_schema(spec: EmbeddingStoreSpec, metadata: dict[str, Any] | None = None) -> pa.Schema:
    schema = pa.schema([
        pa.field(spec.id_column, pa.int64(), nullable=False),
        pa.field(spec.embedding_column, pa.list_(pa.float16(), spec.embedding_dim)),
    ])
    return schema.with_metadata({METADATA_KEY: json.dumps(metadata)}) if metadata else schema


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One builder per store; a second one waits, then finds the store built."""
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build_store(config: Config, name: str, *, force: bool = False,
                keep_fingerprint: str | None = None, progress: Progress = _silent) -> dict:
    """Build the store from its source (or keep the one there unless `force`, or unless its
    source fingerprint is `keep_fingerprint`, as found under the build lock); return its info."""
    import lance

    spec = store_spec(config, name)
    path = config.store_path(spec)
    check_local_disk(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(path):
        _sweep_builds(path)
        if is_store(path) and (not force or (keep_fingerprint is not None and _metadata(path).get(
                "source_fingerprint") == keep_fingerprint)):
            return store_info(config, name)
        source = source_path(config, spec)
        files = source_files(source)
        check_source_schema(files, spec)
        progress(f"store {name}: building from {len(files)} file(s) under {source} → {path}")
        started = time.perf_counter()
        staging = path.with_name(f".{path.name}.building-{uuid.uuid4().hex[:12]}")
        work = Path(config.runtime.compute.duckdb_config.temp_directory) / staging.name.lstrip(".")
        # The source's content, as a day manifest records its inputs (layout.manifest).
        listing = fingerprint_files(source, files)
        metadata = {"name": name, "source": str(source.resolve()), "source_files": len(files),
                    "source_listing": listing, "source_fingerprint": content_fingerprint(listing),
                    "built_at": dt.datetime.now(dt.UTC).isoformat(), "build_id": uuid.uuid4().hex}
        schema = _store_schema(spec, metadata)
        failed: list[DaedalusError] = []
        with scratch_dir(work):
            con = connect(config, work)
            try:
                reader = con.sql(build_query(source, spec)).to_arrow_reader(spec.build_batch_size)
                batches = pa.RecordBatchReader.from_batches(
                    schema, store_batches(reader, spec, source, schema, failed))
                try:
                    dataset = lance.write_dataset(batches, str(staging), schema=schema, mode="create")
                except OSError:
                    if failed:
                        raise failed[0] from None
                    raise
                dataset.create_scalar_index(spec.id_column, index_type="BTREE")
                rows = dataset.count_rows()
                crash_point("store.before_publish")
                _publish(staging, path)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                con.close()
        progress(f"store {name}: {rows:,} vectors in {time.perf_counter() - started:.1f}s")
    return store_info(config, name)


def _publish(staging: Path, path: Path) -> None:
    if path.exists():
        retired = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
        path.rename(retired)
        staging.rename(path)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(path)


def _sweep_builds(path: Path) -> None:
    """Remove the build folders a killed builder left beside the store (caller holds the lock)."""
    for child in path.parent.glob(f".{path.name}.*"):
        if child.is_dir() and (".building-" in child.name or ".old-" in child.name):
            shutil.rmtree(child, ignore_errors=True)


def ensure_store(config: Config, name: str, progress: Progress = _silent) -> Path:
    """The store's path, built first if it is not there yet; warns when its source moved on."""
    spec = store_spec(config, name)
    path = config.store_path(spec)
    check_local_disk(path)
    if not is_store(path):
        build_store(config, name, progress=progress)
    else:
        stale = _staleness(config, spec, _metadata(path))
        if stale:
            progress(f"store {name}: {stale}; using it as built (fix: daeda store build --force)")
    return path


def node_store_recipe(config: Config, name: str, path: Path) -> dict[str, Any] | None:
    """What a Ray node needs to build its own copy of the store at `path`, or None where the
    driver's copy is the one to read (local sources, or an absolute `store_root`).

    With sources in object storage and a relative `store_root`, each node resolves the store
    against its own working directory and builds it there from the bucket on first use. The
    config travels without keys: a node's `AWS_*` variables (or role) reach the bucket."""
    spec = store_spec(config, name)
    if (not isinstance(sources_root(config), ObjectPath) or config.store_path(spec).is_absolute()
            or Path(spec.source_parquet).is_absolute()):
        return None
    storage = config.base.object_storage.model_copy(
        update={"access_key_id": None, "secret_access_key": None})
    shipped = config.model_copy(update={"base": config.base.model_copy(
        update={"object_storage": storage})})
    return {"config": shipped, "name": name,
            "source_fingerprint": _metadata(path).get("source_fingerprint")}


def store_on_this_node(config: Config, name: str, source_fingerprint: str | None) -> Path:
    """The store as this process resolves its path (a node's own working directory), built
    there when missing, and again when its source fingerprint is not the driver's copy's. A
    copy that holds is used as it is; otherwise the check runs again under the store's build
    lock, so of a node's actors one builds and the others find its copy. A source that changed
    since the driver built its copy is an error: the day's manifest records the driver's store
    version."""
    spec = store_spec(config, name)
    path = config.store_path(spec).absolute()
    if is_store(path) and source_fingerprint in (None, _metadata(path).get("source_fingerprint")):
        return path  # the node's copy holds: no lock, and no listing of the bucket's source
    build_store(config, name, force=source_fingerprint is not None,
                keep_fingerprint=source_fingerprint)
    built = _metadata(path).get("source_fingerprint")
    if source_fingerprint is not None and built != source_fingerprint:
        raise DaedalusError(f"{path}: store {name}: its source {spec.source_parquet} changed"
                            " since this run's driver built its copy (fix: rerun the day)")
    return path


# -- inspect ------------------------------------------------------------------------------------


def _metadata(path: Path) -> dict[str, Any]:
    import lance

    raw = (lance.dataset(str(path)).schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def _staleness(config: Config, spec: EmbeddingStoreSpec, metadata: dict[str, Any]) -> str | None:
    source = source_path(config, spec)
    try:
        files = source_files(source)
    except DaedalusError:
        return None
    listing = fingerprint_files(source, files, metadata.get("source_listing"))
    if metadata.get("source_fingerprint") != content_fingerprint(listing):
        return f"{source} changed since the store was built"
    return None


def store_version(path: Path) -> str:
    """Identifies the store's content: its build and Lance version (for day fingerprints)."""
    import lance

    ds = lance.dataset(str(path))
    meta = json.loads((ds.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return f"{meta.get('build_id', 'unknown')}@v{ds.version}"


def store_info(config: Config, name: str) -> dict:
    """What `daeda store info` shows: where, how big, when built, from what, and if stale."""
    import lance

    spec = store_spec(config, name)
    path = config.store_path(spec)
    info: dict[str, Any] = {"name": name, "path": str(path), "exists": is_store(path),
                            "source": str(source_path(config, spec))}
    if not info["exists"]:
        info["hint"] = "built on first use, or now with `daeda store build`"
        return info
    ds = lance.dataset(str(path))
    meta = _metadata(path)
    field = ds.schema.field(spec.embedding_column).type
    info.update({
        "rows": ds.count_rows(),
        "embedding_type": str(field),
        "lance_version": ds.version,
        "indices": [{"name": i.name, "fields": list(i.field_names),
                     "type": i.type_url.rsplit(".", 1)[-1].removesuffix("IndexDetails")}
                    for i in ds.describe_indices()],
        "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        "built_at": meta.get("built_at"),
        "source_files": meta.get("source_files"),
        "stale": _staleness(config, spec, meta),
    })
    return info


def render_info(info: dict) -> str:
    if not info.get("exists"):
        return f"{info['name']}: not built at {info['path']} ({info.get('hint', '')})"
    index = ", ".join(f"{i['type']} on {','.join(i['fields'])}" for i in info["indices"]) or "none"
    lines = [
        f"{info['name']}: {info['rows']:,} vectors, {info['bytes'] / 2**20:,.1f} MiB"
        f" at {info['path']}",
        f"  type     {info['embedding_type']}",
        f"  index    {index}",
        f"  built    {info['built_at']} from {info['source_files']} file(s) under {info['source']}",
        f"  fresh    {'no: ' + info['stale'] if info['stale'] else 'yes'}",
    ]
    return "\n".join(lines)
