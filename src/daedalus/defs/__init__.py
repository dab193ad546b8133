"""The Dagster code location, assembled by `build_defs` from the registry and one resource.

`build_defs(cfg)` is the factory tests and agents use to swap the `DaedalusConfig`
resource: a resolved job's resources cannot be replaced afterwards.
"""

from __future__ import annotations

import dagster as dg

from daedalus.defs.checks import training_checks
from daedalus.defs.resources import DaedalusConfig
from daedalus.defs.training import (
    feature_view_specs,
    training_asset,
    training_job_for,
    training_schedule_for,
)

__all__ = ["DaedalusConfig", "build_defs"]


def build_defs(cfg: DaedalusConfig | None = None) -> dg.Definitions:
    """Feature views, one training asset + checks + job + schedule per service, resource `cfg`."""
    cfg = cfg or DaedalusConfig()
    config, registry = cfg.project()
    assets: list = feature_view_specs(registry)
    checks, jobs, schedules = [], [], []
    for service in sorted(registry.services):
        asset = training_asset(service, config, registry)
        assets.append(asset)
        checks += training_checks(service, asset)
        job = training_job_for(service)
        jobs.append(job)
        schedules.append(training_schedule_for(job))
    # In process for the UI's ad-hoc materializations too: a process per step costs a core.
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, schedules=schedules,
                          resources={"cfg": cfg}, executor=dg.in_process_executor)
