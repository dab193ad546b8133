"""Skeleton stage: the source-side operators of the DAG, run in DuckDB one day at a time.

`check_sources` runs before any day: it checks the DAG's hand edits and every source file the
days will read, so a bad file fails the run before it writes anything. `run_skeleton_stage`
runs the days it is given (the engine's plan chose them; see `daedalus.engine.plan`), each
complete or absent (see `daedalus.skeleton.day`). `--day-workers N` overlaps days but keeps the
qid step in date order (see `daedalus.skeleton.order`), so the output is the same as with N = 1.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from daedalus.core.config import Config
from daedalus.core.operators import OperatorPipeline
from daedalus.core.registry import Registry, check_source_files
from daedalus.core.results import DayResult
from daedalus.layout.days import ensure_writable, sweep_staging
from daedalus.layout.qid import QidMap
from daedalus.layout.scratch import sweep_scratch
from daedalus.skeleton.day import DayRun
from daedalus.skeleton.order import Abandoned, DateOrder
from daedalus.skeleton.plan import SkeletonPlan
from daedalus.skeleton.sources import first_source_file, scan_files

__all__ = ["check_sources", "run_skeleton_stage"]

Progress = Callable[[str], None]


def check_sources(
    pipeline: OperatorPipeline, registry: Registry, config: Config, days: list[dt.date]
) -> None:
    """Every source file the days will read is checked against its view before any day runs,
    so a bad file fails the run before it writes anything (see registry.check_source_files).
    The DAG's hand edits (lookbacks, ttls, keys) are checked here too, before the store build."""
    SkeletonPlan.build(pipeline, config)
    for scan in pipeline.of_kind("Scan"):
        first_source_file(config, scan)
        files = sorted({f for day in days for f in scan_files(config, scan, day)})
        check_source_files(registry.view(scan.view), files)


def run_skeleton_stage(
    pipeline: OperatorPipeline,
    config: Config,
    days: list[dt.date],
    output_root: Path,
    *,
    day_workers: int = 1,
    progress: Progress = print,
) -> list[DayResult]:
    """Write `<output_root>/dt=YYYY-MM-DD/` for each of `days`, whatever is there now.

    Which days need work is decided once, by `daedalus.engine.plan`; this runs what it is
    given. A day with no impressions gets a 0-row sidecar manifest instead of a folder.
    """
    plan = SkeletonPlan.build(pipeline, config)
    output_root = ensure_writable(output_root)
    sweep_staging(output_root)
    sweep_scratch(Path(config.runtime.compute.duckdb_config.temp_directory))
    results: dict[dt.date, DayResult] = {}
    todo = sorted(set(days))
    qid_maps = {
        op.name: QidMap(output_root, op.state_file, op.input_column, op.output_column)
        for op in plan.udfs
    }
    for qid_map in qid_maps.values():
        qid_map.recover_if_missing()
    order = DateOrder(len(todo))
    errors: dict[dt.date, BaseException] = {}

    def one(i: int, day: dt.date) -> None:
        if errors:
            return
        try:
            result = DayRun(plan, config, day, output_root, qid_maps, order, i).run()
        except Abandoned:
            return
        except BaseException as exc:
            order.fail()
            errors[day] = exc
            return
        results[day] = result
        progress(f"skeleton {day}: {result.message} ({result.seconds:.1f}s)")

    workers = max(1, min(day_workers, len(todo)))
    if workers == 1:
        for i, day in enumerate(todo):
            one(i, day)
            if errors:
                break
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="skeleton-day") as pool:
            list(pool.map(one, range(len(todo)), todo))
    if errors:
        raise errors[min(errors)]
    return [results[d] for d in sorted(results)]
