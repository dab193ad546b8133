"""Run a compiled operator DAG over target days: source side (DuckDB), then enrichment (Ray).

`run_pipeline` is the one engine entry point: the CLI and the Dagster ops call
it. It resolves the DAG, picks the days, runs the requested contiguous
sub-range of operators and returns a `RunSummary`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from daedalus.config import Config, RaySettings, enriched_root_for
from daedalus.errors import DaedalusError
from daedalus.operators import OperatorPipeline
from daedalus.registry import Registry

Progress = Callable[[str], None]
DayStatus = Literal["written", "skipped", "empty"]


@dataclass(frozen=True)
class DayResult:
    """What one stage did for one day."""

    stage: Literal["skeleton", "enrich"]
    day: dt.date
    status: DayStatus
    rows: int
    path: str | None
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class RunSummary:
    service: str
    days: tuple[dt.date, ...]
    results: tuple[DayResult, ...]
    output_root: str
    enriched_root: str
    pipeline_source: str
    seconds: float

    def rows(self, stage: str) -> int:
        return sum(r.rows for r in self.results if r.stage == stage and r.status != "empty")

    def to_json(self) -> str:
        data = asdict(self)
        data["days"] = [d.isoformat() for d in self.days]
        for r in data["results"]:
            r["day"] = r["day"].isoformat()
        return json.dumps(data, indent=2)

    def human(self) -> str:
        lines = [f"{self.service}: {len(self.days)} day(s) in {self.seconds:.1f}s"]
        for stage, root in (("skeleton", self.output_root), ("enrich", self.enriched_root)):
            res = [r for r in self.results if r.stage == stage]
            if not res:
                continue
            counts = {s: sum(1 for r in res if r.status == s) for s in ("written", "skipped", "empty")}
            lines.append(f"  {stage:<8} {counts['written']} written, {counts['skipped']} skipped,"
                         f" {counts['empty']} empty; {self.rows(stage):,} rows → {root}")
        return "\n".join(lines)


@dataclass(frozen=True)
class RayEnvelope:
    """The resource budget of the pythonic operators (spec 02/03: 16c / 64 GiB by default)."""

    num_cpus: int = 16
    memory_gb: float = 64
    object_store_gb: float = 20
    system_reserved_cpus: int = 1
    system_reserved_memory_gb: float = 4
    num_workers: int | None = None
    preload_day_embeddings: bool = True
    address: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_settings(cls, settings: RaySettings, **overrides) -> RayEnvelope:
        values = settings.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["num_cpus"] <= 0:
            raise DaedalusError(f"--ray-num-cpus: {values['num_cpus']} is not a positive CPU count"
                                " (fix: pass 1 or more)")
        if values.get("num_workers") is not None and values["num_workers"] <= 0:
            raise DaedalusError(f"--num-workers: {values['num_workers']} is not a positive actor"
                                " count (fix: pass 1 or more, or leave it out to size the pool)")
        return cls(**values)

    @property
    def worker_cpu_budget(self) -> int:
        return max(1, self.num_cpus - self.system_reserved_cpus)

    def actor_pool_size(self) -> int:
        """~80% of the worker CPUs, so Ray Data read/write tasks are never starved."""
        size = self.num_workers or max(1, int(self.worker_cpu_budget * 0.8))
        return max(1, min(size, self.worker_cpu_budget))

    def clamped_to_machine(self) -> RayEnvelope:
        """A local cluster cannot exceed the host: clamp CPUs and memory, saying so."""
        if self.address:
            return self
        notes = list(self.notes)
        cpus = os.cpu_count() or 1
        num_cpus = self.num_cpus
        if num_cpus > cpus:
            notes.append(f"ray num_cpus {num_cpus} clamped to this machine's {cpus}")
            num_cpus = cpus
        total_gb = _host_memory_gb()
        memory_gb = self.memory_gb
        if memory_gb > total_gb * 0.8:
            memory_gb = round(total_gb * 0.8, 1)
            notes.append(f"ray memory {self.memory_gb} GiB clamped to {memory_gb} GiB (80% of host)")
        object_store_gb = min(self.object_store_gb, memory_gb * 0.3, _shm_gb() * 0.8)
        if object_store_gb < self.object_store_gb:
            object_store_gb = round(object_store_gb, 1)
            notes.append(f"ray object store {self.object_store_gb} GiB clamped to {object_store_gb} GiB")
        return replace(self, num_cpus=num_cpus, memory_gb=memory_gb, object_store_gb=object_store_gb,
                       system_reserved_cpus=min(self.system_reserved_cpus, max(0, num_cpus - 1)),
                       notes=tuple(notes))


def _host_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _shm_gb() -> float:
    try:
        st = os.statvfs("/dev/shm")
        return st.f_bsize * st.f_blocks / 2**30
    except OSError:
        return _host_memory_gb() * 0.3


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
        from daedalus.skeleton import run_skeleton_stage

        results += run_skeleton_stage(pipeline, config, days, skeleton_root,
                                      day_workers=config.runtime.day_workers, progress=progress,
                                      force=force)
    if not skeleton_only and pipeline.has_enrichment:
        from daedalus.enrich import run_enrich_stage

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
    from daedalus.days import ensure_writable

    enrich = not skeleton_only and pipeline.has_enrichment
    if not enrich_only:
        from daedalus.skeleton import check_sources

        check_sources(pipeline, registry, config, days)
        ensure_writable(skeleton_root)
    if enrich:
        from daedalus.enrich import prepare_enrich

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
    from daedalus.status import plan, stage_states

    config, pipeline, _ = _prepare(service, config, registry, pipelines_dir, skeleton_only,
                                   enrich_only, output_root, None, pipeline)
    stages = ("enrich",) if enrich_only else ("skeleton",) if skeleton_only else ("skeleton", "enrich")
    states = stage_states(pipeline, config, target_days(config, target_date),
                          Path(config.runtime.output_root), stages)
    return plan(states, force=force)


def _prepare(service, config, registry, pipelines_dir, skeleton_only, enrich_only, output_root,
             day_workers, pipeline):
    from daedalus.compiler import resolve_pipeline

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
