"""`daeda status`: per day and stage — absent, incomplete, stale (and why), complete, or
empty (complete with no rows: no impressions that day, recorded by a 0-row sidecar manifest)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from daedalus.core.config import Config, enriched_root_for
from daedalus.core.operators import OperatorPipeline
from daedalus.layout.days import day_path
from daedalus.layout.manifest import day_state, enrich_fingerprint, read_manifest, skeleton_fingerprint


@dataclass(frozen=True)
class DayStatus:
    day: dt.date
    stage: str
    state: str
    reason: str
    rows: int | None

    def as_json(self) -> dict:
        return {**asdict(self), "day": self.day.isoformat()}


def store_versions(pipeline: OperatorPipeline, config: Config) -> dict[str, object]:
    """The version of every store the enrichment reads (a rebuilt store makes days stale).

    A store not built yet reports "absent": status never builds it.
    """
    from daedalus.store.lance_store import _is_store, store_version

    names = sorted({e.store for op in pipeline.of_kind("RayUdfTransform") for e in op.enrichments})
    out: dict[str, object] = {}
    for name in names:
        path = config.store_path(config.aggregations.store(name)).resolve()
        out[name] = store_version(path) if _is_store(path) else "absent"
    return out


def stage_states(pipeline: OperatorPipeline, config: Config, days: list[dt.date],
                 output_root: Path,
                 stages: tuple[str, ...] = ("skeleton", "enrich")) -> list[DayStatus]:
    """Each day's state per stage, judged by its manifest against the current inputs."""
    out: list[DayStatus] = []
    output_root = Path(output_root)
    enriched_root = enriched_root_for(output_root)
    enrich = pipeline.has_enrichment and "enrich" in stages
    stores = store_versions(pipeline, config) if enrich else {}
    for day in days:
        if "skeleton" in stages:
            folder = day_path(output_root, day)
            state, reason = day_state(folder, skeleton_fingerprint(pipeline, config, day))
            out.append(DayStatus(day, "skeleton", state, reason, _rows(folder)))
        if enrich:
            folder = day_path(enriched_root, day)
            fp = enrich_fingerprint(pipeline, config, day, output_root.resolve(), stores)
            state, reason = day_state(folder, fp)
            out.append(DayStatus(day, "enrich", state, reason, _rows(folder)))
    return out


def plan(states: list[DayStatus], force: bool = False) -> list[DayStatus]:
    """What a train would do: a recomputed skeleton day makes its enriched day stale too."""
    out, redone = [], set()
    for s in states:
        if force:
            out.append(DayStatus(s.day, s.stage, "run", "--force", s.rows))
            continue
        done = s.state in ("complete", "empty")
        if done and not (s.stage == "enrich" and s.day in redone):
            reason = "up to date" if s.state == "complete" else "no impressions"
            out.append(DayStatus(s.day, s.stage, "skip", reason, s.rows))
            continue
        reason = s.reason if not done else "its skeleton day is recomputed"
        if s.stage == "skeleton":
            redone.add(s.day)
        out.append(DayStatus(s.day, s.stage, "run", reason, s.rows))
    return out


def _rows(folder: Path) -> int | None:
    data = read_manifest(folder)
    return data.get("rows") if data else None


def render(states: list[DayStatus]) -> str:
    lines = [f"{'day':<12} {'stage':<9} {'state':<11} {'rows':>10}  reason"]
    for s in states:
        rows = f"{s.rows:,}" if s.rows is not None else "-"
        lines.append(f"{s.day.isoformat():<12} {s.stage:<9} {s.state:<11} {rows:>10}  {s.reason}")
    return "\n".join(lines)
