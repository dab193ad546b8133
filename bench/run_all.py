"""`make bench`: the `bench` preset's 1M-impression day end to end, one table with its floors.

Runs, each a fresh `daeda` child process over an empty output root:
  skeleton (duckdb, polars and daft engines), train (skeleton then enrich, one process,
  Ray started inside it; the enrich row is that run's enrich stage).
Floors, measured in this same run on the same data:
  one-statement the whole skeleton day as one hand-written DuckDB statement
                (bench/skeleton_floor.py), a child process like the stage, with its DuckDB
                threads and memory limit; the skeleton (duckdb) row is compared with it on
                process wall and CPU (bench/skeleton.py does the same case by case, in pairs);
  duckdb-read   DuckDB reading every column of the day's source files (the scans' lookbacks);
  fp16-write    writing the day's two float16 list columns to parquet (zstd, no dictionary,
                no statistics: the enrich writer's settings);
  own-bytes     the enriched day's own parts, in memory, written again with the stage's
                settings by one forked writer per CPU of the envelope (issue: the enrich
                stage's real floor on every core);
  numpy-gather  gathering the day's image embeddings (rows x 1152 fp16) from an in-memory
                matrix by row index.
Peak RSS is the whole process tree's (driver, Ray's raylet/GCS/workers), sampled every 0.2 s.

Usage: uv run python bench/run_all.py [--ray-num-cpus N] [--day-workers N] [--json PATH]
Sources are generated once under data/bench/sources (`daeda demo-data --preset bench`); the
Lance store is built once under data/bench/store before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

BENCH = REPO / "data/bench"
SOURCES = BENCH / "sources"
STORE = BENCH / "store"
DAY = "2026-02-01"
DAEDA = [sys.executable, "-m", "daedalus.cli"]
GIB = 2**30


def env() -> dict:
    return {**os.environ, "DAEDALUS_SOURCES_ROOT": str(SOURCES), "DAEDALUS_STORE_ROOT": str(STORE),
            "PYTHONUNBUFFERED": "1"}


class TreePeak:
    """Peak summed RSS of a process and all its descendants, polled from /proc."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> set[int]:
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        tree, frontier = {self.pid}, [self.pid]
        while frontier:
            p = frontier.pop()
            kids = [c for c, pp in parents.items() if pp == p and c not in tree]
            tree.update(kids)
            frontier += kids
        return tree

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
                except OSError:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(1.0)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child(cmd: list[str]) -> tuple[str, float, float, int]:
    """Run `cmd`; returns (stdout, wall seconds, CPU seconds, peak tree RSS bytes). The CPU
    is that of the child and of every descendant it waited for."""
    cpu, started = children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = TreePeak(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    rss = peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:5])} failed:\n{err[-3000:]}")
    return out, wall, children_cpu() - cpu, rss


def daeda(args: list[str], flags: list[str]) -> tuple[dict, float, float, int]:
    """Run `daeda ... --json`; returns (summary, wall s, CPU s, peak tree RSS bytes)."""
    out, wall, cpu, rss = child([*DAEDA, *args, *flags, "--json"])
    return json.loads(out), wall, cpu, rss


def floor_one_statement(config, work: Path) -> tuple[float, float, int]:
    """bench/skeleton_floor.py on the day, as a child process: (wall s, CPU s, peak RSS)."""
    duck = config.runtime.compute.duckdb_config
    _, wall, cpu, rss = child([
        sys.executable, str(REPO / "bench/skeleton_floor.py"), "--sources", str(SOURCES),
        "--day", DAY, "--out", str(work / "floor-skeleton.parquet"),
        "--threads", str(duck.threads or os.cpu_count()), "--memory-limit", duck.memory_limit])
    return wall, cpu, rss


def prepare(log) -> None:
    if not (SOURCES / "_demo_data.json").exists():
        log(f"generating the bench preset under {SOURCES} (once) ...")
        subprocess.run([*DAEDA, "demo-data", "--preset", "bench", "--root", str(SOURCES)],
                       cwd=REPO, env=env(), check=True, stdout=subprocess.DEVNULL)
    log("building the Lance store (once) ...")
    subprocess.run([*DAEDA, "store", "build"], cwd=REPO, env=env(), check=True,
                   stdout=subprocess.DEVNULL)


def floor_duckdb_read(config, pipeline) -> float:
    import datetime as dt

    import duckdb

    from daedalus.layout.manifest import scan_days

    day = dt.date.fromisoformat(DAY)
    con = duckdb.connect(config={"threads": config.runtime.compute.duckdb_config.threads})
    started = time.perf_counter()
    for scan in pipeline.of_kind("Scan"):
        root = Path(config.base.sources_root) / scan.source
        files = [str(f) for d in scan_days(day, scan.lookback)
                 for f in sorted((root / f"dt={d:%Y-%m-%d}").glob("*.parquet"))]
        if files:
            cols = ", ".join(f'"{c}"' for c in scan.columns)
            con.sql(f"SELECT {cols} FROM read_parquet($f)", params={"f": files}).to_arrow_table()
    return time.perf_counter() - started


