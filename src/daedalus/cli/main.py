"""`daeda`: the command line. Thin: parse flags, call the engine, print a summary.

Errors a user can fix arrive as `DaedalusError` and are printed on one line
(exit 2); progress goes to stderr so `--json` output on stdout stays clean.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from daedalus.core.errors import DaedalusError


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


def _load(args):
    from daedalus.core.config import load_config
    from daedalus.core.registry import load_registry

    config = load_config(args.base_config_path, args.runtime_config_path, args.aggregation_config_path)
    registry = load_registry(args.feature_views_dir, args.feature_services_dir)
    return config, registry


def cmd_compile(args) -> int:
    from daedalus.core.compiler import write_generated
    from daedalus.engine.pipeline import compiled_pipeline

    config, registry = _load(args)
    pipeline = compiled_pipeline(registry, args.service, config)
    text = pipeline.to_yaml()
    if not args.no_write:
        path = write_generated(pipeline, Path(args.output_dir))
        _progress(f"wrote {path} ({len(pipeline.operators)} operators)")
    print(text, end="")
    return 0


def cmd_train(args) -> int:
    from daedalus.engine.runner import RayEnvelope, parse_target_date, run_pipeline

    config, registry = _load(args)
    target = parse_target_date(args.target_date)
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or config.runtime.ray.address
    envelope = RayEnvelope.from_settings(
        config.runtime.ray, num_cpus=args.ray_num_cpus, address=address, num_workers=args.num_workers,
        preload_day_embeddings=False if args.no_preload_day_embeddings else None)
    if args.dry_run:
        from daedalus.engine.runner import plan_pipeline
        from daedalus.engine.status import render

        planned = plan_pipeline(
            args.service, config=config, registry=registry, pipelines_dir=args.pipelines_dir,
            target_date=target, skeleton_only=args.skeleton_only, enrich_only=args.enrich_only,
            output_root=args.output_root, force=args.force)
        print(json.dumps([p.as_json() for p in planned], indent=2) if args.json else render(planned))
        return 0
    with _summary_only_on_stdout():
        summary = run_pipeline(
            args.service, config=config, registry=registry, pipelines_dir=args.pipelines_dir,
            target_date=target, skeleton_only=args.skeleton_only, enrich_only=args.enrich_only,
            output_root=args.output_root, day_workers=args.day_workers, envelope=envelope,
            progress=_progress, force=args.force)
    print(summary.to_json() if args.json else summary.human())
    return 0


def cmd_status(args) -> int:
    from daedalus.engine.pipeline import resolve_pipeline
    from daedalus.engine.runner import parse_target_date
    from daedalus.engine.status import render, stage_states

    config, registry = _load(args)
    if args.output_root:
        config = config.with_runtime(output_root=Path(args.output_root))
    first = parse_target_date(args.date_from) or config.runtime.feed_start
    last = parse_target_date(args.date_to) or config.runtime.feed_end
    if last < first:
        raise DaedalusError(f"--to: {last} is before --from {first} (fix: swap them)")
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    pipeline, _ = resolve_pipeline(registry, args.service, config, Path(args.pipelines_dir))
    states = stage_states(pipeline, config, days, Path(config.runtime.output_root))
    print(json.dumps([s.as_json() for s in states], indent=2) if args.json else render(states))
    return 0


def cmd_demo_data(args) -> int:
    import dataclasses
    import datetime as dt

    from daedalus.demo.data import PRESETS, generate_demo_data

    spec = PRESETS[args.preset]
    changes = {k: getattr(args, k) for k in ("days", "users", "artworks", "events_per_day", "seed")
               if getattr(args, k) is not None}
    if args.start_date:
        try:
            changes["start_date"] = dt.date.fromisoformat(args.start_date)
        except ValueError:
            raise DaedalusError(
                f"--start-date: {args.start_date!r} is not a date (fix: use YYYY-MM-DD)") from None
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

    config, registry = _load(args)
    print(render(lineage(registry, config, args.name), args.format))
    return 0


def cmd_store(args) -> int:
    from daedalus.store import lance_store as embedding_store

    config, _ = _load(args)
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
    comp.add_argument("--no-write", action="store_true", help="echo only, write nothing")
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
    stage = train.add_mutually_exclusive_group()
    stage.add_argument("--skeleton-only", action="store_true")
    stage.add_argument("--enrich-only", action="store_true")
    train.add_argument("--ray-num-cpus", type=int, default=None)
    train.add_argument("--ray-address", default=None, help="an existing Ray cluster (or RAY_ADDRESS)")
    train.add_argument("--num-workers", type=int, default=None, help="enrich actor pool size")
    train.add_argument("--no-preload-day-embeddings", action="store_true")
    train.add_argument("--force", action="store_true", help="recompute days even if up to date")
    train.add_argument("--dry-run", action="store_true", help="list what would run and why; run nothing")
    train.add_argument("--json", action="store_true", help="machine-readable summary")
    train.set_defaults(func=cmd_train)

    status = sub.add_parser("status", help="per day: absent, complete, empty, stale (and why)")
    status.add_argument("service")
    status.add_argument("--from", dest="date_from", default=None, help="first day (default feed_start)")
    status.add_argument("--to", dest="date_to", default=None, help="last day (default feed_end)")
    status.add_argument("--output-root", default=None)
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
