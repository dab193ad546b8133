"""Helpers of the reliability tests: small demo sources, a throwaway project, the CLI as a
killable child process, and checks of what readers can see on disk.

The child runs in its own session (`start_new_session`), so it and everything it starts (Ray's
raylet, GCS and workers) can be found by session id and killed together; `stop_session` is
called on every child, so no test leaks a process whatever happens.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from daedalus.demo.data import DemoDataSpec, generate_demo_data
from daedalus.layout.days import present_days
from daedalus.layout.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
DEMO = DemoDataSpec(days=2, users=200, artworks=500, events_per_day=2000)
D1, D2 = dt.date(2026, 2, 1), dt.date(2026, 2, 2)
PROGRESS_PREFIX = "["  # progress lines on stderr look like "[13:35:00] ..."


def demo_sources(root: Path) -> Path:
    generate_demo_data(root, DEMO)
    return root


@dataclass
class Workspace:
    """A project (config + registry copies) whose sources, store, outputs and scratch live in
    `root`; `flags()` points the CLI at it."""

    root: Path

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    @property
    def store(self) -> Path:
        return self.root / "store" / "artwork_embedding"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def enriched(self) -> Path:
        return self.root / "out_enriched"

    @property
    def scratch(self) -> Path:
        return self.root / "duckdb_tmp"

    def flags(self) -> list[str]:
        p = self.project
        return ["--base-config-path", str(p / "config/base.yaml"),
                "--runtime-config-path", str(p / "config/training/runtime.yaml"),
                "--aggregation-config-path", str(p / "config/training/aggregations.yaml"),
                "--feature-views-dir", str(p / "feature_views"),
                "--feature-services-dir", str(p / "feature_services")]

    def train(self, *extra: str) -> list[str]:
        return ["pipeline", "train", "dssm_ranking", "--pipelines-dir",
                str(self.project / "config/pipelines"), *extra, *self.flags()]

    def edit(self, relative: str, old: str, new: str) -> None:
        path = self.project / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, 1))


def workspace(root: Path, sources: Path | None = None, copy_sources: bool = False) -> Workspace:
    """A fresh workspace at `root` over the demo days; sources linked (or copied) from `sources`."""
    ws = Workspace(Path(root))
    ws.root.mkdir(parents=True, exist_ok=True)
    for name in ("config", "feature_views", "feature_services"):
        shutil.copytree(REPO / name, ws.project / name, ignore=shutil.ignore_patterns("pipelines"))
    (ws.project / "config/pipelines").mkdir()
    if sources is not None:
        if copy_sources:
            shutil.copytree(sources, ws.sources)
        else:
            ws.sources.symlink_to(sources, target_is_directory=True)
    ws.edit("config/base.yaml", "sources_root: data/demo/sources", f"sources_root: {ws.sources}")
    ws.edit("config/base.yaml", "store_root: data/store", f"store_root: {ws.root / 'store'}")
    ws.edit("config/training/runtime.yaml", "output_root: data/training_output",
            f"output_root: {ws.out}")
    ws.edit("config/training/runtime.yaml", "temp_directory: data/tmp/duckdb",
            f"temp_directory: {ws.scratch}")
    ws.edit("config/training/runtime.yaml", "feed_end: 2026-02-03", f"feed_end: {D2}")
    return ws


# -- the CLI as a child process -----------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DAEDALUS_", "RAY_ADDRESS", "PYTEST_"))}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class Child:
    """`daeda ...` in its own session, output into files (a stopped child cannot fill a pipe)."""

    def __init__(self, args: list[str], logs: Path, **env: str):
        logs.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.stdout_path, self.stderr_path = logs / f"{stamp}.out", logs / f"{stamp}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "daedalus.cli", *args], cwd=REPO,
                                         env=child_env(**env), stdout=out, stderr=err,
                                         start_new_session=True)
        self.pid = self.proc.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_session(self.pid)
            raise AssertionError(f"daeda did not finish in {timeout}s:\n{self.stderr}") from None

    def wait_stopped(self, timeout: float = 300) -> None:
        """Until the child stops itself at its pause point (state T)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daeda exited {self.proc.returncode} before pausing:\n"
                                     f"{self.stderr}")
            if process_state(self.pid) == "T":
                return
            time.sleep(0.05)
        stop_session(self.pid)
        raise AssertionError(f"daeda did not reach its pause point in {timeout}s:\n{self.stderr}")

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> int:
        """SIGKILL the driver (as a crash would), reap it, return its status."""
        os.kill(self.pid, signal.SIGKILL)
        return self.proc.wait(timeout=30)


