"""Enrich stage benchmark: the `bench` preset's 1M-row day through `run_enrich_stage`.

One run = a fresh child process (its own Ray, started on the machine's 2 CPUs) that enriches
the day into an empty output root. Reported: rows/s of the whole stage (from the call of
`run_enrich_stage` to its return: store check, day preload, Ray Data read → actors → write,
manifest, rename; Ray's start is timed apart, a long-lived process pays it once), and the
peak memory of the whole process tree (driver, raylet, GCS, workers, object store; PSS, so
shared pages count once), sampled by bench/memcap.py's `TreeSampler`.

In the same run, the floor: the time to write just the same two float16 list columns, read
back from the stage's output, to one parquet file with the stage's writer settings (zstd, no
dictionary, no statistics, its row groups): what any enrich stage has to pay
at least. Target: stage <= 1.3x floor on 2 cores.

`--kernel` also times the avg-pool kernel alone on synthetic like streams, for a 7-day and a
30-day window with no cap, against the same kernel with every row on its own (so it sums every
list entry, the naive cost): the per-user prefix sums' cost follows rows and new likes, not
list length.

`--warm` enriches the day a second time in the same process (what every later day of a backfill
pays: Ray Data's own actors and the worker processes already exist). `--single-process` runs
the same work with no Ray at all (preload, kernel, writer, one process): Ray's overhead.

Usage: uv run python bench/enrich.py [--repeat 3] [--quiet-load 1.0] [--no-preload]
       [--num-workers N] [--kernel] [--warm] [--single-process]
Needs the bench sources (generated under data/bench/sources if missing) and builds the
skeleton day (data/bench/enrich/skeleton) and the store (data/bench/store) once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

BENCH = REPO / "data/bench"
SOURCES = BENCH / "sources"
STORE_ROOT = BENCH / "store"
WORK = BENCH / "enrich"
SKELETON = WORK / "skeleton"
ENRICHED = WORK / "skeleton_enriched"
DAY = dt.date(2026, 2, 1)
EMBEDDING_COLUMNS = ["image_embedding", "like_artwork_avg_embeds"]


def load():
    os.environ["DAEDALUS_SOURCES_ROOT"] = str(SOURCES)
    os.environ["DAEDALUS_STORE_ROOT"] = str(STORE_ROOT)
    from daedalus.core.config import load_config
    from daedalus.core.registry import load_registry
    from daedalus.engine.pipeline import compiled_pipeline

    os.chdir(REPO)
    config = load_config().with_runtime(output_root=SKELETON, feed_start=DAY, feed_end=DAY)
    registry = load_registry("feature_views", "feature_services")
    return config, registry, compiled_pipeline(registry, "dssm_ranking", config)


def prepare(log) -> None:
    """Bench sources, the skeleton day and the store, each made once."""
    from daedalus.demo.data import PRESETS, generate_demo_data
    from daedalus.skeleton.stage import run_skeleton_stage
    from daedalus.store import build as embedding_store

    if not (SOURCES / "_demo_data.json").exists():
        log(f"generating the bench sources under {SOURCES} ...")
        generate_demo_data(SOURCES, PRESETS["bench"])
    config, _, pipeline = load()
    if not (SKELETON / f"dt={DAY}").exists():
        log("writing the skeleton day (skeleton stage) ...")
        run_skeleton_stage(pipeline, config, [DAY], SKELETON, progress=log)
    started = time.perf_counter()
    info = embedding_store.build_store(config, "artwork_embeddings", progress=log)
    log(f"store: {info['rows']:,} vectors ({time.perf_counter() - started:.1f}s to open/build)")


def child(args: argparse.Namespace) -> None:
    """One measured run, in its own process: start Ray, enrich the day, print timings."""
    from daedalus.core.envelope import RayEnvelope
    from daedalus.enrich.ray_runtime import RayRuntime
    from daedalus.enrich.stage import run_enrich_stage

    config, _, pipeline = load()
    envelope = RayEnvelope.from_settings(config.runtime.ray, num_workers=args.num_workers,
                                         preload_day_embeddings=not args.no_preload)
    shutil.rmtree(ENRICHED, ignore_errors=True)
    quiet = lambda _: None  # noqa: E731
    with RayRuntime(quiet) as runtime:
        started = time.perf_counter()
        cpu = time.process_time()
        [result] = run_enrich_stage(pipeline, config, [DAY], SKELETON, ENRICHED,
                                    envelope=envelope, progress=quiet, runtime=runtime)
        seconds = time.perf_counter() - started
        manifest = json.loads((ENRICHED / f"dt={DAY}" / "_manifest.json").read_text())
        effective = runtime.start(envelope)  # the running one, as the stage sized it
        # The stage starts Ray on its first day (reading that day's vectors meanwhile) and
        # records how long the day waited for it; the cold day is the rest.
        ray_start = manifest["timings"]["ray_start"]
        out = {"rows": result.rows, "stage_s": seconds - ray_start, "ray_start_s": ray_start,
               "first_call_s": seconds, "driver_cpu_s": time.process_time() - cpu,
               "files": len(manifest["files"]), "timings": manifest["timings"],
               "actors": effective.actor_pool_size(), "ray_cpus": effective.num_cpus}
        if args.warm:
            # The same day again in the same process: what each later day of a backfill
            # pays once Ray Data's own actors and the worker processes exist.
            started = time.perf_counter()
            run_enrich_stage(pipeline, config, [DAY], SKELETON, ENRICHED, envelope=envelope,
                             progress=quiet, runtime=runtime)
            out["warm_stage_s"] = time.perf_counter() - started
    print(json.dumps(out))


def single_process(args: argparse.Namespace) -> None:
    """The same enrich work with no Ray: this process preloads the day, runs the kernel over
    the same batches and writes them with the stage's writer settings, one file per batch."""
    import pyarrow.parquet as pq

    from daedalus.core.envelope import RayEnvelope
    from daedalus.enrich.batch import compact_table
    from daedalus.enrich.io import skeleton_files, write_part
    from daedalus.enrich.preload import day_tables
    from daedalus.enrich.stage import prepare_enrich

    config, _, pipeline = load()
    envelope = RayEnvelope.from_settings(config.runtime.ray)
    plan, stores = prepare_enrich(pipeline, config, envelope, lambda _: None)
    files = skeleton_files(SKELETON, DAY)
    target = WORK / "single_process"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    started, cpu = time.perf_counter(), time.process_time()
    tables = day_tables(plan, files, stores)
    preload = time.perf_counter() - started
    rows = part = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=config.runtime.enrich_batch_rows,
                                                       columns=plan.read_columns):
            table = compact_table(pa_table(batch), plan.enrichments, tables,
                                         plan.columns, shared=tables)
            rows += write_part(table, target / f"part-{part:05d}.parquet",
                               plan.sink.compression, plan.plain_columns, tables)
            part += 1
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": rows, "stage_s": seconds, "preload_s": preload,
                      "cpu_s": time.process_time() - cpu, "files": part}))


