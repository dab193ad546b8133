"""`daeda materialize-day`: one training partition, in process, on the project's Dagster instance.

The run is recorded in `$DAGSTER_HOME` (default `.dagster_home/`, the instance `make dev`
serves), so it shows in the UI with its metadata and check results.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from daedalus.core.config import parse_day
from daedalus.core.errors import DaedalusError
from daedalus.defs.partitions import daily_partitions
from daedalus.defs.training import training_asset_name, training_job_name

PROJECT_DAGSTER_HOME = Path(".dagster_home")
DEFAULT_INSTANCE_YAML = "telemetry:\n  enabled: false\n"
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def project_instance() -> dg.DagsterInstance:
    """The persistent instance at `$DAGSTER_HOME`, else `./.dagster_home` (created if missing)."""
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    # Opening an instance creates its SQLite storage on first use; two runs doing that at once
    # (two `daeda pipeline train` of different days) both stamp the schema and one fails. One
    # opener at a time, per home; an existing instance opens in milliseconds.
    fd = os.open(home / ".daedalus-open.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text(DEFAULT_INSTANCE_YAML)
        return dg.DagsterInstance.from_config(str(home))
    finally:
        os.close(fd)


def _partition_key(date: str) -> str:
    day = parse_day(date, "materialize-day: DATE")
    key = day.isoformat()
    if not daily_partitions.has_partition_key(key):
        first = daily_partitions.get_first_partition_key()
        last = daily_partitions.get_last_partition_key()
        raise DaedalusError(f"materialize-day: DATE {key} is not a partition of the daily training"
                            f" asset (fix: pick a day from {first} to {last}; today's partition"
                            " opens once the day is over)")
    return key


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """One line for a failed run: the engine's DaedalusError when that is the cause."""
    first = ""
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.STEP_FAILURE:
            continue
        error, root = event.step_failure_data.error, None
        while error is not None:
            if error.cls_name == "DaedalusError":
                return error.message.strip().removeprefix("daedalus.core.errors.DaedalusError: ")
            root, error = error, error.cause
        if root is not None and not first:
            first = f"step {event.step_key}: {root.message.strip().splitlines()[0]}"
    return first or "the run failed"


def materialize_day(service: str, date: str, progress: Callable[[str], None] | None = None, *,
                    defs: dg.Definitions | None = None,
                    instance: dg.DagsterInstance | None = None) -> dict:
    """Materialize `<service>_training` for DATE with its checks; return its summary.

    A failing check is an error: the day was written but must not be trusted.
    """
    progress = progress or (lambda _msg: None)
    key = _partition_key(date)
    if defs is None:
        from daedalus.defs import build_defs

        defs = build_defs()
    job_name = training_job_name(service)
    known = sorted(j.name for j in defs.jobs or () if j.name.endswith("_daily"))
    if job_name not in known:
        services = [j.removesuffix("_daily") for j in known]
        raise DaedalusError(f"materialize-day: no training asset for service {service!r}"
                            f" (fix: use one of {services})")
    job = defs.resolve_job_def(job_name)
    instance = instance or project_instance()
    progress(f"materializing {training_asset_name(service)} partition {key}"
             f" on the Dagster instance at {instance.root_directory}")
    # Dagster, DuckDB and Ray may print; stdout stays clean for the JSON summary.
    with contextlib.redirect_stdout(sys.stderr):
        result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False,
                                        run_config=QUIET_CONSOLE)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    failed = sorted(name for name, passed in checks.items() if not passed)
    if failed:
        raise DaedalusError(f"materialize-day: {service} {key}: check(s) {failed} failed in run"
                            f" {result.run_id} (fix: inspect the check metadata in the Dagster UI"
                            " and rerun the day once the cause is fixed)")
    if not result.success:
        raise DaedalusError(f"materialize-day: {service} {key}: run {result.run_id} failed:"
                            f" {_failure(result)}")
    progress(f"run {result.run_id} succeeded")
    materialization = next(e.materialization for e in result.get_asset_materialization_events()
                           if e.asset_key == dg.AssetKey(training_asset_name(service)))
    meta = {k: v.value for k, v in materialization.metadata.items()}
    return {
        "service": service,
        "date": key,
        "rows": meta["rows"],
        # A day without impressions has no folder: there is no path to hand back.
        "output_path": str(meta["output_path"]) if meta["rows"] else None,
        "embedding_columns": list(meta["embedding_columns"]),
        "run_id": result.run_id,
        "checks": checks,
    }
