"""The Dagster code location, assembled by `build_defs` from the registry and one resource.

`build_defs(cfg)` is the factory tests and agents use to swap the `DaedalusConfig`
resource: a resolved job's resources cannot be replaced afterwards.
"""

from __future__ import annotations

import dagster as dg

from daedalus.defs.checks import training_checks
from daedalus.defs.resources import DaedalusConfig
from daedalus.defs.sources import feature_view_assets, observe_job, observe_schedule, view_lookbacks
from daedalus.defs.training import training_asset, training_job_for, training_schedule_for
from daedalus.engine.pipeline import compiled_pipeline

__all__ = ["AUTOMATION_SENSOR", "DaedalusConfig", "build_defs"]

AUTOMATION_SENSOR = "daedalus_automation"


def build_defs(cfg: DaedalusConfig | None = None) -> dg.Definitions:
    """Feature views (observable, partitioned by day) with their observation job; per service
    a training asset + checks + job + schedule; the automation sensor; resource `cfg`."""
    cfg = cfg or DaedalusConfig()
    config, registry = cfg.project()
    services = sorted(registry.services)
    lookbacks = view_lookbacks([compiled_pipeline(registry, s, config) for s in services])
    views = feature_view_assets(registry, lookbacks)
    assets: list = list(views)
    checks, jobs, schedules = [], [], []
    for service in services:
        asset = training_asset(service, config, registry)
        assets.append(asset)
        checks += training_checks(service, asset)
        job = training_job_for(service)
        jobs.append(job)
        schedules.append(training_schedule_for(job))
    observe = observe_job(views)
    jobs.append(observe)
    schedules.append(observe_schedule(observe))
    # Evaluates the training assets' automation condition; off until turned on in the UI.
    automation = dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR, target=dg.AssetSelection.groups("training"),
        default_status=dg.DefaultSensorStatus.STOPPED)
    # In process for the UI's ad-hoc materializations too: a process per step costs a core.
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, schedules=schedules,
                          sensors=[automation], resources={"cfg": cfg},
                          executor=dg.in_process_executor)
