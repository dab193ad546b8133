"""`daeda`: the command line. Thin: parse flags, call the engine, print a summary.

Errors a user can fix arrive as `DaedalusError` and are printed on one line
(exit 2); progress goes to stderr so `--json` output on stdout stays clean.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from daedalus.core.config import parse_day
from daedalus.core.errors import DaedalusError
from daedalus.engine.request import (
    ALL_STAGES,
    RequestOptions,
    build_request,
    day_option,
    load_project,
)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _summary_only_on_stdout():
    """While the engine runs, whatever prints to stdout goes to stderr: Ray prints its
    raylet's warnings (e.g. "N PYTHON worker processes have been started") on stdout, which
    broke `--json` output for scripts."""
    return contextlib.redirect_stdout(sys.stderr)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feature-views-dir", default="feature_views")
    p.add_argument("--feature-services-dir", default="feature_services")
    p.add_argument("--base-config-path", default="config/base.yaml")
    p.add_argument("--runtime-config-path", default="config/training/runtime.yaml")
    p.add_argument("--aggregation-config-path", default="config/training/aggregations.yaml")


def _options(args, **choices) -> RequestOptions:
    """The request options the command's flags name (flags a command lacks keep the default)."""
    flags = {name: getattr(args, name) for name in (
        "base_config_path", "runtime_config_path", "aggregation_config_path",
        "feature_views_dir", "feature_services_dir", "pipelines_dir", "output_root", "engine")
        if getattr(args, name, None) is not None}
    return RequestOptions(service=getattr(args, "service", ""), **flags, **choices)


def cmd_compile(args) -> int:
    from daedalus.core.compiler import write_generated
    from daedalus.engine.pipeline import compiled_pipeline

    config, registry = load_project(_options(args))
    pipeline = compiled_pipeline(registry, args.service, config)
    if not args.no_write:
        path = write_generated(pipeline, Path(args.output_dir))
        _progress(f"wrote {path} ({len(pipeline.operators)} operators)")
    if args.print or args.no_write:
        print(pipeline.to_yaml(), end="")
    return 0


def cmd_train(args) -> int:
    from daedalus.engine.plan import plan_run, render
    from daedalus.engine.runner import run

    day = day_option(args.target_date, "--target-date")
    stages = ("skeleton",) if args.skeleton_only else ("enrich",) if args.enrich_only else ALL_STAGES
    request = build_request(_options(
        args, first_day=day, last_day=day, stages=stages, force=args.force,
        day_workers=args.day_workers, ray_num_cpus=args.ray_num_cpus,
        ray_address=args.ray_address, num_workers=args.num_workers,
        preload_day_embeddings=False if args.no_preload_day_embeddings else None))
    plan = plan_run(request)
    if args.dry_run:
        entries = list(plan.entries)
        print(json.dumps([p.as_json() for p in entries], indent=2) if args.json else render(entries))
        return 0
    with _summary_only_on_stdout():
        summary = run(request, plan, progress=_progress)
        if not args.no_dagster_record:
            _record_in_dagster(request, summary)
    print(summary.to_json() if args.json else summary.human())
    return 0


def _record_in_dagster(request, summary) -> None:
    """The days this run wrote, as materializations on the project's Dagster instance."""
    if not any(r.recomputed for r in summary.results):
        return      # nothing written: spare the import of Dagster and the instance's start
    from daedalus.defs.agent import project_instance
    from daedalus.defs.record import record_days

    with project_instance() as instance:
        record_days(request, summary, instance, progress=_progress)


def cmd_status(args) -> int:
    from daedalus.engine.plan import day_states, render

    request = build_request(_options(args, first_day=day_option(args.date_from, "--from"),
                                     last_day=day_option(args.date_to, "--to")))
    states = day_states(request)
    print(json.dumps([s.as_json() for s in states], indent=2) if args.json else render(states))
    return 0


def cmd_demo_data(args) -> int:
    import dataclasses

    from daedalus.demo.data import PRESETS, generate_demo_data

    spec = PRESETS[args.preset]
    changes = {k: getattr(args, k) for k in ("days", "users", "artworks", "events_per_day", "seed")
               if getattr(args, k) is not None}
    if args.start_date:
        changes["start_date"] = parse_day(args.start_date, "--start-date")
    for key, value in changes.items():
        if key != "start_date" and key != "seed" and value <= 0:
            raise DaedalusError(f"--{key.replace('_', '-')}: {value} must be positive (fix: pass 1 or more)")
    spec = dataclasses.replace(spec, **changes)
    root = Path(args.root or os.environ.get("DAEDALUS_SOURCES_ROOT") or "data/demo/sources")
    summary = generate_demo_data(root, spec, progress=_progress)
    print(json.dumps(summary, indent=2, default=str) if args.json else f"demo data written to {root}")
    return 0


def cmd_lineage(args) -> int:
    from daedalus.lineage import lineage, render

    config, registry = load_project(_options(args))
    print(render(lineage(registry, config, args.name), args.format))
    return 0


