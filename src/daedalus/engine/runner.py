"""Run a compiled operator DAG over target days: source side (DuckDB), then enrichment (Ray).

`run_pipeline` is the one engine entry point: the CLI and the Dagster ops call
it. It resolves the DAG, picks the days, runs the requested contiguous
sub-range of operators and returns a `RunSummary`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

from daedalus.core.config import Config, enriched_root_for
from daedalus.core.envelope import RayEnvelope
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import OperatorPipeline
from daedalus.core.registry import Registry
from daedalus.core.results import DayResult, RunSummary

Progress = Callable[[str], None]


def parse_target_date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise DaedalusError(f"--target-date: {text!r} is not a date (fix: use YYYY-MM-DD,"
                            " e.g. 2026-02-01)") from None


def target_days(config: Config, target_date: dt.date | None) -> list[dt.date]:
    return [target_date] if target_date else config.runtime.days()


def run_pipeline(
    service: str,
    *,
    config: Config,
    registry: Registry,
    pipelines_dir: Path | str = "config/pipelines",
    target_date: dt.date | None = None,
    skeleton_only: bool = False,
    enrich_only: bool = False,
    output_root: Path | str | None = None,
    day_workers: int | None = None,
    envelope: RayEnvelope | None = None,
    progress: Progress = print,
    pipeline: OperatorPipeline | None = None,
    force: bool = False,
) -> RunSummary:
    """Run the service's DAG (or the requested sub-range) for the target days.

    A day is skipped only when its manifest matches the current inputs, DAG and
    config; `force` recomputes regardless.
    """
    config, pipeline, source = _prepare(service, config, registry, pipelines_dir, skeleton_only,
                                        enrich_only, output_root, day_workers, pipeline)
    envelope = envelope or RayEnvelope.from_settings(config.runtime.ray)

    days = target_days(config, target_date)
    skeleton_root = Path(config.runtime.output_root)
    enriched_root = enriched_root_for(skeleton_root)
    started = time.perf_counter()
    results: list[DayResult] = []
    progress(f"{service}: {len(days)} day(s) {days[0]}..{days[-1]}, DAG {source}")
    prepared = _check_inputs(pipeline, registry, config, days, envelope, enrich_only,
                             skeleton_only, progress, skeleton_root, enriched_root)
    if not enrich_only:
        from daedalus.skeleton.stage import run_skeleton_stage

        results += run_skeleton_stage(pipeline, config, days, skeleton_root,
                                      day_workers=config.runtime.day_workers, progress=progress,
                                      force=force)
    if not skeleton_only and pipeline.has_enrichment:
        from daedalus.enrich.stage import run_enrich_stage

        results += run_enrich_stage(pipeline, config, days, skeleton_root, enriched_root,
                                    envelope=envelope, progress=progress, force=force,
                                    prepared=prepared)
    return RunSummary(service=service, days=tuple(days), results=tuple(results),
                      output_root=str(skeleton_root), enriched_root=str(enriched_root),
                      pipeline_source=source, seconds=time.perf_counter() - started)


def _check_inputs(pipeline, registry, config, days, envelope, enrich_only, skeleton_only,
                  progress, skeleton_root, enriched_root):
    """Bad sources, output roots, stores or Ray addresses fail here, before anything is written.
    Returns the enrich stage's prepared plan and stores (None without enrichment), which the
    stage then reuses instead of opening and checking every store again."""
    from daedalus.layout.days import ensure_writable

    enrich = not skeleton_only and pipeline.has_enrichment
    if not enrich_only:
        from daedalus.skeleton.stage import check_sources

        check_sources(pipeline, registry, config, days)
        ensure_writable(skeleton_root)
    if enrich:
        from daedalus.enrich.stage import prepare_enrich

        ensure_writable(enriched_root, "enriched output root")
        return prepare_enrich(pipeline, config, envelope, progress)
    return None


def plan_pipeline(
    service: str,
    *,
    config: Config,
    registry: Registry,
    pipelines_dir: Path | str = "config/pipelines",
    target_date: dt.date | None = None,
    skeleton_only: bool = False,
    enrich_only: bool = False,
    output_root: Path | str | None = None,
    force: bool = False,
    pipeline: OperatorPipeline | None = None,
):
    """What `run_pipeline` would do per day and stage, and why (`--dry-run`); runs nothing."""
    from daedalus.engine.status import plan, stage_states

    config, pipeline, _ = _prepare(service, config, registry, pipelines_dir, skeleton_only,
                                   enrich_only, output_root, None, pipeline)
    stages = ("enrich",) if enrich_only else ("skeleton",) if skeleton_only else ("skeleton", "enrich")
    states = stage_states(pipeline, config, target_days(config, target_date),
                          Path(config.runtime.output_root), stages)
    return plan(states, force=force)


def _prepare(service, config, registry, pipelines_dir, skeleton_only, enrich_only, output_root,
             day_workers, pipeline):
    from daedalus.engine.pipeline import resolve_pipeline

    if skeleton_only and enrich_only:
        raise DaedalusError("--skeleton-only and --enrich-only: pick at most one"
                            " (fix: drop one flag; no flag runs the full DAG)")
    if day_workers is not None and day_workers <= 0:
        raise DaedalusError(f"--day-workers: {day_workers} is not a positive count (fix: pass 1 or more)")
    if output_root is not None:
        config = config.with_runtime(output_root=Path(output_root))
    if day_workers is not None:
        config = config.with_runtime(day_workers=day_workers)
    source = "given"
    if pipeline is None:
        pipeline, override = resolve_pipeline(registry, service, config, Path(pipelines_dir))
        source = str(override) if override else "compiled"
    return config, pipeline, source
