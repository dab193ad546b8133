"""What a stage reports: one `DayResult` per day and stage, one `RunSummary` per run."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Literal

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
    recomputed: bool = False  # this run computed the day (written, or found empty) ...
    reason: str = ""  # ... and why; for a skipped day, why it was not needed


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
