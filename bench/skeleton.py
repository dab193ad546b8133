"""Skeleton stage benchmark: the stage against its one-statement floor, case by case.

Each case runs the stage (`daeda pipeline train dssm_ranking --skeleton-only` on an empty
output root) and the floor (`bench/skeleton_floor.py`: the same day as one hand-written DuckDB
statement, with the stage's DuckDB threads and memory limit) as fresh child processes, in
turn (stage, floor, stage, floor, ...), so a drift of the machine's speed hits both; ratios
are taken pair by pair and their median reported. After the pairs, the floor's file is
checked equal to the stage's output on every column, in order (untimed). Wall, CPU (user +
system, wait4) and peak RSS (the child's own VmHWM) are whole-process figures. Cases:

- `100k`, `1m`, `3m`: the `bench` demo preset's day, and the same world scaled (users and
  artworks in proportion);
- `7d-window` vs `30d-window`: the bench day with 31 days of like history, like list and count
  over 7 days (the contract) and over 30 days (lookback and window edited in the config);
- `1m-500MB`: the 1M day with DuckDB's memory limit at 500MB (stage and floor).

Usage: uv run python bench/skeleton.py [--cases 100k,1m,3m,window,500mb] [--repeat 3]
           [--quiet-load 0.5]
Sources are generated once under data/bench/ (gitignored); results go to
data/bench/skeleton_results.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from daedalus.demo.data import PRESETS, generate_demo_data  # noqa: E402
from daedalus.demo.spec import DemoDataSpec  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from skeleton_floor import check_equal  # noqa: E402

BENCH = REPO / "data/bench"
BENCH_SPEC = PRESETS["bench"]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    sources: Path
    spec: DemoDataSpec
    window: str = "7d"
    memory_limit: str | None = None  # None: runtime.yaml's


def cases() -> dict[str, list[Case]]:
    def scaled(events: int) -> DemoDataSpec:
        k = events / BENCH_SPEC.events_per_day
        return dataclasses.replace(
            BENCH_SPEC,
            events_per_day=events,
            users=int(BENCH_SPEC.users * k),
            artworks=int(BENCH_SPEC.artworks * k),
        )

    history = dataclasses.replace(BENCH_SPEC, likes_history_days=31)
    return {
        "1m": [Case("1m", BENCH / "sources", BENCH_SPEC)],
        "100k": [Case("100k", BENCH / "scale-100k/sources", scaled(100_000))],
        "3m": [Case("3m", BENCH / "scale-3m/sources", scaled(3_000_000))],
        "window": [
            Case("7d-window", BENCH / "history-31d/sources", history, "7d"),
            Case("30d-window", BENCH / "history-31d/sources", history, "30d"),
        ],
        "500mb": [Case("1m-500MB", BENCH / "sources", BENCH_SPEC, memory_limit="500MB")],
    }


def ensure_sources(case: Case) -> None:
    """Generate the case's sources unless the marker says they are already this spec."""
    marker = case.sources / "_demo_data.json"
    want = {**dataclasses.asdict(case.spec), "start_date": case.spec.start_date.isoformat()}
    if marker.exists() and json.loads(marker.read_text()).get("spec") == want:
        return
    print(
        f"generating {case.sources} ({case.spec.events_per_day:,} impressions/day) ...",
        file=sys.stderr,
        flush=True,
    )
    generate_demo_data(case.sources, case.spec)
    if case.sources != BENCH / "sources":
        shutil.rmtree(case.sources / "siglip2_vectors", ignore_errors=True)  # skeleton never reads it


def runtime_path(case: Case, tmp: Path) -> Path:
    runtime = REPO / "config/training/runtime.yaml"
    if case.memory_limit is None:
        return runtime
    data = yaml.safe_load(runtime.read_text())
    data["compute"]["duckdb_config"]["memory_limit"] = case.memory_limit
    edited = tmp / "runtime.yaml"
    edited.write_text(yaml.safe_dump(data, sort_keys=False))
    return edited


def duckdb_settings(case: Case, tmp: Path) -> dict:
    """The stage's DuckDB threads and memory limit, which the floor runs with too."""
    return yaml.safe_load(runtime_path(case, tmp).read_text())["compute"]["duckdb_config"]


def config_flags(case: Case, tmp: Path) -> list[str]:
    aggregations = REPO / "config/training/aggregations.yaml"
    if case.window != "7d":
        edited = tmp / "aggregations.yaml"
        edited.write_text(aggregations.read_text().replace("window: 7d", f"window: {case.window}"))
        aggregations = edited
    return [
        "--base-config-path",
        str(REPO / "config/base.yaml"),
        "--runtime-config-path",
        str(runtime_path(case, tmp)),
        "--aggregation-config-path",
        str(aggregations),
        "--pipelines-dir",
        str(tmp / "pipelines"),
    ]


def wait_for_quiet(max_load: float | None, patience_s: float) -> float:
    """On a shared machine, wait (bounded) until the 1-minute load average is below max_load."""
    deadline = time.monotonic() + patience_s
    while max_load is not None and os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def child(cmd: list[str], tmp: Path, env: dict) -> dict:
    """Run `cmd` to its end; wall, CPU and its own peak RSS (it writes VmHWM to a file)."""
    env = {**os.environ, **env, "BENCH_HWM_FILE": str(tmp / "vmhwm")}
    with open(tmp / "stdout", "wb") as out_fh, open(tmp / "stderr", "wb") as err_fh:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out_fh, stderr=err_fh)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}: failed:\n{(tmp / 'stderr').read_text()[-2000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": int((tmp / "vmhwm").read_text()) / 2**20,
        "stdout": (tmp / "stdout").read_text(),
    }


def run_stage(case: Case, tmp: Path) -> dict:
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-c", _CHILD, "pipeline", "train", "dssm_ranking", "--skeleton-only",
        "--target-date", case.spec.start_date.isoformat(), "--output-root", str(out),
        "--no-dagster-record", "--json", *config_flags(case, tmp),
    ]
    run = child(cmd, tmp, {"DAEDALUS_SOURCES_ROOT": str(case.sources)})
    result = json.loads(run.pop("stdout"))["results"][0]
    manifest = json.loads((Path(result["path"]) / "_manifest.json").read_text())
    return {**run, "day_s": result["seconds"], "rows": result["rows"],
            "stages_s": manifest["timings"], "day_dir": result["path"]}


