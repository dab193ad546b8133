"""Where a run's CPU goes, by process role: user and system seconds, and how many processes.

Samples /proc every `--interval` seconds for every process of the command it starts, as
bench/memcap.py finds them (descendants and session: a local Ray cluster's raylet, GCS and
workers) and names each by its title:
`ray::Write`, `ray::MapWorker(MapBatches(EnrichBatches))`, `ray::IDLE`, raylet, gcs_server,
the driver. A worker that is still booting (python starting, `import ray`) is "worker boot".
Prints per-role totals; `--timeline FILE` also writes one line per interval, per process.

This is how the cold day's cost of new worker processes was measured (bench/README.md,
"Enrich, sessions 4-5"). Processes that live less than one interval are missed.

Usage: uv run python bench/cputrace.py [--interval 0.5] [--timeline FILE] -- CMD ...
  e.g. uv run python bench/cputrace.py -- .venv/bin/python bench/enrich.py --child --warm
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from memcap import process_tree

TICK = os.sysconf("SC_CLK_TCK")


def role(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    if cmd.startswith("ray::"):
        return re.sub(r"\.[A-Za-z_]\w*$", "", cmd.split()[0])  # ray::Actor.method -> ray::Actor
    if "default_worker.py" in cmd:
        return "worker boot"
    for name in ("raylet", "gcs_server", "log_monitor", "dashboard", "runtime_env_agent",
                 "monitor.py"):
        if name in cmd:
            return name
    words = cmd.split()
    script = next((w for w in words[1:] if w.endswith(".py")), None)
    return Path(script or (words[0] if words else "?")).name


def tree_cpu(root: int) -> dict[int, tuple[int, int]]:
    """pid -> (user, system) clock ticks of every process in `root`'s tree and session."""
    out = {}
    for pid in process_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[pid] = (int(fields[11]), int(fields[12]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--timeline", type=Path, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to trace after --")
    started = time.monotonic()
    proc = subprocess.Popen(command, start_new_session=True)
    seen: dict[int, tuple[int, int]] = {}
    user: collections.Counter[str] = collections.Counter()
    system: collections.Counter[str] = collections.Counter()
    pids: dict[str, set[int]] = collections.defaultdict(set)
    timeline = args.timeline.open("w") if args.timeline else None
    while proc.poll() is None:
        time.sleep(args.interval)
        line = []
        for pid, (u, s) in tree_cpu(proc.pid).items():
            pu, ps = seen.get(pid, (0, 0))
            seen[pid] = (u, s)
            if (u - pu) + (s - ps) == 0:
                continue
            name = role(pid) or "?"
            user[name] += (u - pu) / TICK
            system[name] += (s - ps) / TICK
            pids[name].add(pid)
            line.append(f"{name}:{pid}={((u - pu) + (s - ps)) / TICK:.2f}")
        if timeline:
            timeline.write(f"{time.monotonic() - started:7.1f} {' '.join(sorted(line))}\n")
    wall = time.monotonic() - started
    print(f"\n{' '.join(command)}: exit {proc.returncode}, {wall:.1f} s wall,"
          f" {sum(user.values()) + sum(system.values()):.1f} CPU-s", file=sys.stderr)
    print(f"{'role':<48} {'CPU s':>7} {'sys s':>7} {'procs':>5}", file=sys.stderr)
    for name in sorted(user, key=lambda n: -(user[n] + system[n])):
        print(f"{name:<48} {user[name] + system[name]:7.1f} {system[name]:7.1f}"
              f" {len(pids[name]):5d}", file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