def run(args: list[str], logs: Path, timeout: float = 300, **env: str) -> Child:
    """Run `daeda args` to the end (or to its crash point) and clean its session up."""
    child = Child(args, logs, **env)
    try:
        child.wait(timeout)
    finally:
        stop_session(child.pid)
    return child


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_state(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def session_pids(sid: int) -> set[int]:
    """Live (non-zombie) processes of session `sid`."""
    pids = set()
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields and int(fields[3]) == sid and fields[0] != "Z":
            pids.add(int(entry.name))
    return pids


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def listening_addresses(pids: set[int]) -> set:
    """Local addresses of the TCP sockets these processes listen on (/proc/net/tcp{,6})."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # the kernel prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            found.add(ipaddress.ip_address(packed))
    return found


def stop_session(sid: int, grace: float = 10.0) -> None:
    """SIGKILL every process of the session (the driver and what it started); wait until gone."""
    deadline = time.monotonic() + grace
    while True:
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of session {sid} survive SIGKILL: {sorted(pids)}")
        time.sleep(0.1)


def blocked_on_lock(pid: int) -> bool:
    """Whether `pid` waits for a file lock (a `->` line of /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[fields.index("->") + 4] == str(pid):
            return True
    return False


def wait_until(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- what readers see ---------------------------------------------------------------------------


def read_day(folder: Path) -> pa.Table:
    """A published day, its files in manifest order, with the manifest's row count checked."""
    manifest = read_manifest(folder)
    assert manifest is not None, f"{folder} is visible without a valid manifest"
    assert sorted(manifest["files"]) == sorted(p.name for p in folder.glob("*.parquet")), folder
    table = pa.concat_tables([pq.read_table(folder / f) for f in manifest["files"]])
    assert table.num_rows == manifest["rows"], folder
    return table


def assert_only_complete_days(root: Path) -> set[dt.date]:
    """Every day folder a reader can see is complete (manifest, files, rows); returns them."""
    days = present_days(root)
    for day in days:
        read_day(root / f"dt={day:%Y-%m-%d}")
    return days


def leftovers(ws: Workspace) -> list[str]:
    """Temporary things a run must not leave behind once a later run has passed."""
    found = []
    for root in (ws.out, ws.enriched):
        if root.is_dir():
            found += [p.name for p in root.iterdir()
                      if p.name.startswith(".staging-") or p.name.endswith(".tmp")]
    if ws.store.parent.is_dir():
        found += [p.name for p in ws.store.parent.iterdir()
                  if ".building-" in p.name or ".old-" in p.name]
    if ws.scratch.is_dir():
        found += [p.name for p in ws.scratch.iterdir()]
    return found


def parquet_files(root: Path) -> dict[str, bytes]:
    """Every published parquet file under the root, and the qid map, by relative path."""
    out = {}
    for day in sorted(present_days(root)):
        for f in sorted((root / f"dt={day:%Y-%m-%d}").glob("*.parquet")):
            out[str(f.relative_to(root))] = f.read_bytes()
    if (root / "qid_map.parquet").is_file():
        out["qid_map.parquet"] = (root / "qid_map.parquet").read_bytes()
    return out


def day_values(root: Path) -> dict[dt.date, pa.Table]:
    """Each published day's rows, schema metadata (provenance: actor, pid) dropped."""
    return {day: read_day(root / f"dt={day:%Y-%m-%d}").replace_schema_metadata(None)
            for day in sorted(present_days(root))}


def store_rows(path: Path) -> pa.Table:
    import lance

    table = lance.dataset(str(path)).to_table()
    return table.replace_schema_metadata(None).sort_by("id")


def summary(child: Child) -> dict:
    return json.loads(child.stdout)
