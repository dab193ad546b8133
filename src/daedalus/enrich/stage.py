"""Enrich stage: append the embedding columns on Ray Data actors backed by the Lance store.

Per day, one streaming Ray Data plan: a read of the skeleton day's files in
order (`skeleton_source`, pieces of whole row groups) → `map_batches` on an actor
pool (`EnrichBatches`, pyarrow batches) → a parquet datasink writing into a
staging folder, with `preserve_order` on so every shard is a contiguous,
chronological range of the day. The staging folder gets a manifest and is
renamed into place: a day is complete or absent, and a day already enriched from
the same skeleton day and store is skipped.

The actors hand the writers a compact form of each batch: the window means as an
Arrow dictionary column of the batch's distinct means, and the looked-up
embeddings as row numbers into the day's preloaded matrix, which the writers map
zero-copy too (without preload: a dictionary column of the distinct vectors). The
datasink's write tasks expand them into the contract's list<halffloat> columns as
they write, so the ~4.6 GB a 1M-row day expands to never crosses the object store.

With `preload_day_embeddings` (the default) the driver takes the day's needed
float16 vectors from the store once and puts them in the object store; actors
map them zero-copy and keep only the day's id index. The driver does this on a
thread while Ray Data already starts the plan: the actors' constructors wait for
the vectors' refs in the runtime's `PreloadBox`. Without preload, each actor
loads the store's id index and takes each batch's vectors itself.

`ray_runtime` owns this process's Ray: one local cluster sized to the
`RayEnvelope` on first use (clamped to the machine), listening on 127.0.0.1
only, or a connection to `--ray-address` / `RAY_ADDRESS`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from daedalus.core.config import Config
from daedalus.core.envelope import RayEnvelope
from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.core.operators import OperatorPipeline, RayUdfTransform, Sink
from daedalus.core.results import DayResult
from daedalus.enrich.kernel import (
    expand_dictionary,
    fp16_dictionary_array,
    gather_rows,
    like_windows,
    lookup_pool,
    unique_ids,
    window_pool,
)
from daedalus.enrich.preload_box import PreloadBox
from daedalus.layout.days import day_lock, day_path, ensure_writable, staged_day, sweep_staging
from daedalus.layout.manifest import Manifest, day_state, enrich_fingerprint, read_manifest, write_manifest
from daedalus.store.lance_store import StoreReader, ensure_store, store_version
from daedalus.store.table import EmbeddingTable

# Workers run this venv's python (daedalus is installed in it); Ray's `uv run` hook would
# instead package the working directory and start every worker through uv. Both must be set
# before Ray is imported.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

Progress = Callable[[str], None]
PROVENANCE_KEY = b"daedalus.enrich"
# Field metadata of a compact column holding row numbers into a shared store's matrix.
ROWS_OF_KEY = b"daedalus.rows_of"
EMBEDDING_TYPE = pa.list_(pa.float16())
_MISSING_ID = np.iinfo(np.int64).min
# Write tasks ask for half a CPU, so two run on each CPU the actors leave: writing two
# float16 list columns costs more than computing them, and a half-idle actor's core is then
# filled by a second writer instead of staying idle.
WRITE_TASK_CPUS = 0.5
# A read task is a streaming generator that lives, paused by backpressure, as long as its
# piece lasts: any CPU it asks for is held away from the writers all that time, for ~1% of
# the stage's work. Reads ask for none, one at a time; Ray Data's memory backpressure still
# bounds them.
READ_TASK_CPUS = 0
# Rows per parquet row group of the enriched output (~46 MB of two 1152-d float16 columns).
ROW_GROUP_ROWS = 10_000


# -- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrichment:
    """One output column: `lookup` of a scalar id, or `avg_pool` over a list of ids."""

    name: str
    kind: str
    input_column: str
    store: str
    group_column: str | None = None


@dataclass(frozen=True)
class EnrichPlan:
    op: RayUdfTransform
    sink: Sink
    enrichments: tuple[Enrichment, ...]

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.sink.columns]

    @property
    def stores(self) -> list[str]:
        return sorted({e.store for e in self.enrichments})

    @classmethod
    def build(cls, pipeline: OperatorPipeline, config: Config) -> EnrichPlan:
        ops = pipeline.of_kind("RayUdfTransform")
        where = f"{pipeline.service} DAG"
        if len(ops) != 1:
            raise DaedalusError(f"{where}: operators: {len(ops)} RayUdfTransform operators, the"
                                " enrich stage runs exactly one (fix: merge their enrichments)")
        op = ops[0]
        sinks = [s for s in pipeline.of_kind("Sink") if s.target == "enriched"]
        if len(sinks) != 1 or sinks[0].inputs != (op.name,):
            raise DaedalusError(f"{where}: operators: the enriched Sink must read {op.name!r}"
                                " (fix: recompile with `daeda pipeline compile`)")
        entity = {a.name: a.entity for a in config.aggregations.aggregation_specs}
        known = {s.name for s in config.aggregations.embedding_stores}
        enrichments = []
        for e in op.enrichments:
            if e.store not in known:
                raise DaedalusError(f"{where}: operators.{op.name}.enrichments: {e.name!r} reads"
                                    f" unknown store {e.store!r} (fix: add it to embedding_stores"
                                    f" in {config.aggregation_path})")
            group = entity.get(e.input_column) if e.kind == "avg_pool" else None
            enrichments.append(Enrichment(e.name, e.kind, e.input_column, e.store, group))
        return cls(op=op, sink=sinks[0], enrichments=tuple(enrichments))


# -- the batch function (runs in the actors; plain Arrow and numpy) -----------------------------


def _ids(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.fill_null(_MISSING_ID).to_numpy().astype(np.int64, copy=False)


def _lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, values) of a list column, whatever its slicing or nulls."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).fill_null(0).to_numpy()
    offsets = np.zeros(len(column) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, _ids(pc.list_flatten(column))


def needed_ids(batch: pa.Table, enrichments: Iterable[Enrichment]) -> np.ndarray:
    """Every id the enrichments of one store will look up in this batch, unique, sorted."""
    parts = [np.empty(0, np.int64)]
    for e in enrichments:
        column = batch.column(e.input_column)
        ids = _lists(column)[1] if e.kind == "avg_pool" else _ids(column)
        parts.append(ids[ids != _MISSING_ID])
    return unique_ids(np.concatenate(parts))


def compact_table(batch: pa.Table, enrichments: Iterable[Enrichment],
                  tables: dict[str, EmbeddingTable], columns: list[str],
                  shared: Iterable[str] = ()) -> pa.Table:
    """The batch with each enrichment's column set, in `columns` order, in compact form (what
    the actors hand the writer): a dictionary column of the batch's distinct vectors, or, for
    a lookup in a store the writer holds too (`shared`: the day's preloaded vectors), just
    each row's row number in that store's matrix, tagged with the store's name."""
    shared = set(shared)
    out: dict[str, pa.Array] = {}
    fields: dict[str, pa.Field] = {}
    for e in enrichments:
        table = tables[e.store]
        if e.kind == "lookup" and e.store in shared:
            rows = table.rows_of(_ids(batch.column(e.input_column)))
            out[e.name] = pa.array(rows.astype(np.int32), mask=rows == table.missing_row)
            fields[e.name] = pa.field(e.name, pa.int32(), metadata={ROWS_OF_KEY: e.store})
            continue
        if e.kind == "lookup":
            pooled = lookup_pool(_ids(batch.column(e.input_column)), table)
        else:
            offsets, values = _lists(batch.column(e.input_column))
            group = (_ids(batch.column(e.group_column)) if e.group_column in batch.column_names
                     else np.zeros(batch.num_rows, dtype=np.int64))
            pooled = window_pool(like_windows(group, offsets, values), table)
        out[e.name] = fp16_dictionary_array(pooled)
        fields[e.name] = pa.field(e.name, out[e.name].type)
    arrays = [out[name] if name in out else batch.column(name) for name in columns]
    schema = [fields[name] if name in out else batch.schema.field(name) for name in columns]
    return pa.Table.from_arrays(arrays, schema=pa.schema(schema, metadata=batch.schema.metadata))


def expand_table(table: pa.Table, tables: dict[str, EmbeddingTable] | None = None) -> pa.Table:
    """`compact_table`'s output as written: every compact column becomes list<halffloat>;
    row numbers into a shared store are gathered from `tables`, that store's matrix."""
    fields, arrays = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        store = (field.metadata or {}).get(ROWS_OF_KEY)
        if store is not None:
            matrix = _shared_matrix(tables, store.decode(), field.name)
            column = pa.chunked_array([gather_rows(matrix, c) for c in column.chunks],
                                      type=EMBEDDING_TYPE)
            field = pa.field(field.name, EMBEDDING_TYPE)
        elif pa.types.is_dictionary(field.type):
            column = pa.chunked_array([expand_dictionary(c) for c in column.chunks],
                                      type=EMBEDDING_TYPE)
            field = pa.field(field.name, EMBEDDING_TYPE)
        fields.append(field)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def _shared_matrix(tables: dict[str, EmbeddingTable] | None, store: str, column: str) -> np.ndarray:
    if not tables or store not in tables:
        raise DaedalusError(f"{column}: the writer does not hold store {store!r}'s preloaded"
                            " vectors (fix: rerun the day; if it persists, report it)")
    return tables[store].matrix


def enrich_table(batch: pa.Table, enrichments: Iterable[Enrichment],
                 tables: dict[str, EmbeddingTable], columns: list[str]) -> pa.Table:
    """The batch with each enrichment's column (list<halffloat>) set, in `columns` order."""
    return expand_table(compact_table(batch, enrichments, tables, columns, shared=tables), tables)


def handed_over(handoff: tuple[Any, str]) -> dict[str, EmbeddingTable]:
    """The day's preloaded tables, from the runtime's PreloadBox (waits for the preload);
    mapped zero-copy from the object store."""
    import ray

    box, key = handoff
    preloaded = ray.get(box.get.remote(key))
    if isinstance(preloaded, str):
        raise DaedalusError(preloaded)
    tables = {}
    for store, refs in preloaded.items():
        ids, matrix = ray.get(list(refs))
        tables[store] = EmbeddingTable(ids=ids, matrix=matrix)
    return tables


class EnrichBatches:
    """The actor: holds the day's embeddings (or the store's id index) and enriches batches."""

    def __init__(self, spec: dict[str, Any]):
        import ray

        self.enrichments = [Enrichment(**e) for e in spec["enrichments"]]
        self.columns = spec["columns"]
        self.tables: dict[str, EmbeddingTable] = {}
        self.readers: dict[str, StoreReader] = {}
        if spec["handoff"] is not None:
            self.tables = handed_over(spec["handoff"])
        for store, args in spec["readers"].items():
            self.readers[store] = StoreReader(**args)
        ctx = ray.get_runtime_context()
        self.provenance = json.dumps({"actor_id": ctx.get_actor_id(), "pid": os.getpid(),
                                      "node_id": ctx.get_node_id()}).encode()

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = dict(self.tables)
        for store, reader in self.readers.items():
            mine = [e for e in self.enrichments if e.store == store]
            tables[store] = reader.table(needed_ids(batch, mine))
        table = compact_table(batch, self.enrichments, tables, self.columns, shared=self.tables)
        return table.replace_schema_metadata({**(table.schema.metadata or {}),
                                              PROVENANCE_KEY: self.provenance})


# -- Ray ----------------------------------------------------------------------------------------


@dataclass
class _Runtime:
    address: str | None
    envelope: RayEnvelope
    box: Any = None  # a PreloadBox actor, started with the runtime


_RUNTIME: _Runtime | None = None


def ray_runtime(envelope: RayEnvelope, progress: Progress = print) -> RayEnvelope:
    """This process's Ray, started or connected once and reused; returns the effective envelope.

    Without an address: a local cluster sized to the envelope (clamped to the machine),
    on 127.0.0.1 only, no dashboard, worker logs kept out of the terminal. It is sized on
    first use; later calls reuse it. With an address: connect to that cluster instead,
    sized to what it offers.
    """
    global _RUNTIME
    address = envelope.address
    _loopback_only(address is None or _is_loopback(address))
    import ray

    _quiet_ray_logs()
    if ray.is_initialized():
        if _RUNTIME is not None and _RUNTIME.address == address:
            return replace(_RUNTIME.envelope, num_workers=envelope.num_workers,
                           preload_day_embeddings=envelope.preload_day_embeddings)
        if _RUNTIME is not None or address is not None:
            ray.shutdown()
    if not ray.is_initialized():
        if address:
            check_ray_address(address)
            progress(f"ray: connecting to the cluster at {redact_address(address)}")
            _match_cluster_auth(address)
            with _no_fork_warning():
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                         namespace="daedalus")
        else:
            local = envelope.clamped_to_machine()
            for note in local.notes:
                progress(f"ray: {note}")
            gib = 2**30
            worker_memory = max(local.memory_gb - local.object_store_gb
                                - local.system_reserved_memory_gb, 1)
            _set_auth_mode(_ORIGINAL_AUTH_ENV)
            with _no_fork_warning():
                ray.init(address="local", num_cpus=local.num_cpus,
                         object_store_memory=int(local.object_store_gb * gib),
                         _memory=int(worker_memory * gib), _node_ip_address="127.0.0.1",
                         include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, namespace="daedalus",
                         _system_config={"num_workers_soft_limit": idle_workers(local)})
            progress(f"ray: local cluster on 127.0.0.1, {local.num_cpus} CPUs,"
                     f" {local.object_store_gb:g} GiB object store")
    effective = _fit_to_cluster(envelope)
    _RUNTIME = _Runtime(address=address, envelope=effective, box=_start_box())
    _warm_writers(effective)
    _warm_ray_data()
    return effective


