"""An external memory governor: run a command, keep its whole process tree under a memory cap.

Ray's own resource isolation (`enable_resource_isolation`) needs a writable cgroup v2; on
read-only-cgroup pods it is unavailable, so nothing stops a run (driver, raylet, GCS, workers,
object store) from outgrowing the Ray envelope. This governor does it from outside: it starts
the command in its own session, samples the proportional set size (PSS: shared pages, such as
the object store's, are counted once across the tree) of every process in that session and
below, and when the total passes the cap it stops the tree (SIGTERM, then SIGKILL) and exits
with status 137 and a one-line message. It always reports the peak it saw.

    uv run python bench/memcap.py --limit-gb 20 -- daeda pipeline train dssm_ranking
    uv run python bench/memcap.py --from-config -- daeda pipeline train dssm_ranking

`--from-config` takes the cap from the Ray envelope in config/training/runtime.yaml
(`ray.memory_gb`, clamped to 80% of this machine like the local cluster is). `TreeSampler` is
also what bench/enrich.py uses to measure a stage's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

EXIT_OVER_CAP = 137


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _session_members(sid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[4]) == sid:
            out.add(int(stat.parent.name))
    return out


def process_tree(root: int) -> set[int]:
    """`root`, its descendants, and whatever else runs in its session (daemonized helpers)."""
    children = _children_map()
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    try:
        found |= _session_members(os.getsid(root))
    except OSError:
        pass
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB, from smaps_rollup; (0, 0) for a process that is gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


class TreeSampler:
    """Samples a process tree's total PSS every `interval` seconds; keeps the peak."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval = root, interval
        self.peak_pss_kib = 0
        self.peak_rss_kib = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        pids = process_tree(self.root)
        total_pss = total_rss = 0
        for pid in pids:
            pss, rss = _memory_kib(pid)
            total_pss += pss
            total_rss += rss
        self.peak_pss_kib = max(self.peak_pss_kib, total_pss)
        self.peak_rss_kib = max(self.peak_rss_kib, total_rss)
        self.peak_processes = max(self.peak_processes, len(pids))
        return total_pss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"peak_pss_gib": round(self.peak_pss_kib / 2**20, 3),
                "peak_rss_sum_gib": round(self.peak_rss_kib / 2**20, 3),
                "peak_processes": self.peak_processes}


def stop_tree(root: int, grace: float = 5.0) -> None:
    """SIGTERM the tree (its session's group and every descendant), SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = process_tree(root)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def envelope_limit_gb(runtime_config: Path) -> float:
    """The Ray envelope's memory (`ray.memory_gb`), clamped to 80% of this machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from daedalus.core.yamlio import load_yaml_mapping

    ray = load_yaml_mapping(runtime_config, "runtime config").get("ray") or {}
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return min(float(ray.get("memory_gb", 64)), round(host * 0.8, 1))


def govern(command: list[str], limit_gb: float, interval: float = 0.25,
           report=print) -> int:
    """Run `command` under the cap; returns its exit status, or 137 if it was stopped."""
    child = subprocess.Popen(command, start_new_session=True)
    limit_kib = limit_gb * 2**20
    over = None
    with TreeSampler(child.pid, interval) as sampler:
        while child.poll() is None:
            if sampler.sample() > limit_kib:
                over = sampler.peak_pss_kib
                stop_tree(child.pid)
                break
            time.sleep(interval)
    child.wait()
    stop_tree(child.pid, grace=1.0)   # helpers the command left behind in its session
    summary = {**sampler.summary(), "limit_gib": limit_gb, "exit": child.returncode}
    if over is not None:
        report(f"memcap: process tree used {over / 2**20:.2f} GiB > the {limit_gb:g} GiB cap;"
               " stopped it (fix: lower the envelope's workload, e.g. --num-workers or"
               " enrich_batch_rows, or raise ray.memory_gb)")
        summary["exit"] = EXIT_OVER_CAP
    report(f"memcap: {json.dumps(summary)}")
    return summary["exit"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cap = parser.add_mutually_exclusive_group(required=True)
    cap.add_argument("--limit-gb", type=float)
    cap.add_argument("--from-config", action="store_true",
                     help="cap = ray.memory_gb of --runtime-config-path (clamped to the host)")
    parser.add_argument("--runtime-config-path", type=Path,
                        default=Path("config/training/runtime.yaml"))
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    limit = args.limit_gb if args.limit_gb else envelope_limit_gb(args.runtime_config_path)
    return govern(command, limit, args.interval,
                  report=lambda m: print(m, file=sys.stderr, flush=True))


if __name__ == "__main__":
    sys.exit(main())
