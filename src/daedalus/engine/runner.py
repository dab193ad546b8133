"""Run a request's plan: the source-side stage (DuckDB or Polars), then the enrichment (Ray).

`run` is the one engine entry point: the CLI and the Dagster ops call it with a `RunRequest`
and, where they already planned, the `RunPlan` they showed. Every input is checked before
anything is written; each stage then runs exactly the days the plan says to run, and a day
the plan skips is reported skipped with the plan's reason.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from daedalus.core.results import DayResult, RunSummary
from daedalus.engine.plan import DayPlan, RunPlan, plan_run
from daedalus.engine.request import RunRequest
from daedalus.layout.days import day_path, ensure_writable

Progress = Callable[[str], None]


def run(request: RunRequest, plan: RunPlan | None = None, *, progress: Progress = print,
        runtime=None) -> RunSummary:
    """Run `plan` (planned now when not given). `runtime`: a `RayRuntime` the caller owns and
    reuses across runs; without one the enrich stage makes its own for this run."""
    plan = plan or plan_run(request)
    started = time.perf_counter()
    days = request.days
    progress(f"{request.service}: {len(days)} day(s) {days[0]}..{days[-1]},"
             f" DAG {request.pipeline_source}")
    prepared = _check_inputs(request, progress)
    results: list[DayResult] = []
    if "skeleton" in request.stages:
        from daedalus.skeleton.stage import run_skeleton_stage

        todo = _announce(plan.of("skeleton"), request.skeleton_root, progress, results)
        done = run_skeleton_stage(request.pipeline, request.config, [p.day for p in todo],
                                  request.skeleton_root,
                                  day_workers=request.config.runtime.day_workers,
                                  progress=progress)
        results += _recomputed(done, todo)
    if request.runs_enrich:
        from daedalus.enrich.stage import run_enrich_stage

        todo = _announce(plan.of("enrich"), request.enriched_root, progress, results)
        done = run_enrich_stage(request.pipeline, request.config, [p.day for p in todo],
                                request.skeleton_root, request.enriched_root,
                                envelope=request.envelope, progress=progress,
                                prepared=prepared, runtime=runtime)
        results += _recomputed(done, todo)
    order = {"skeleton": 0, "enrich": 1}
    results.sort(key=lambda r: (order[r.stage], r.day))
    return RunSummary(service=request.service, days=days, results=tuple(results),
                      output_root=str(request.skeleton_root),
                      enriched_root=str(request.enriched_root),
                      pipeline_source=request.pipeline_source,
                      seconds=time.perf_counter() - started)


def _announce(entries: list[DayPlan], root: Path, progress: Progress,
              results: list[DayResult]) -> list[DayPlan]:
    """Report the plan's skipped days as results; return the days to run, saying why each
    runs again when it was written before."""
    todo = []
    for p in entries:
        if p.action == "skip":
            rows = p.rows or 0
            complete = p.state == "complete"
            shown = f" ({rows:,} rows)" if complete else ""
            path = str(day_path(root, p.day)) if complete else None
            results.append(DayResult(p.stage, p.day, "skipped", rows, path, 0.0, p.reason,
                                     recomputed=False, reason=p.reason))
            progress(f"{p.stage} {p.day}: skipped, {p.reason}{shown}")
            continue
        if p.state != "absent":
            progress(f"{p.stage} {p.day}: recomputing, {p.reason}")
        todo.append(p)
    return todo


def _recomputed(done: list[DayResult], todo: list[DayPlan]) -> list[DayResult]:
    reasons = {p.day: p.reason for p in todo}
    return [dataclasses.replace(r, recomputed=r.status != "skipped", reason=reasons.get(r.day, ""))
            for r in done]


def _check_inputs(request: RunRequest, progress: Progress):
    """Bad sources, output roots, stores or Ray addresses fail here, before anything is written.
    Returns the enrich stage's prepared plan and stores (None without enrichment), which the
    stage then reuses instead of opening and checking every store again."""
    if "skeleton" in request.stages:
        from daedalus.skeleton.stage import check_sources

        check_sources(request.pipeline, request.registry, request.config, list(request.days))
        ensure_writable(request.skeleton_root)
    if request.runs_enrich:
        from daedalus.enrich.stage import prepare_enrich

        ensure_writable(request.enriched_root, "enriched output root")
        return prepare_enrich(request.pipeline, request.config, request.envelope, progress)
    return None
