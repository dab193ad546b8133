"""The enrich stage: append the embedding columns on actors backed by the Lance store, Ray
Data's or (the operator tagged `daft`) Daft's (`daft_day`).

Per day on Ray Data, one streaming plan: a read of the skeleton day's files in order
(`io.skeleton_source`, pieces of whole row groups) → `map_batches` on an actor pool
(`batch.EnrichBatches`, pyarrow batches) → a parquet datasink writing into a staging folder
(`io.parquet_sink`), with `preserve_order` on so every file is a contiguous, chronological
range of the day. The staging folder gets a manifest and is renamed into place: a day is
complete or absent.

The stage runs exactly the days it is given; which days need work is decided once, by
`daedalus.engine.plan`. Ray is the caller's `RayRuntime`, started on the first day that
needs it; without one, the stage starts its own and stops it when it returns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from daedalus.core.config import Config
from daedalus.core.daft_runner import use_daft_runner
from daedalus.core.envelope import RayEnvelope
from daedalus.core.errors import DaedalusError
from daedalus.core.faults import crash_point
from daedalus.core.operators import OperatorPipeline
from daedalus.core.results import DayResult
from daedalus.enrich.batch import EnrichBatches
from daedalus.enrich.daft_day import enrich_on_daft
from daedalus.enrich.io import (
    check_skeleton,
    configure_ray_data,
    parquet_sink,
    skeleton_files,
    skeleton_source,
    written_parts,
)
from daedalus.enrich.plan import EnrichPlan
from daedalus.enrich.preload import day_tables, preloading
from daedalus.enrich.ray_runtime import (
    READ_TASK_CPUS,
    WRITE_TASK_CPUS,
    RayRuntime,
    actor_cpus,
    check_ray_address,
    write_concurrency,
)
from daedalus.layout.days import (
    day_lock,
    day_path,
    ensure_writable,
    retire_day,
    staged_day,
    sweep_staging,
)
from daedalus.layout.manifest import (
    Manifest,
    enrich_fingerprint,
    read_manifest,
    remove_empty_manifest,
    write_empty_manifest,
    write_manifest,
)
from daedalus.storage.objects import ObjectPath
from daedalus.storage.s3 import S3Settings
from daedalus.store.build import ensure_store, node_store_recipe, store_version

Progress = Callable[[str], None]


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
    prepared: tuple[EnrichPlan, dict[str, dict]] | None = None,
    runtime: RayRuntime | None = None,
) -> list[DayResult]:
    """Write `<enriched_root>/dt=YYYY-MM-DD/` for each of `days`, whatever is there now.

    A day with no skeleton day is reported empty and left alone. A skeleton day recorded
    empty (no impressions) has no enriched day either: one left from before is retired, and
    the day gets its own 0-row sidecar manifest, which the plan then reads as up to date.
    `prepared` is `prepare_enrich`'s result when the caller has already checked the inputs;
    `runtime` is the caller's Ray (None: the stage's own, stopped when it returns).
    """
    plan, stores = prepared or prepare_enrich(pipeline, config, envelope, progress)
    skeleton_root = _resolved(skeleton_root)
    enriched_root = _resolved(ensure_writable(enriched_root, "enriched output root"))
    sweep_staging(enriched_root)
    versions = {s: store_version(Path(args["path"])) for s, args in stores.items()}
    with contextlib.ExitStack() as stack:
        if runtime is None:
            runtime = stack.enter_context(RayRuntime(progress))
        return [_run_day(plan, config, day, skeleton_root, enriched_root, stores, versions,
                         envelope, runtime, pipeline, progress)
                for day in sorted(set(days))]


def _resolved(root: Path | ObjectPath) -> Path | ObjectPath:
    return root if isinstance(root, ObjectPath) else Path(root).resolve()


def _run_day(plan: EnrichPlan, config: Config, day: dt.date, skeleton_root: Path,
             enriched_root: Path, stores: dict[str, dict], versions: dict[str, str],
             envelope: RayEnvelope, runtime: RayRuntime, pipeline: OperatorPipeline,
             progress: Progress) -> DayResult:
    started = time.perf_counter()
    files = skeleton_files(skeleton_root, day)
    empty_skeleton = not files and (read_manifest(day_path(skeleton_root, day)) or {}).get(
        "rows") == 0  # no folder, a 0-row sidecar: the skeleton stage found no impressions
    if not files and not empty_skeleton:
        message = (f"no skeleton day at {day_path(skeleton_root, day)} (no impressions, or"
                   " the skeleton stage has not run for it): nothing to enrich")
        progress(f"enrich {day}: {message}")
        return DayResult("enrich", day, "empty", 0, None, 0.0, message)
    fingerprint = enrich_fingerprint(pipeline, config, day, skeleton_root, versions)
    target = day_path(enriched_root, day)
    if empty_skeleton:
        with day_lock(enriched_root, day):
            retired = retire_day(enriched_root, day)
            write_empty_manifest(enriched_root, day, Manifest(
                stage="enrich", day=day.isoformat(), rows=0, files=[], fingerprint=fingerprint))
        message = (f"no impressions now: removed the stale day {retired}" if retired
                   else f"no rows: no impressions on {day}, nothing written")
        progress(f"enrich {day}: {message}")
        return DayResult("enrich", day, "empty", 0, None, time.perf_counter() - started, message)
    rows = check_skeleton(files, plan)
    if rows == 0:
        message = f"no rows in the skeleton day {day}: nothing written"
        progress(f"enrich {day}: {message}")
        return DayResult("enrich", day, "empty", 0, None, 0.0, message)
    with day_lock(enriched_root, day), \
            ThreadPoolExecutor(1, thread_name_prefix="enrich-early-preload") as early:
        loaded, timings = None, {}
        on_daft = plan.op.engine == "daft"
        if not runtime.started and envelope.preload_day_embeddings and not on_daft:
            loaded = early.submit(day_tables, plan, files, stores)
        ray_started = time.perf_counter()
        first = not runtime.started
        effective = envelope.clamped_to_machine()  # Daft's native runner: this machine
        if not on_daft or envelope.address:  # Daft's Ray runner uses the run's Ray connection
            effective = runtime.start(envelope, worker_env=S3Settings.resolve(
                config.base.object_storage).environment())
            if first:
                timings["ray_start"] = time.perf_counter() - ray_started
        if on_daft:
            use_daft_runner(on_ray=bool(envelope.address))
        written, parts = _enrich_day(plan, config, day, files, rows, stores, fingerprint,
                                     enriched_root, effective, runtime, timings, loaded, progress)
        remove_empty_manifest(enriched_root, day)
    seconds = time.perf_counter() - started
    rate = rows / max(seconds, 1e-9)
    engine = "daft" if on_daft else "ray data"
    message = (f"wrote {written:,} rows in {len(parts)} file(s) → {target}"
               f" ({effective.actor_pool_size()} {engine} actor(s), {rate:,.0f} rows/s)")
    progress(f"enrich {day}: {message}")
    return DayResult("enrich", day, "written", written, str(target), seconds, message)


def _enrich_day(plan: EnrichPlan, config: Config, day: dt.date, files: list[Path], rows: int,
                stores: dict[str, dict], fingerprint, enriched_root: Path,
                envelope: RayEnvelope, runtime: RayRuntime, timings: dict[str, float],
                loaded: Future | None, progress: Progress) -> tuple[int, list[str]]:
    """Write the day into a staging folder on the operator's engine, check its rows, add the
    manifest and publish it. `loaded`: the day's tables, already being read while Ray started
    (a process's first day); otherwise the preload reads them itself."""
    node_stores = {name: recipe for name, args in stores.items()
                   if (recipe := node_store_recipe(config, name, Path(args["path"])))}
    with staged_day(enriched_root, day, direct=True) as staging:
        started = time.perf_counter()
        if plan.op.engine == "daft":
            enrich_on_daft(plan, day, files, rows, stores, node_stores, staging,
                           config.runtime.enrich_batch_rows, envelope, progress)
            timings["daft"] = time.perf_counter() - started
        else:
            _on_ray_data(plan, config, day, files, stores, node_stores, staging, envelope,
                         runtime, timings, loaded)
            timings["ray"] = time.perf_counter() - started
        listed = written_parts(staging)
        parts, written = [name for name, _ in listed], sum(rows for _, rows in listed)
        if written != rows:
            raise DaedalusError(f"{plan.op.name}: wrote {written:,} rows for the {rows:,} rows of"
                                f" skeleton day {day} (fix: rerun; if it persists, report it)")
        write_manifest(staging, Manifest(stage="enrich", day=day.isoformat(), rows=written,
                                         files=parts, fingerprint=fingerprint,
                                         timings={k: round(v, 3) for k, v in timings.items()}))
        crash_point("enrich.before_publish")
    return written, parts


def _on_ray_data(plan: EnrichPlan, config: Config, day: dt.date, files: list[Path],
                 stores: dict[str, dict], node_stores: dict[str, dict], staging,
                 envelope: RayEnvelope, runtime: RayRuntime, timings: dict[str, float],
                 loaded: Future | None) -> None:
    """The day's parts into `staging` through one streaming Ray Data plan."""
    import ray
    from ray.data import ActorPoolStrategy

    configure_ray_data()
    spec: dict[str, Any] = {"enrichments": [e.__dict__ for e in plan.enrichments],
                            "columns": plan.columns, "handoff": None, "readers": {}}
    if envelope.preload_day_embeddings:
        preload = preloading(runtime.box, plan, files, stores, day, timings, loaded)
    else:
        spec["readers"] = stores
        spec["node_stores"] = node_stores
        preload = contextlib.nullcontext(None)

    pool = envelope.actor_pool_size()
    with preload as handoff:
        spec["handoff"] = handoff
        source, pieces = skeleton_source(files, plan.read_columns, config.runtime.enrich_batch_rows)
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
            ds.write_datasink(parquet_sink(staging, plan.sink.compression, plan.plain_columns, handoff),
                              ray_remote_args={"num_cpus": WRITE_TASK_CPUS},
                              concurrency=write_concurrency(envelope))