def _start_box():
    """The runtime's PreloadBox: no CPU, a thread per waiting actor. Started with Ray, whose
    start leaves a core idle, even for runs without preload: started by a day's first preload
    instead, its boot competed with it and the cold bench day took ~2 s longer."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=1000, max_restarts=0)(PreloadBox).remote()


def _warm_writers(envelope: RayEnvelope) -> None:
    """Have the worker processes that will run the first write tasks import what they need
    now, while the driver preloads the day, rather than after the first batch (seconds on
    2 CPUs). Fire and forget: nothing waits for these tasks."""
    import ray

    writers = int((envelope.num_cpus - actor_cpus(envelope) * envelope.actor_pool_size())
                  // WRITE_TASK_CPUS)
    task = ray.remote(num_cpus=WRITE_TASK_CPUS, max_retries=0)(_import_writer)
    for _ in range(max(1, writers)):
        task.remote()


def _warm_ray_data() -> None:
    """Start Ray Data's own per-cluster actors (stats, autoscaling coordinator, actor
    location tracker) now, while the driver preloads the day: a process's first day
    otherwise waited for three fresh processes to boot and import Ray Data, beside the
    actor pool's, on the same CPUs. These helpers are Ray Data internals: if an upgrade
    moves them, the first day just starts slower, as before."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.execution.node_trackers.actor_location import (
            get_or_create_actor_location_tracker,
        )
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:
        return
    for create in (get_or_create_stats_actor, get_or_create_autoscaling_coordinator,
                   get_or_create_actor_location_tracker):
        with contextlib.suppress(Exception):
            create()


