"""`dagster dev` for the tests: a real webserver and daemon on a free loopback port, in its own
process group, stopped by SIGTERM with anything left of the group killed after."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.load(resp)
    assert "errors" not in data, data["errors"]
    return data["data"]


def reset_signals() -> None:
    # pytest may run with SIGINT/SIGTERM ignored (backgrounded); dagster dev must see them.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


ASSETS_QUERY = """
{ assetNodes { assetKey { path } groupName kinds isPartitioned partitionKeys
               dependencyKeys { path } repository { location { name } } } }
"""


@dataclass
class DevServer:
    process: subprocess.Popen
    port: int
    log: Path
    leftovers: tuple[int, ...] | list[int] = ()

    def query(self, query: str, variables: dict | None = None) -> dict:
        return graphql(self.port, query, variables)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM dagster dev and wait; anything of its group still alive after is SIGKILLed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            deadline = time.monotonic() + 15
            while group_members(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            self.leftovers = group_members(self.process.pid)
            for pid in self.leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members



@contextlib.contextmanager
def dagster_dev(project: Path, env: dict[str, str], ready_asset: str,
                timeout: float = 120) -> Iterator[DevServer]:
    """`dagster dev -w workspace.yaml` in `project`, yielded once GraphQL lists `ready_asset`;
    stopped on exit. Starting it costs ~20 s on 2 cores."""
    port = free_port()
    log = project / "dagster_dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(REPO / ".venv/bin/dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
             "-p", str(port)],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=reset_signals)
    server = DevServer(process=process, port=port, log=log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                nodes = server.query(ASSETS_QUERY)["assetNodes"]
                if any(n["assetKey"]["path"] == [ready_asset] for n in nodes):
                    break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, "dagster dev did not serve the code location"
            time.sleep(1)
        yield server
    finally:
        server.stop()
