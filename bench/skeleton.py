"""Skeleton stage benchmark: one day of `daeda pipeline train dssm_ranking --skeleton-only`.

Each run is a fresh child process (so peak RSS is that run's own, read with os.wait4) writing
into an empty output root. Cases:

- `1m`: the `bench` demo preset's 1M-impression day (target: <= 12 s wall, <= 3 GiB on 2 cores);
- `100k`, `3m`: the same world scaled (users and artworks in proportion), to show the cost
  grows linearly with rows;
- `7d-window` vs `30d-window`: the bench day with 31 days of like history, like list and count
  over 7 days (the contract) and over 30 days (lookback and window edited in the config).

Usage: uv run python bench/skeleton.py [--cases 1m,100k,3m,window] [--repeat 3] [--quiet-load 0.5]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from daedalus.demo.data import PRESETS, generate_demo_data  # noqa: E402
from daedalus.demo.spec import DemoDataSpec  # noqa: E402

BENCH = REPO / "data/bench"
BENCH_SPEC = PRESETS["bench"]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    sources: Path
    spec: DemoDataSpec
    window: str = "7d"


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
        str(REPO / "config/training/runtime.yaml"),
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


def run_once(case: Case, tmp: Path) -> dict:
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-c",
        _CHILD,
        "pipeline",
        "train",
        "dssm_ranking",
        "--skeleton-only",
        "--target-date",
        case.spec.start_date.isoformat(),
        "--output-root",
        str(out),
        "--json",
        *config_flags(case, tmp),
    ]
    env = {
        **os.environ,
        "DAEDALUS_SOURCES_ROOT": str(case.sources),
        "BENCH_HWM_FILE": str(tmp / "vmhwm"),
    }
    with open(tmp / "stdout", "wb") as out_fh, open(tmp / "stderr", "wb") as err_fh:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out_fh, stderr=err_fh)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{case.name}: run failed:\n{(tmp / 'stderr').read_text()[-2000:]}")
    result = json.loads((tmp / "stdout").read_text())["results"][0]
    manifest = json.loads((Path(result["path"]) / "_manifest.json").read_text())
    peak_kib = int((tmp / "vmhwm").read_text())
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "day_s": result["seconds"],
        "rows": result["rows"],
        "peak_rss_gib": peak_kib / 2**20,
        "stages_s": manifest["timings"],
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1m,100k,3m,window")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=None,
        help="before each run, wait until the 1-min load average is below this",
    )
    parser.add_argument("--patience", type=float, default=120, help="longest wait, seconds")
    args = parser.parse_args()
    table = cases()
    rows = []
    for key in args.cases.split(","):
        for case in table[key]:
            ensure_sources(case)
            tmp = BENCH / f"run-{case.name}"
            tmp.mkdir(parents=True, exist_ok=True)
            runs = []
            for _ in range(args.repeat):
                load = wait_for_quiet(args.quiet_load, args.patience)
                runs.append({**run_once(case, tmp), "load_before": load})
            shutil.rmtree(tmp, ignore_errors=True)
            best = min(runs, key=lambda r: r["wall_s"])
            summary = {
                "case": case.name,
                "rows": best["rows"],
                "window": case.window,
                "wall_s_median": statistics.median(r["wall_s"] for r in runs),
                "wall_s_best": best["wall_s"],
                "day_s_median": statistics.median(r["day_s"] for r in runs),
                "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
                "peak_rss_gib_max": max(r["peak_rss_gib"] for r in runs),
                "stages_s_best": best["stages_s"],
                "runs": runs,
            }
            summary["rows_per_s"] = summary["rows"] / summary["wall_s_best"]
            rows.append(summary)
            print(
                f"{case.name}: {summary['wall_s_median']:.2f} s wall (median of {len(runs)}),"
                f" {summary['peak_rss_gib_max']:.2f} GiB peak",
                file=sys.stderr,
                flush=True,
            )
    (BENCH / "skeleton_results.json").write_text(json.dumps(rows, indent=2))
    print("| case | rows | wall s best / median | day s | CPU s | rows/s (best wall) | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['rows']:,} | {r['wall_s_best']:.2f} / {r['wall_s_median']:.2f} |"
            f" {r['day_s_median']:.2f} |"
            f" {r['cpu_s_median']:.2f} |"
            f" {r['rows_per_s']:,.0f} | {r['peak_rss_gib_max']:.2f} |"
        )
    print()
    print("| case | " + " | ".join(rows[0]["stages_s_best"]) + " |")
    print("|---|" + "---:|" * len(rows[0]["stages_s_best"]))
    for r in rows:
        print(f"| {r['case']} | " + " | ".join(f"{v:.2f}" for v in r["stages_s_best"].values()) + " |")


if __name__ == "__main__":
    main()