def write_concurrency(envelope: RayEnvelope) -> int:
    """Write tasks run at once: at most one per CPU. Half-CPU tasks would let twice as many
    run once the actors finish, each in a fresh worker process that first spends ~3 CPU-s
    importing Ray Data, for a tail that one writer per CPU already keeps every core busy in."""
    return max(1, envelope.num_cpus)


def _import_writer() -> None:
    _parquet_sink(Path("."), "zstd", [])


def idle_workers(envelope: RayEnvelope) -> int:
    """Worker processes the local raylet keeps alive when idle. Ray's default (one per CPU)
    is fewer than one day's plan uses at once (actors, writers at half a CPU, reads at none),
    so each day's last tasks waited seconds for fresh processes to boot while others idled."""
    return 2 * envelope.num_cpus + 4


_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_ORIGINAL_LOOPBACK_ENV = os.environ.get(_LOOPBACK_ENV)


def redact_address(address: str) -> str:
    """The address without any `user:password@` in it, fit for logs and errors."""
    return re.sub(r"^((?:[a-z][a-z0-9+.-]*://)?)[^/@]*@", r"\1***@", address, flags=re.I)


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds when the Ray address answers nothing: `ray.init` would retry for minutes."""
    if not address or address in ("auto", "local"):
        return
    shown = redact_address(address)
    host, sep, port = address.split("://", 1)[-1].rsplit("@", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DaedalusError(f"ray address: {shown!r} is not host:port (fix: pass --ray-address"
                            " like 127.0.0.1:6379 or ray://host:10001, or drop it for a local"
                            " cluster)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DaedalusError(f"ray address: nothing answers at {shown} ({exc.strerror or exc})"
                            " (fix: start the cluster with `ray start --head`, correct"
                            " --ray-address / RAY_ADDRESS / ray.address, or drop it for a local"
                            " cluster)") from None


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit("@", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _loopback_only(on: bool) -> None:
    """Keep Ray's servers on 127.0.0.1 for a cluster on this machine.

    Ray turns a 127.0.0.1 node address into the machine's routable one and then binds its
    gRPC servers to every interface; its "local-only cluster" switch (the flag that Ray
    sets on macOS/Windows) keeps the node, and every server, on the loopback. The child
    processes read it from the environment, this process from Ray's constants.
    """
    if on:
        os.environ[_LOOPBACK_ENV] = "0"
    elif _ORIGINAL_LOOPBACK_ENV is None:
        os.environ.pop(_LOOPBACK_ENV, None)
    else:
        os.environ[_LOOPBACK_ENV] = _ORIGINAL_LOOPBACK_ENV
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(
            _LOOPBACK_ENV, not ray_constants.IS_WINDOWS_OR_OSX)


_AUTH_ENV = "RAY_AUTH_MODE"
_ORIGINAL_AUTH_ENV = os.environ.get(_AUTH_ENV)


def _match_cluster_auth(address: str) -> None:
    """Use Ray token auth exactly when the cluster does (a RAY_AUTH_MODE set by the user wins).

    A mismatch fails late and obscurely: a driver with a token whose cluster has none refuses
    the cluster's calls to it, so the GCS takes the driver for dead and cancels every actor
    it owns before it starts ("all references to the actor were removed"). Ray picks the
    driver's mode from RAY_AUTH_MODE, which its own local `ray.init()` sets to token for the
    whole process, so ask the cluster instead: its GCS refuses a tokenless call only when
    tokens are on. A cluster that does not answer the probe is left to Ray's default.
    """
    if _ORIGINAL_AUTH_ENV is not None:
        return
    wants = _cluster_wants_token(address)
    if wants is not None:
        _set_auth_mode("token" if wants else "disabled")


def _cluster_wants_token(address: str, timeout: float = 5.0) -> bool | None:
    if address in ("auto", "local") or "://" in address:
        return None
    import grpc

    target = address.rsplit("@", 1)[-1].rstrip("/")
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=timeout)
        except grpc.RpcError as exc:
            return True if exc.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return False


def _set_auth_mode(mode: str | None) -> None:
    """Set this process's Ray auth mode (None: Ray's default) and make Ray re-read it, token
    cache included: a token cached by an earlier local cluster keeps the mode on otherwise."""
    if mode is None:
        os.environ.pop(_AUTH_ENV, None)
    else:
        os.environ[_AUTH_ENV] = mode
    if "ray" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _fit_to_cluster(envelope: RayEnvelope) -> RayEnvelope:
    """The envelope as far as the connected cluster can hold it (CPUs are what actors need)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    if cpus >= envelope.num_cpus:
        return envelope
    note = f"ray num_cpus {envelope.num_cpus} is more than the cluster's {cpus}; using {cpus}"
    return replace(envelope, num_cpus=cpus,
                   system_reserved_cpus=min(envelope.system_reserved_cpus, max(0, cpus - 1)),
                   notes=(*envelope.notes, note))