def run_floor(case: Case, tmp: Path) -> dict:
    duck = duckdb_settings(case, tmp)
    cmd = [
        sys.executable, str(REPO / "bench/skeleton_floor.py"), "--sources", str(case.sources),
        "--day", case.spec.start_date.isoformat(), "--out", str(tmp / "floor.parquet"),
        "--threads", str(duck["threads"]), "--memory-limit", str(duck["memory_limit"]),
        "--window", case.window, "--json",
    ]
    run = child(cmd, tmp, {})
    result = json.loads(run.pop("stdout"))
    return {**run, "rows": result["rows"], "statement_s": result["seconds"]}


# The child's own peak RSS is VmHWM of its (post-exec) address space, read just before it
# exits; ru_maxrss would also count this parent's RSS at fork time (after data generation).
_CHILD = """
import os, sys
from daedalus.cli.main import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as fh:
    hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
with open(os.environ["BENCH_HWM_FILE"], "w") as fh:
    fh.write(hwm)
sys.exit(rc)
"""


def measure(case: Case, repeat: int, quiet_load: float | None, patience: float) -> dict:
    tmp = BENCH / f"run-{case.name}"
    tmp.mkdir(parents=True, exist_ok=True)
    stages, floors = [], []
    try:
        for _ in range(repeat):
            load = wait_for_quiet(quiet_load, patience)
            stages.append({**run_stage(case, tmp), "load_before": load})
            floors.append(run_floor(case, tmp))
        check = check_equal(tmp / "floor.parquet", Path(stages[-1]["day_dir"])) or "equal"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if check != "equal":
        raise SystemExit(f"{case.name}: the floor's rows are not the stage's: {check}")

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def ratio(key: str) -> float:
        return statistics.median(s[key] / f[key] for s, f in zip(stages, floors, strict=True))

    return {
        "case": case.name, "rows": stages[0]["rows"], "window": case.window,
        "memory_limit": duckdb_settings(case, BENCH)["memory_limit"] if not case.memory_limit
        else case.memory_limit,
        "stage_wall_s": median(stages, "wall_s"), "floor_wall_s": median(floors, "wall_s"),
        "wall_ratio": ratio("wall_s"),
        "stage_cpu_s": median(stages, "cpu_s"), "floor_cpu_s": median(floors, "cpu_s"),
        "cpu_ratio": ratio("cpu_s"),
        "stage_peak_rss_gib": max(r["peak_rss_gib"] for r in stages),
        "floor_peak_rss_gib": max(r["peak_rss_gib"] for r in floors),
        "stages_s_best": min(stages, key=lambda r: r["wall_s"])["stages_s"],
        "floor_check": check, "stage_runs": stages, "floor_runs": floors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="100k,1m,3m,window,500mb")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=None,
        help="before each pair, wait until the 1-min load average is below this",
    )
    parser.add_argument("--patience", type=float, default=120, help="longest wait, seconds")
    args = parser.parse_args()
    table = cases()
    rows = []
    for key in args.cases.split(","):
        for case in table[key]:
            ensure_sources(case)
            row = measure(case, args.repeat, args.quiet_load, args.patience)
            rows.append(row)
            print(
                f"{case.name}: stage {row['stage_wall_s']:.2f} s, floor {row['floor_wall_s']:.2f} s"
                f" (x{row['wall_ratio']:.2f} wall, x{row['cpu_ratio']:.2f} CPU)",
                file=sys.stderr,
                flush=True,
            )
    (BENCH / "skeleton_results.json").write_text(json.dumps(rows, indent=2))
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} after; medians of"
          f" {args.repeat} stage/floor pairs; ratios pair by pair")
    print()
    print("| case | rows | DuckDB memory | stage wall s | floor wall s | wall x | stage CPU s |"
          " floor CPU s | CPU x | peak RSS GiB stage / floor | same rows |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['rows']:,} | {r['memory_limit']} | {r['stage_wall_s']:.2f} |"
            f" {r['floor_wall_s']:.2f} | {r['wall_ratio']:.2f} | {r['stage_cpu_s']:.2f} |"
            f" {r['floor_cpu_s']:.2f} | {r['cpu_ratio']:.2f} |"
            f" {r['stage_peak_rss_gib']:.2f} / {r['floor_peak_rss_gib']:.2f} | {r['floor_check']} |"
        )
    by_name = {r["case"]: r for r in rows}
    if {"7d-window", "30d-window"} <= set(by_name):
        print()
        print(f"- 30-day / 7-day window, stage wall: "
              f"{by_name['30d-window']['stage_wall_s'] / by_name['7d-window']['stage_wall_s']:.2f}x")
    print()
    print("| case | " + " | ".join(rows[0]["stages_s_best"]) + " |")
    print("|---|" + "---:|" * len(rows[0]["stages_s_best"]))
    for r in rows:
        print(f"| {r['case']} | " + " | ".join(f"{v:.2f}" for v in r["stages_s_best"].values()) + " |")


if __name__ == "__main__":
    main()