def pa_table(batch):
    import pyarrow as pa

    return pa.Table.from_batches([batch])


def floor(folder: Path) -> dict:
    """Write just the two embedding columns with the stage's writer settings (zstd, no
    dictionary, no statistics, its row groups); time it."""
    import pyarrow.parquet as pq

    from daedalus.enrich.io import ROW_GROUP_ROWS

    files = sorted(folder.glob("*.parquet"))
    table = pq.read_table(files, columns=EMBEDDING_COLUMNS)
    target = WORK / "floor.parquet"
    started, cpu = time.perf_counter(), time.process_time()
    with pq.ParquetWriter(target, table.schema, compression="zstd", use_dictionary=False,
                          write_statistics=False) as writer:
        for batch in table.to_batches(max_chunksize=ROW_GROUP_ROWS):
            writer.write_batch(batch)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    size = target.stat().st_size
    target.unlink()
    return {"floor_s": seconds, "floor_cpu_s": cpu, "floor_rows": table.num_rows,
            "floor_mib": size / 2**20}


def wait_for_quiet(max_load: float | None, patience_s: float) -> float:
    """On a shared machine, wait (bounded) until the 1-minute load average is below max_load."""
    deadline = time.monotonic() + patience_s
    while max_load is not None and os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def measured_run(args: argparse.Namespace) -> dict:
    from memcap import TreeSampler

    command = [sys.executable, __file__, "--child"]
    if args.single_process:
        command.append("--single-process")
    if args.warm:
        command.append("--warm")
    if args.no_preload:
        command.append("--no-preload")
    if args.num_workers:
        command += ["--num-workers", str(args.num_workers)]
    load_before = wait_for_quiet(args.quiet_load, args.patience)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    with TreeSampler(proc.pid, interval=1.0) as sampler:  # PSS sampling costs CPU: not too often
        out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"bench child failed with status {proc.returncode}")
    run = json.loads(out.strip().splitlines()[-1])
    run["mode"] = "single-process" if args.single_process else "ray"
    config, _, _ = load()
    written = WORK / "single_process" if args.single_process else ENRICHED / f"dt={DAY}"
    run.update(floor(written))
    if args.single_process:
        shutil.rmtree(written)
    run.update(sampler.summary())
    run["rows_per_s"] = run["rows"] / run["stage_s"]
    run["x_floor"] = run["stage_s"] / run["floor_s"]
    run["load_before"] = round(load_before, 2)
    run["load_after"] = round(os.getloadavg()[0], 2)
    return run