def shutdown_ray() -> None:
    """Stop (or disconnect from) this process's Ray; the next stage run starts afresh."""
    global _RUNTIME
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _RUNTIME = None


def _quiet_ray_logs() -> None:
    logging.getLogger("ray").setLevel(logging.ERROR)


@contextlib.contextmanager
def _no_fork_warning() -> Iterator[None]:
    """Ray starts its processes by fork+exec, which Lance's at-fork hook warns about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        yield


def _data_context():
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.use_datasource_v2 = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return ctx


# -- the stage ----------------------------------------------------------------------------------


def skeleton_files(skeleton_root: Path, day: dt.date) -> list[Path]:
    """The skeleton day's files in row order: `dt=` folder (manifest order), else flat file."""
    folder = day_path(skeleton_root, day)
    if folder.is_dir():
        manifest = read_manifest(folder)
        if manifest and manifest.get("files"):
            return [folder / f for f in manifest["files"]]
        return sorted(folder.glob("*.parquet"), key=_natural)
    flat = Path(skeleton_root) / f"{day:%Y-%m-%d}.parquet"
    return [flat] if flat.is_file() else []


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def skeleton_source(files: list[Path], columns: list[str], batch_rows: int):
    """A Ray Data datasource over the skeleton day's files, in order: one read task per run of
    whole row groups of about `batch_rows` rows (at least one group), reading only `columns`.

    Not `read_parquet`, for two reasons measured on the bench day: it samples files in a Ray
    task before it returns, and on a process's first day that task waited seconds for a
    worker process to boot and import Ray Data, holding back the whole plan (here every
    piece's rows and size come from the footers); and it merges a file's batches into ~128 MiB
    blocks, so an actor got ~300K rows at once and the writers waited for all of them. A
    piece per block keeps the stream as fine as the batches."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    pieces = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        wanted = [i for i in range(meta.num_columns)
                  if meta.schema.column(i).path.split(".")[0] in columns]
        groups, rows, size = [], 0, 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            groups.append(g)
            rows += group.num_rows
            size += sum(group.column(i).total_uncompressed_size for i in wanted)
            if rows >= batch_rows or g == meta.num_row_groups - 1:
                pieces.append((str(path), tuple(groups), rows, size))
                groups, rows, size = [], 0, 0

    class SkeletonDay(Datasource):
        def get_name(self) -> str:
            return "SkeletonDay"

        def estimate_inmemory_data_size(self) -> int:
            return sum(size for *_, size in pieces)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list:
            return [ReadTask(functools.partial(_read_piece, path, groups, columns, batch_rows),
                             BlockMetadata(num_rows=rows, size_bytes=size, input_files=[path],
                                           exec_stats=None),
                             per_task_row_limit=per_task_row_limit)
                    for path, groups, rows, size in pieces]

    return SkeletonDay(), len(pieces)


def _read_piece(path: str, groups: tuple[int, ...], columns: list[str],
                batch_rows: int) -> Iterator[pa.Table]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, row_groups=groups,
                                                   columns=columns):
        yield pa.Table.from_batches([batch])


def _check_skeleton(files: list[Path], plan: EnrichPlan) -> int:
    """Every file has the sink's columns and the enrichments' inputs; returns the row count."""
    rows = 0
    produced = {e.name for e in plan.enrichments}
    for path in files:
        meta = pq.ParquetFile(path)
        schema = meta.schema_arrow
        for name in plan.columns:
            if name not in produced and schema.get_field_index(name) < 0:
                raise DaedalusError(f"{path}: {name}: column missing from the skeleton day (fix:"
                                    " rerun the skeleton stage for it, e.g. without --enrich-only)")
        for e in plan.enrichments:
            field = schema.field(e.input_column) if e.input_column in schema.names else None
            want_list = e.kind == "avg_pool"
            ok = field is not None and (
                (want_list and pa.types.is_list(field.type)
                 and pa.types.is_integer(field.type.value_type))
                or (not want_list and pa.types.is_integer(field.type)))
            if not ok:
                kind = "list<int64>" if want_list else "int64"
                got = field.type if field else "no column"
                raise DaedalusError(f"{path}: {e.input_column}: enrichment {e.name!r} needs a"
                                    f" {kind} column, got {got} (fix: rerun the skeleton stage)")
        rows += meta.metadata.num_rows
    return rows


def day_table(files: list[Path], enrichments: list[Enrichment], store: dict) -> EmbeddingTable:
    """One store's vectors for the day: read the input columns, take once from Lance."""
    columns = sorted({e.input_column for e in enrichments})
    parts = [np.empty(0, np.int64)]
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=262_144, columns=columns):
            parts.append(needed_ids(pa.Table.from_batches([batch]), enrichments))
    return StoreReader(**store).table(unique_ids(np.concatenate(parts)))


