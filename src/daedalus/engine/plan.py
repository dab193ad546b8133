"""The one place that decides whether a day needs work.

`day_states` judges each day and stage by its manifest against the current inputs, DAG and
config: absent, incomplete, stale (and why), complete, or empty (complete with no rows: no
impressions that day, recorded by a 0-row sidecar manifest). `daeda status` prints exactly
that. `plan_run` turns the states into what a run does (`run` or `skip`, and why); the
runner, `--dry-run` and the Dagster ops all act on that plan, computed once per run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from daedalus.core.config import Config
from daedalus.core.operators import OperatorPipeline
from daedalus.engine.request import RunRequest
from daedalus.layout.days import day_path
from daedalus.layout.manifest import (
    day_state,
    enrich_fingerprint,
    read_manifest,
    recorded_day_fingerprint,
    skeleton_fingerprint,
)
from daedalus.store.build import is_store, store_version

Action = Literal["run", "skip"]


@dataclass(frozen=True)
class DayState:
    """What a day's manifest says of one stage, judged against the inputs now."""

    day: dt.date
    stage: str
    state: str
    reason: str
    rows: int | None

    def as_json(self) -> dict:
        return {**asdict(self), "day": self.day.isoformat()}


@dataclass(frozen=True)
class DayPlan:
    """What a run does with one stage of one day, and why."""

    day: dt.date
    stage: str
    action: Action
    reason: str
    rows: int | None
    state: str  # the day's state the decision was made from

    def as_json(self) -> dict:
        return {"day": self.day.isoformat(), "stage": self.stage, "state": self.action,
                "reason": self.reason, "rows": self.rows, "day_state": self.state}


@dataclass(frozen=True)
class RunPlan:
    entries: tuple[DayPlan, ...]

    def of(self, stage: str) -> list[DayPlan]:
        return [p for p in self.entries if p.stage == stage]

    def to_run(self, stage: str) -> list[DayPlan]:
        return [p for p in self.of(stage) if p.action == "run"]


def store_versions(pipeline: OperatorPipeline, config: Config) -> dict[str, object]:
    """The version of every store the enrichment reads (a rebuilt store makes days stale).

    A store not built yet reports "absent": planning never builds it.
    """
    names = sorted({e.store for op in pipeline.of_kind("RayUdfTransform") for e in op.enrichments})
    out: dict[str, object] = {}
    for name in names:
        path = config.store_path(config.aggregations.store(name)).resolve()
        out[name] = store_version(path) if is_store(path) else "absent"
    return out


def day_states(request: RunRequest) -> list[DayState]:
    """Each of the request's days, per requested stage, as its manifest stands now."""
    pipeline, config = request.pipeline, request.config
    skeleton_root = request.skeleton_root
    stores = store_versions(pipeline, config) if request.runs_enrich else {}
    out: list[DayState] = []
    for day in request.days:
        if "skeleton" in request.stages:
            folder = day_path(skeleton_root, day)
            current = skeleton_fingerprint(pipeline, config, day, recorded_day_fingerprint(folder))
            state, reason = day_state(folder, current)
            out.append(DayState(day, "skeleton", state, reason, _rows(folder)))
        if request.runs_enrich:
            folder = day_path(request.enriched_root, day)
            fp = enrich_fingerprint(pipeline, config, day, skeleton_root, stores)
            state, reason = day_state(folder, fp)
            out.append(DayState(day, "enrich", state, reason, _rows(folder)))
    return out


def plan_run(request: RunRequest) -> RunPlan:
    """Run a day's stage unless it is complete or empty and up to date; `force` runs all.
    A skeleton day that runs makes its enriched day run too (its input changes)."""
    entries, redone = [], set()
    for s in day_states(request):
        if request.force:
            entries.append(DayPlan(s.day, s.stage, "run", "--force", s.rows, s.state))
            continue
        done = s.state in ("complete", "empty")
        if done and not (s.stage == "enrich" and s.day in redone):
            reason = "up to date" if s.state == "complete" else "no impressions"
            entries.append(DayPlan(s.day, s.stage, "skip", reason, s.rows, s.state))
            continue
        reason = s.reason if not done else "its skeleton day is recomputed"
        if s.stage == "skeleton":
            redone.add(s.day)
        entries.append(DayPlan(s.day, s.stage, "run", reason, s.rows, s.state))
    return RunPlan(tuple(entries))


def _rows(folder: Path) -> int | None:
    data = read_manifest(folder)
    return data.get("rows") if data else None


def render(rows: list[DayState] | list[DayPlan]) -> str:
    """A table of states (`daeda status`) or of a plan (`--dry-run`)."""
    lines = [f"{'day':<12} {'stage':<9} {'state':<11} {'rows':>10}  reason"]
    for s in rows:
        rows_text = f"{s.rows:,}" if s.rows is not None else "-"
        state = s.action if isinstance(s, DayPlan) else s.state
        lines.append(f"{s.day.isoformat():<12} {s.stage:<9} {state:<11} {rows_text:>10}  {s.reason}")
    return "\n".join(lines)