# -- the kernel alone ---------------------------------------------------------------------------


def kernel(log) -> list[dict]:
    """Avg-pool kernel on synthetic sliding windows: 7 vs 30 days, prefix sums vs naive."""
    import numpy as np

    from daedalus.enrich.kernel import like_windows, window_means
    from daedalus.store.table import EmbeddingTable

    rng = np.random.default_rng(0)
    users, rows, artworks, days = 20_000, 200_000, 100_000, 30
    table = EmbeddingTable.from_rows(np.arange(1, artworks + 1, dtype=np.int64),
                                     (rng.standard_normal((artworks, 1152)) * 0.05)
                                     .astype(np.float16))
    per_user = rng.poisson(2.0 * days, users)            # about 2 likes a day
    like_user = np.repeat(np.arange(users), per_user)
    like_time = rng.uniform(-days, 1, like_user.size)
    like_id = rng.integers(1, artworks + 1, like_user.size)
    order = np.lexsort((like_id, like_time, like_user))
    like_user, like_time, like_id = like_user[order], like_time[order], like_id[order]
    first = np.searchsorted(like_user, np.arange(users))
    row_user = rng.integers(0, users, rows)
    row_time = np.sort(rng.uniform(0, 1, rows))
    out = []
    for window in (7, 30):
        lo = first[row_user] + _count_before(like_user, like_time, row_user, row_time - window)
        hi = first[row_user] + _count_before(like_user, like_time, row_user, row_time)
        lengths = hi - lo
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = like_id[_flat_ranges(lo, lengths)]
        started = time.perf_counter()
        windows = like_windows(row_user.astype(np.int64), offsets, values)
        window_means(windows, table)
        prefix_s = time.perf_counter() - started
        started = time.perf_counter()
        window_means(like_windows(np.arange(rows, dtype=np.int64), offsets, values), table)
        naive_s = time.perf_counter() - started
        row = {"window_days": window, "rows": rows, "mean_list_len": float(lengths.mean()),
               "sequence_len": int(windows.sequence.size), "prefix_s": prefix_s,
               "naive_s": naive_s}
        log(f"kernel {window}d: lists {row['mean_list_len']:.1f} long, prefix {prefix_s:.2f}s,"
            f" naive {naive_s:.2f}s")
        out.append(row)
    return out


def _count_before(like_user, like_time, users, times):
    """Per row: how many of its user's likes are strictly before `times` (like_user sorted)."""
    import numpy as np

    key_likes = like_user.astype(np.float64) * 1e3 + like_time
    key_rows = users.astype(np.float64) * 1e3 + times
    first = np.searchsorted(like_user, users)
    return np.searchsorted(key_likes, key_rows, side="left") - first


def _flat_ranges(starts, lengths):
    import numpy as np

    owner = np.repeat(np.arange(lengths.size), lengths)
    return np.arange(owner.size) - (np.cumsum(lengths) - lengths)[owner] + starts[owner]


def main() -> None:
    parser = argparse.ArgumentParser(description="enrich stage benchmark (bench preset day)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-preload", action="store_true")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--kernel", action="store_true", help="also time the avg-pool kernel")
    parser.add_argument("--quiet-load", type=float, default=None,
                        help="before each run, wait until the 1-min load average is below this")
    parser.add_argument("--patience", type=float, default=600, help="longest wait, seconds")
    parser.add_argument("--warm", action="store_true",
                        help="also enrich the day a second time in the same process")
    parser.add_argument("--single-process", action="store_true",
                        help="the same work with no Ray, in one process (Ray's overhead)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (single_process if args.single_process else child)(args)
        return
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    prepare(log)
    runs = []
    for i in range(args.repeat):
        run = measured_run(args)
        extra = "".join(f"; {label} {run[key]:.1f}s" for key, label in (
            ("ray_start_s", "ray start"), ("first_call_s", "ray start + day"),
            ("warm_stage_s", "warm day"), ("preload_s", "preload"),
            ("cpu_s", "cpu")) if key in run)
        log(f"run {i + 1} ({run['mode']}): {run['rows']:,} rows in {run['stage_s']:.1f}s"
            f" ({run['rows_per_s']:,.0f} rows/s), floor {run['floor_s']:.1f}s"
            f" → {run['x_floor']:.2f}x floor; peak {run['peak_pss_gib']:.2f} GiB (PSS, tree)"
            f"{extra}; load {run['load_before']}→{run['load_after']}")
        runs.append(run)
    result = {"runs": runs, "kernel": kernel(log) if args.kernel else None,
              "cpus": os.cpu_count(), "command": " ".join(["uv run python bench/enrich.py",
                                                          *sys.argv[1:]])}
    (BENCH / "enrich_results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