def cmd_store(args) -> int:
    from daedalus.store import build as embedding_store

    config, _ = load_project(_options(args))
    if args.store_command == "build":
        info = embedding_store.build_store(config, args.name, force=args.force, progress=_progress)
    else:
        info = embedding_store.store_info(config, args.name)
    print(json.dumps(info, indent=2, default=str) if args.json else embedding_store.render_info(info))
    return 0


def cmd_materialize_day(args) -> int:
    from daedalus.defs.agent import materialize_day

    with _summary_only_on_stdout():
        summary = materialize_day(args.service, args.date, progress=_progress)
    print(json.dumps(summary, indent=2))
    return 0


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line too (exit 2), not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (fix: see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="daeda", description="Daedalus feature platform")
    sub = parser.add_subparsers(dest="command", required=True)

    pipeline = sub.add_parser("pipeline", help="compile or train a feature service")
    psub = pipeline.add_subparsers(dest="pipeline_command", required=True)

    comp = psub.add_parser("compile", help="compile a service into its operator DAG")
    comp.add_argument("service")
    comp.add_argument("--output-dir", default="config/pipelines")
    comp.add_argument("--print", action="store_true", help="also print the compiled DAG's YAML")
    comp.add_argument("--no-write", action="store_true", help="print the YAML, write nothing")
    comp.add_argument("--engine", default=None, help="as `pipeline train --engine`")
    _add_config_flags(comp)
    comp.set_defaults(func=cmd_compile)

    train = psub.add_parser("train", help="run the service's DAG over the target days")
    train.add_argument("service")
    _add_config_flags(train)
    train.add_argument("--pipelines-dir", default="config/pipelines",
                       help="where a hand-edited <service>.yaml overrides the compiled DAG")
    train.add_argument("--output-root", default=None)
    train.add_argument("--target-date", default=None, help="one YYYY-MM-DD day")
    train.add_argument("--day-workers", type=int, default=None)
    train.add_argument("--engine", default=None,
                       help="where the skeleton's heavy operators run: duckdb, polars (the rolling"
                            " aggregate) or daft (it and the point-in-time joins); the same bytes;"
                            " default: runtime.yaml's compute.engine")
    stage = train.add_mutually_exclusive_group()
    stage.add_argument("--skeleton-only", action="store_true")
    stage.add_argument("--enrich-only", action="store_true")
    train.add_argument("--ray-num-cpus", type=int, default=None)
    train.add_argument("--ray-address", default=None, help="an existing Ray cluster (or RAY_ADDRESS)")
    train.add_argument("--num-workers", type=int, default=None, help="enrich actor pool size")
    train.add_argument("--no-preload-day-embeddings", action="store_true")
    train.add_argument("--force", action="store_true", help="recompute days even if up to date")
    train.add_argument("--dry-run", action="store_true", help="list what would run and why; run nothing")
    train.add_argument("--no-dagster-record", action="store_true",
                       help="do not record the written days on the Dagster instance")
    train.add_argument("--json", action="store_true", help="machine-readable summary")
    train.set_defaults(func=cmd_train)

    status = sub.add_parser("status", help="per day: absent, complete, empty, stale (and why)")
    status.add_argument("service")
    status.add_argument("--from", dest="date_from", default=None, help="first day (default feed_start)")
    status.add_argument("--to", dest="date_to", default=None, help="last day (default feed_end)")
    status.add_argument("--output-root", default=None)
    status.add_argument("--engine", default=None, help="as `pipeline train --engine`")
    status.add_argument("--pipelines-dir", default="config/pipelines")
    status.add_argument("--json", action="store_true")
    _add_config_flags(status)
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo-data", help="write deterministic demo sources")
    demo.add_argument("--root", default=None, help="default: $DAEDALUS_SOURCES_ROOT or data/demo/sources")
    demo.add_argument("--preset", choices=["small", "bench"], default="small")
    demo.add_argument("--start-date", default=None)
    demo.add_argument("--days", type=int, default=None)
    demo.add_argument("--users", type=int, default=None)
    demo.add_argument("--artworks", type=int, default=None)
    demo.add_argument("--events-per-day", type=int, default=None)
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo_data)

    lin = sub.add_parser("lineage", help="upstream/downstream of a view or service")
    lin.add_argument("name")
    lin.add_argument("--format", choices=["table", "json"], default="table")
    _add_config_flags(lin)
    lin.set_defaults(func=cmd_lineage)

    store = sub.add_parser("store", help="build or inspect an embedding store")
    ssub = store.add_subparsers(dest="store_command", required=True)
    for name in ("build", "info"):
        sp = ssub.add_parser(name)
        sp.add_argument("--name", default="artwork_embeddings")
        sp.add_argument("--json", action="store_true")
        if name == "build":
            sp.add_argument("--force", action="store_true", help="rebuild even if present")
        _add_config_flags(sp)
        sp.set_defaults(func=cmd_store)

    mat = sub.add_parser("materialize-day", help="materialize one Dagster partition in-process")
    mat.add_argument("service")
    mat.add_argument("date")
    mat.set_defaults(func=cmd_materialize_day)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DaedalusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