def floor_fp16_write(enriched: Path, work: Path) -> float:
    """The two float16 list columns of the day, written with the stage's settings and row
    groups (in memory before the clock starts)."""
    import pyarrow.parquet as pq

    from daedalus.enrich.io import ROW_GROUP_ROWS

    cols = ["image_embedding", "like_artwork_avg_embeds"]
    files = sorted(enriched.glob("*.parquet"))
    table = pq.read_table(files, columns=cols) if len(files) > 1 else pq.read_table(files[0],
                                                                                     columns=cols)
    table = table.combine_chunks()
    started = time.perf_counter()
    with pq.ParquetWriter(work / "floor.parquet", table.schema, compression="zstd",
                          use_dictionary=False, write_statistics=False) as writer:
        for batch in table.to_batches(max_chunksize=ROW_GROUP_ROWS):
            writer.write_batch(batch)
    return time.perf_counter() - started


def floor_own_bytes(enriched: Path, work: Path, writers: int) -> float:
    """The enriched day's own parts, read into memory first, written again by `writers`
    forked processes (parts dealt round-robin), each as the stage writes a part: zstd, row
    groups of ROW_GROUP_ROWS, no dictionary and no statistics on the embedding columns."""
    import multiprocessing

    import pyarrow.parquet as pq

    from daedalus.enrich.io import ROW_GROUP_ROWS

    parts = [pq.read_table(f) for f in sorted(enriched.glob("*.parquet"))]
    embedding = {"image_embedding", "like_artwork_avg_embeds"}

    def write(k: int) -> None:
        for i in range(k, len(parts), writers):
            table = parts[i]
            plain = [c for c in table.column_names if c not in embedding]
            with pq.ParquetWriter(work / f"own-{i}.parquet", table.schema, compression="zstd",
                                  use_dictionary=plain, write_statistics=plain) as writer:
                for start in range(0, table.num_rows, ROW_GROUP_ROWS):
                    writer.write_table(table.slice(start, ROW_GROUP_ROWS),
                                       row_group_size=ROW_GROUP_ROWS)

    fork = multiprocessing.get_context("fork")
    started = time.perf_counter()
    procs = [fork.Process(target=write, args=(k,)) for k in range(writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    seconds = time.perf_counter() - started
    if any(proc.exitcode for proc in procs):
        raise SystemExit("floor own-bytes: a writer failed")
    return seconds


def floor_numpy_gather(skeleton: Path, store_path: Path, dim: int) -> float:
    import lance
    import numpy as np
    import pyarrow.parquet as pq

    ids = pq.read_table(sorted(skeleton.glob("*.parquet")), columns=["artwork_id"])
    ids = ids.column(0).fill_null(-1).to_numpy()
    rng = np.random.default_rng(0)
    rows = lance.dataset(str(store_path)).count_rows()
    matrix = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    index = (ids % rows).astype(np.int64)
    started = time.perf_counter()
    gathered = matrix[index]
    seconds = time.perf_counter() - started
    assert gathered.shape == (len(ids), dim)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray-num-cpus", type=int, default=None)
    parser.add_argument("--day-workers", type=int, default=None)
    parser.add_argument("--json", default=str(BENCH / "run_all_results.json"))
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    prepare(log)
    os.environ.update({k: v for k, v in env().items() if k.startswith("DAEDALUS")})
    from daedalus.core.config import load_config
    from daedalus.core.registry import load_registry
    from daedalus.engine.pipeline import compiled_pipeline

    os.chdir(REPO)
    config = load_config()
    pipeline = compiled_pipeline(load_registry(), "dssm_ranking", config)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=BENCH))
    runtime = REPO / "config/training/runtime.yaml"
    runtimes = {"duckdb": runtime}
    for engine in ("polars", "daft"):  # the RollingAggregate on another engine, same bytes
        runtimes[engine] = work / f"runtime-{engine}.yaml"
        runtimes[engine].write_text(runtime.read_text().replace("engine: duckdb",
                                                                f"engine: {engine}"))
    # No Dagster record: the bench's days are not the project's, and the floors record nothing.
    common = ["--target-date", DAY, "--pipelines-dir", str(work / "pipelines"),
              "--no-dagster-record"]
    if args.day_workers:
        common += ["--day-workers", str(args.day_workers)]
    ray = ["--ray-num-cpus", str(args.ray_num_cpus)] if args.ray_num_cpus else []
    rows: list[dict] = []
    try:
        for engine, runtime_path in runtimes.items():
            log(f"skeleton ({engine}) ...")
            out = work / f"skel-{engine}"
            summary, wall, cpu, rss = daeda(
                ["pipeline", "train", "dssm_ranking", "--skeleton-only", "--output-root",
                 str(out), "--runtime-config-path", str(runtime_path)], common)
            result = summary["results"][0]
            rows.append({"stage": f"skeleton ({engine})", "rows": result["rows"], "wall_s": wall,
                         "cpu_s": cpu, "stage_s": result["seconds"], "peak_rss_gib": rss / GIB})
            if engine == "duckdb":
                log("floor: one-statement skeleton ...")
                wall, cpu, rss = floor_one_statement(config, work)
                rows.append({"stage": "floor: one-statement", "rows": result["rows"],
                             "wall_s": wall, "cpu_s": cpu, "stage_s": None,
                             "peak_rss_gib": rss / GIB})
        log("train (skeleton + enrich) ...")
        out = work / "train"
        summary, wall, cpu, rss = daeda(["pipeline", "train", "dssm_ranking", "--output-root",
                                         str(out)], [*common, *ray])
        by_stage = {r["stage"]: r for r in summary["results"]}
        enrich = by_stage["enrich"]
        rows.append({"stage": "enrich (in train)", "rows": enrich["rows"], "wall_s": None,
                     "cpu_s": None, "stage_s": enrich["seconds"], "peak_rss_gib": None})
        rows.append({"stage": "train (skeleton+enrich)", "rows": enrich["rows"], "wall_s": wall,
                     # Ray's workers are not this process's children: their CPU is not counted.
                     "cpu_s": None, "stage_s": by_stage["skeleton"]["seconds"] + enrich["seconds"],
                     "peak_rss_gib": rss / GIB})

        log("floors ...")
        skeleton_day = out / f"dt={DAY}"
        enriched_day = Path(summary["enriched_root"]) / f"dt={DAY}"
        n = enrich["rows"]
        writers = args.ray_num_cpus or os.cpu_count()
        floors = {
            "duckdb-read": floor_duckdb_read(config, pipeline),
            "fp16-write": floor_fp16_write(enriched_day, work),
            "own-bytes (all cores)": floor_own_bytes(enriched_day, work, writers),
            "numpy-gather": floor_numpy_gather(
                skeleton_day, config.store_path(config.aggregations.store("artwork_embeddings")),
                config.base.embedding_dim),
        }
        for name, seconds in floors.items():
            rows.append({"stage": f"floor: {name}", "rows": n, "wall_s": None, "cpu_s": None,
                         "stage_s": seconds, "peak_rss_gib": None})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    stage = {r["stage"]: r["stage_s"] for r in rows}
    by_name = {r["stage"]: r for r in rows}
    skeleton, one = by_name["skeleton (duckdb)"], by_name["floor: one-statement"]
    ratios = {
        "skeleton (duckdb) / one-statement, process wall": skeleton["wall_s"] / one["wall_s"],
        "skeleton (duckdb) / one-statement, process CPU": skeleton["cpu_s"] / one["cpu_s"],
        "skeleton (duckdb) / duckdb-read": stage["skeleton (duckdb)"] / floors["duckdb-read"],
        "enrich / fp16-write": stage["enrich (in train)"] / floors["fp16-write"],
        "enrich / own-bytes (all cores)": stage["enrich (in train)"]
        / floors["own-bytes (all cores)"],
        "train / sum of floors (read, fp16-write, gather)": stage["train (skeleton+enrich)"]
        / (floors["duckdb-read"] + floors["fp16-write"] + floors["numpy-gather"]),
    }
    meta = {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0],
            "ray_num_cpus": args.ray_num_cpus, "day_workers": args.day_workers}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios},
                                          indent=2))
    print(f"bench day {DAY}: {os.cpu_count()} CPUs, load {meta['load_1m']:.1f},"
          f" ray_num_cpus={args.ray_num_cpus}, day_workers={args.day_workers}")
    print("| stage | rows | process wall s | process CPU s | stage s | rows/s (stage) |"
          " peak RSS GiB (tree) |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for r in rows:
        per_s = f"{r['rows'] / r['stage_s']:,.0f}" if r["stage_s"] else "-"
        print(f"| {r['stage']} | {r['rows']:,} | {fmt(r['wall_s'])} | {fmt(r['cpu_s'])} |"
              f" {fmt(r['stage_s'])} | {per_s} | {fmt(r['peak_rss_gib'])} |")
    print()
    for name, value in ratios.items():
        print(f"- {name}: {value:.2f}x")


if __name__ == "__main__":
    main()
