"""`--ray-address`: the enrich stage on a separately started `ray start --head` cluster.

The head runs in its own process group, on 127.0.0.1, with its own temp dir; it is stopped by
signalling that group only (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_enrich import DAY, TEST_ENVELOPE, assert_matches_reference, planted, read_day  # noqa: F401

from daedalus.cli import main
from daedalus.core.envelope import RayEnvelope
from daedalus.enrich.batch import PROVENANCE_KEY
from daedalus.enrich.ray_runtime import RayRuntime, cluster_wants_token

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A `ray start --head` cluster on 127.0.0.1 (2 CPUs), stopped after the test."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    ray_bin = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    starter = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", temp,
         "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    group = starter.pid
    try:
        out, _ = starter.communicate(timeout=120)
        assert starter.returncode == 0, out
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(group)


def _stop_group(group: int) -> None:
    """SIGTERM the head's process group, then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(group):
                return
            time.sleep(0.2)


def _alive(group: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def test_enrich_only_on_a_separately_started_ray_head(ray_head, planted, project,  # noqa: F811
                                                      capsys) -> None:
    import ray

    _, _, store, days, tmp = planted
    # The runtime asks the head's GCS whether it wants a token (Ray has no call for it): an
    # answer of None means Ray moved that service, and the driver would guess its auth mode.
    assert cluster_wants_token(ray_head) in (True, False)
    code = main(["pipeline", "train", "dssm_ranking", "--enrich-only", "--target-date",
                 "2026-02-01", "--ray-address", ray_head, "--json", *project.cli_flags()])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["status"]) for r in summary["results"]] == [("enrich", "written")]
    folder = tmp / "out_enriched" / "dt=2026-02-01"
    assert_matches_reference(read_day(folder), days[DAY], store)
    with RayRuntime(progress=lambda _: None) as runtime:  # the head again, to ask its nodes
        runtime.start(RayEnvelope(num_cpus=2, address=ray_head))
        head_nodes = {n["NodeID"] for n in ray.nodes()}
        assert ray.get_runtime_context().gcs_address == ray_head
    for path in folder.glob("*.parquet"):
        meta = json.loads(pq.read_schema(path).metadata[PROVENANCE_KEY])
        assert meta["node_id"] in head_nodes and meta["pid"] != os.getpid()

    # the process can go back to its own local cluster afterwards
    with RayRuntime(progress=lambda _: None) as runtime:
        runtime.start(TEST_ENVELOPE)
        assert ray.get_runtime_context().gcs_address != ray_head
