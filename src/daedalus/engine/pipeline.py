"""The DAG a run executes: a hand-edited `<service>.yaml` override if present, else a fresh
compile, with the SQL of every source-side operator attached so the DAG shows what runs."""

from __future__ import annotations

from pathlib import Path

from daedalus.core.compiler import DEFAULT_PIPELINES_DIR, compile_service, override_path
from daedalus.core.config import Config
from daedalus.core.errors import DaedalusError
from daedalus.core.operators import OperatorPipeline, load_pipeline_yaml
from daedalus.core.registry import Registry
from daedalus.skeleton.sql import with_sql


def compiled_pipeline(registry: Registry, service_name: str, config: Config) -> OperatorPipeline:
    """The service compiled afresh, each operator on `compute.engine` where it can run there,
    with its SQL: what `daeda pipeline compile` writes."""
    compiled = compile_service(registry, service_name, config)
    return with_sql(compiled.on_engine(config.runtime.compute.engine))


def resolve_pipeline(registry: Registry, service_name: str, config: Config,
                     pipelines_dir: Path = DEFAULT_PIPELINES_DIR) -> tuple[OperatorPipeline, Path | None]:
    """The DAG a train runs and the override file it came from (None: compiled). A hand-edited
    DAG's engines are its own (one operator can run elsewhere); a compiled one's follow
    `compute.engine`."""
    compiled = compile_service(registry, service_name, config, check_sources=True)
    override = override_path(service_name, pipelines_dir)
    if override.is_file():
        pipeline = load_pipeline_yaml(override)
        if pipeline.service != service_name:
            raise DaedalusError(f"{override}: service: {pipeline.service!r} is not {service_name!r}"
                                f" (fix: set service: {service_name} or remove the file)")
        return with_sql(pipeline), override
    return with_sql(compiled.on_engine(config.runtime.compute.engine)), None