def actor_cpus(envelope: RayEnvelope) -> float:
    """CPUs each actor asks for: one, unless the pool would leave no room for one write
    task (a pool holding every CPU deadlocks the stream); then an equal share of the rest."""
    pool = envelope.actor_pool_size()
    return max(0.1, min(1.0, (envelope.num_cpus - WRITE_TASK_CPUS) / pool))


def _parquet_sink(folder: Path, compression: str, plain: list[str],
                  handoff: tuple[Any, str] | None = None):
    """The write side of the plan: each block the actors return (compact form) is expanded to
    the contract's list<halffloat> columns and written as `part-<task>-<block>.parquet`,
    numbered by write task so names sort like the rows. Expanding here rather than in the
    actor keeps the day's ~4.6 GB of float16 vectors out of the object store: only each
    batch's distinct window means cross it, and looked-up vectors are gathered straight from
    the day's preloaded matrix (`handoff`), which the writers map zero-copy as the actors do."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class EnrichedParquetSink(Datasink[int]):
        def write(self, blocks, ctx) -> int:
            tables = handed_over(handoff) if handoff is not None else {}
            rows = sum(write_part(BlockAccessor.for_block(block).to_arrow(),
                                  folder / f"part-{ctx.task_idx:05d}-{i}.parquet",
                                  compression, plain, tables)
                       for i, block in enumerate(blocks))
            del tables
            # An idle worker never gives its allocator's free pages back on its own, and the
            # raylet keeps several writers alive between tasks (see `idle_workers`).
            pa.default_memory_pool().release_unused()
            return rows

    return EnrichedParquetSink()


def write_part(table: pa.Table, path: Path, compression: str, plain: list[str],
               tables: dict[str, EmbeddingTable] | None = None) -> int:
    """Write one compact block (`compact_table`'s form) as a parquet file of list<halffloat>
    columns, expanding and writing `ROW_GROUP_ROWS` rows at a time (`tables`: the shared
    stores its row-number columns point into). Embedding columns get neither dictionary
    pages nor statistics (`plain` lists the columns that do).

    Row groups of a whole 50K-row batch (~230 MB expanded) cost a third more: buffers that
    large go straight back to the OS when freed, so every batch paid its page faults again
    (on 2 CPUs, ~40% of the writer's time was system time)."""
    if table.num_rows == 0:
        return 0
    schema = expand_table(table.slice(0, 0), tables).schema
    with pq.ParquetWriter(path, schema, compression=compression, use_dictionary=plain,
                          write_statistics=plain) as writer:
        for start in range(0, table.num_rows, ROW_GROUP_ROWS):
            writer.write_table(expand_table(table.slice(start, ROW_GROUP_ROWS), tables),
                               row_group_size=ROW_GROUP_ROWS)
    return table.num_rows


def prepare_enrich(pipeline: OperatorPipeline, config: Config, envelope: RayEnvelope,
                   progress: Progress = print) -> tuple[EnrichPlan, dict[str, dict]]:
    """What the stage checks before any day, so a bad input fails before anything is written:
    the DAG, the batch size, the Ray address, and each store (built here on first use)."""
    plan = EnrichPlan.build(pipeline, config)
    batch_rows = config.runtime.enrich_batch_rows
    dims = {s.name: s.embedding_dim for s in config.aggregations.embedding_stores}
    if any(batch_rows * dims[s] >= 2**31 for s in plan.stores):
        raise DaedalusError(f"{config.runtime_path}: enrich_batch_rows: {batch_rows:,} rows of"
                            " embeddings overflow one Arrow list column (fix: use at most 1000000)")
    check_ray_address(envelope.address)
    stores = {}
    for store in plan.stores:
        spec = config.aggregations.store(store)
        stores[store] = {"path": str(ensure_store(config, store, progress).resolve()),
                         "id_column": spec.id_column, "embedding_column": spec.embedding_column}
    return plan, stores


def run_enrich_stage(
    pipeline: OperatorPipeline,
    config: Config,
    days: list[dt.date],
    skeleton_root: Path,
    enriched_root: Path,
    *,
    envelope: RayEnvelope,
    progress: Progress = print,
    force: bool = False,
    prepared: tuple[EnrichPlan, dict[str, dict]] | None = None,
) -> list[DayResult]:
    """Write `<enriched_root>/dt=YYYY-MM-DD/` for every skeleton day not already enriched.

    A day is skipped when its manifest matches the skeleton day and store it would read now;
    a stale or incomplete one is rewritten, and `force` rewrites every day. A skeleton day
    recorded empty (no impressions) has no enriched day either: one left from before is
    retired, and the day gets its own 0-row sidecar manifest, so a rerun skips it.
    `prepared` is `prepare_enrich`'s result when the caller has already checked the inputs.
    """
    from daedalus.layout.days import retire_day
    from daedalus.layout.manifest import remove_empty_manifest, write_empty_manifest

    plan, stores = prepared or prepare_enrich(pipeline, config, envelope, progress)
    skeleton_root = Path(skeleton_root).resolve()
    enriched_root = ensure_writable(Path(enriched_root), "enriched output root").resolve()
    sweep_staging(enriched_root)
    versions = {s: store_version(Path(args["path"])) for s, args in stores.items()}
    results = []
    runtime: RayEnvelope | None = None
    for day in sorted(set(days)):
        started = time.perf_counter()
        files = skeleton_files(Path(skeleton_root), day)
        empty_skeleton = not files and (read_manifest(day_path(skeleton_root, day)) or {}).get(
            "rows") == 0  # no folder, a 0-row sidecar: the skeleton stage found no impressions
        if not files and not empty_skeleton:
            message = (f"no skeleton day at {day_path(skeleton_root, day)} (no impressions, or"
                       " the skeleton stage has not run for it): nothing to enrich")
            results.append(DayResult("enrich", day, "empty", 0, None, 0.0, message))
            progress(f"enrich {day}: {message}")
            continue
        fingerprint = enrich_fingerprint(pipeline, config, day, Path(skeleton_root), versions)
        target = day_path(enriched_root, day)
        state, reason = day_state(target, fingerprint)
        if empty_skeleton:
            if state == "empty" and not force:
                results.append(DayResult("enrich", day, "skipped", 0, None, 0.0, "no impressions"))
                progress(f"enrich {day}: skipped, no impressions")
                continue
            with day_lock(enriched_root, day):
                retired = retire_day(enriched_root, day)
                write_empty_manifest(enriched_root, day, Manifest(
                    stage="enrich", day=day.isoformat(), rows=0, files=[],
                    fingerprint=fingerprint))
            message = (f"no impressions now: removed the stale day {retired}" if retired
                       else f"no rows: no impressions on {day}, nothing written")
            results.append(DayResult("enrich", day, "empty", 0, None,
                                     time.perf_counter() - started, message))
            progress(f"enrich {day}: {message}")
            continue
        if state == "complete" and not force:
            rows = int((read_manifest(target) or {}).get("rows", 0))
            results.append(DayResult("enrich", day, "skipped", rows, str(target), 0.0,
                                     "already present"))
            progress(f"enrich {day}: skipped, already present ({rows:,} rows)")
            continue
        if state != "absent":
            progress(f"enrich {day}: rewriting, {'--force' if force else reason}")
        rows = _check_skeleton(files, plan)
        if rows == 0:
            message = f"no rows in the skeleton day {day}: nothing written"
            results.append(DayResult("enrich", day, "empty", 0, None, 0.0, message))
            progress(f"enrich {day}: {message}")
            continue
        with day_lock(enriched_root, day), \
                ThreadPoolExecutor(1, thread_name_prefix="enrich-early-preload") as early:
            loaded, timings = None, {}
            if runtime is None:
                if envelope.preload_day_embeddings:
                    loaded = early.submit(_day_tables, plan, files, stores)
                ray_started = time.perf_counter()
                runtime = ray_runtime(envelope, progress)
                timings["ray_start"] = time.perf_counter() - ray_started
            written, parts = _enrich_day(plan, config, day, files, rows, stores, fingerprint,
                                         enriched_root, runtime, timings, loaded)
            remove_empty_manifest(enriched_root, day)
        seconds = time.perf_counter() - started
        rate = rows / max(seconds, 1e-9)
        message = (f"wrote {written:,} rows in {len(parts)} file(s) → {target}"
                   f" ({runtime.actor_pool_size()} actor(s), {rate:,.0f} rows/s)")
        results.append(DayResult("enrich", day, "written", written, str(target), seconds, message))
        progress(f"enrich {day}: {message}")
    return results


def _enrich_day(plan: EnrichPlan, config: Config, day: dt.date, files: list[Path], rows: int,
                stores: dict[str, dict], fingerprint, enriched_root: Path,
                envelope: RayEnvelope, timings: dict[str, float],
                loaded: Future | None = None) -> tuple[int, list[str]]:
    """`loaded`: the day's tables, already being read while Ray started (a process's first
    day); otherwise the preload reads them itself."""
    import ray
    from ray.data import ActorPoolStrategy

    _data_context()
    spec: dict[str, Any] = {"enrichments": [e.__dict__ for e in plan.enrichments],
                            "columns": plan.columns, "handoff": None, "readers": {}}
    if envelope.preload_day_embeddings:
        preload = _preloading(plan, files, stores, day, timings, loaded)
    else:
        spec["readers"] = stores
        preload = contextlib.nullcontext(None)

    produced = {e.name for e in plan.enrichments}
    read_columns = [c for c in plan.columns if c not in produced]
    read_columns += sorted({e.group_column for e in plan.enrichments if e.group_column}
                           - set(read_columns))
    plain = [c for c in plan.columns if c not in produced]
    pool = envelope.actor_pool_size()
    with staged_day(enriched_root, day) as staging, preload as handoff:
        started = time.perf_counter()
        spec["handoff"] = handoff
        source, pieces = skeleton_source(files, read_columns, config.runtime.enrich_batch_rows)
        ds = ray.data.read_datasource(source, override_num_blocks=pieces, concurrency=1,
                                      num_cpus=READ_TASK_CPUS)
        with warnings.catch_warnings():
            # max_restarts only passes through the deprecated **ray_remote_args. No restarts:
            # a restarted actor could not get its preloaded arguments back (ray#53727), and a
            # failed day is simply run again.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            ds = ds.map_batches(EnrichBatches, batch_format="pyarrow",
                                batch_size=config.runtime.enrich_batch_rows,
                                compute=ActorPoolStrategy(size=pool),
                                fn_constructor_kwargs={"spec": spec},
                                num_cpus=actor_cpus(envelope),
                                udf_modifying_row_count=False, max_restarts=0)
        with warnings.catch_warnings():
            # A small day has fewer blocks than the cap: Ray Data warns about it on every run.
            warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
            ds.write_datasink(_parquet_sink(staging, plan.sink.compression, plain, handoff),
                              ray_remote_args={"num_cpus": WRITE_TASK_CPUS},
                              concurrency=write_concurrency(envelope))
        timings["ray"] = time.perf_counter() - started
        parts = sorted((p.name for p in staging.glob("*.parquet")), key=lambda n: _natural(Path(n)))
        written = sum(pq.ParquetFile(staging / p).metadata.num_rows for p in parts)
        if written != rows:
            raise DaedalusError(f"{plan.op.name}: wrote {written:,} rows for the {rows:,} rows of"
                                f" skeleton day {day} (fix: rerun; if it persists, report it)")
        write_manifest(staging, Manifest(stage="enrich", day=day.isoformat(), rows=written,
                                         files=parts, fingerprint=fingerprint,
                                         timings={k: round(v, 3) for k, v in timings.items()}))
        crash_point("enrich.before_publish")
    return written, parts


def _store_table(plan: EnrichPlan, files: list[Path], stores: dict[str, dict],
                 store: str) -> EmbeddingTable:
    return day_table(files, [e for e in plan.enrichments if e.store == store], stores[store])


def _day_tables(plan: EnrichPlan, files: list[Path], stores: dict[str, dict]
                ) -> dict[str, EmbeddingTable]:
    """Every store's vectors for the day, read with no Ray: a process's first day reads them
    while Ray starts (3-4 s on 2 CPUs, one core mostly idle), not after."""
    return {store: _store_table(plan, files, stores, store) for store in plan.stores}


@contextlib.contextmanager
def _preloading(plan: EnrichPlan, files: list[Path], stores: dict[str, dict], day: dt.date,
                timings: dict[str, float], loaded: Future | None = None
                ) -> Iterator[tuple[Any, str]]:
    """Preload the day's vectors on a driver thread while the caller runs the Ray Data plan,
    and hand them to its actors through the runtime's PreloadBox (yields the actors' handle to
    them). `loaded`, when given, is the day's tables already being read (`_day_tables`). The
    driver owns the vectors' object refs until the plan is done. When the plan fails and the
    preload failed too, the preload's error is the one raised: it is the cause, the actors
    only reported it."""
    import ray

    box, key = _RUNTIME.box, f"{day}/{uuid.uuid4().hex}"
    refs: list = []
    failed = threading.Event()

    def load() -> None:
        started = time.perf_counter()
        try:
            preloaded = {}
            tables = loaded.result() if loaded is not None else None
            for store in plan.stores:
                table = (tables.pop(store) if tables is not None
                         else _store_table(plan, files, stores, store))
                pair = (ray.put(table.ids), ray.put(table.matrix))
                refs.extend(pair)
                preloaded[store] = pair
                del table
        except BaseException as exc:
            failed.set()
            box.put.remote(key, f"the driver's preload of {day} failed: {exc}")
            raise
        timings["preload"] = time.perf_counter() - started
        box.put.remote(key, preloaded)

    with ThreadPoolExecutor(1, thread_name_prefix="enrich-preload") as pool, \
            _console_quiet_while(failed):
        loading = pool.submit(load)
        try:
            yield box, key
        except BaseException:
            cause = loading.exception()
            if cause is not None:
                raise cause from None
            raise
        finally:
            box.drop.remote(key)
        loading.result()


@contextlib.contextmanager
def _console_quiet_while(flag: threading.Event) -> Iterator[None]:
    """Once `flag` is set, Ray Data's console handlers drop its records (its log file in the
    Ray session keeps them): a failed preload makes the actors fail, which Ray Data reports
    with a traceback of its own internals, while the error to show is the preload's."""

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not flag.is_set()

    quiet = Quiet()
    handlers = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
