"""Beyond one machine: the enrich stage on a two-node Ray cluster, through `--ray-address`.

A head node with no CPUs (as KubeRay advises) and a second node that joins it (2 CPUs), each
with its own raylet, object store and worker processes, run on 127.0.0.1
(`ray.cluster_utils.Cluster`, with Ray's loopback-only switch on, so nothing listens beyond
this machine). They are children of this process, removed node by node afterwards, and the
test fails if any of them outlives it. The driver attaches to the head, where it puts the
day's vectors; every enrich actor runs on the joined node and fetches them from the head's
object store. The output must equal a run of the same day on this process's own local Ray,
byte for byte. The cluster runs without Ray token auth even where this user has
~/.ray/auth_token (or an earlier local `ray.init` set RAY_AUTH_MODE=token here): the driver
must match the cluster, or the GCS takes it for dead and cancels every enrich actor before
it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_enrich import (  # noqa: F401
    DAY,
    TEST_ENVELOPE,
    assert_matches_reference,
    planted,
    read_day,
)

from daedalus.cli import main
from daedalus.core.envelope import RayEnvelope
from daedalus.enrich import stage as enrich
from daedalus.enrich.batch import PROVENANCE_KEY
from daedalus.enrich.ray_runtime import RayRuntime

pytestmark = pytest.mark.slow

def _leftovers(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (the cluster's temp dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in text and state != "Z":
            found.append(text[:160])
    return found


# The cluster lives in its own process (a driver in the same process as the nodes' Python
# state does not get its actors scheduled on them): it prints the address, then holds the
# nodes until its stdin closes, and removes them. Ray's local-only switch (read at import)
# keeps every node's servers on 127.0.0.1. Given a second argument, the joined node starts in
# that folder, with its own TMPDIR: its raylet and every worker of it run from there.
CLUSTER_SCRIPT = """
import os, sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
    "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
    "temp_dir": sys.argv[1], "object_store_memory": 2**30})
if len(sys.argv) > 2:
    os.chdir(sys.argv[2])
    os.environ["TMPDIR"] = os.path.join(sys.argv[2], "tmp")
cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1", object_store_memory=2**30)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""


@contextlib.contextmanager
def held_cluster(script: str, *args: str, cwd: Path | None = None):
    """Runs a cluster-holding `script` (argv: its temp dir, then `args`) in its own process
    group; yields the address it prints. On exit it closes the holder's stdin, waits for the
    nodes to go, and fails if any process of the cluster outlives it."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # set to token by any earlier local ray.init in this process
    holder = subprocess.Popen([sys.executable, "-c", script, temp, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=cwd,
                              start_new_session=True)
    found: list[str] = []

    def address() -> str:
        if not found:
            found.append(holder.stdout.readline().strip())
            assert found[0].startswith("127.0.0.1:"), found[0]
        return found[0]

    try:
        yield address
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        deadline = time.monotonic() + 15
        while _leftovers(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _leftovers(temp)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)  # the holder's own group, nothing else
        assert not left, left
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def two_nodes():
    """Waits for, then returns, the address of a head (no CPUs) plus one joined node (2 CPUs),
    both on 127.0.0.1; the cluster starts while the test does other work."""
    with held_cluster(CLUSTER_SCRIPT) as address:
        yield address


def _day(folder: Path) -> pa.Table:
    table = read_day(folder)
    return table.replace_schema_metadata(None)


def test_enrich_on_a_two_node_cluster_equals_a_local_run(two_nodes, planted, project,  # noqa: F811
                                                          capsys) -> None:
    import ray

    config, pipeline, store, days, tmp = planted
    local = enrich.run_enrich_stage(pipeline, config, [DAY], tmp / "out", tmp / "local_enriched",
                                    envelope=TEST_ENVELOPE, progress=lambda _: None)
    assert [r.status for r in local] == ["written"]

    deadline = time.monotonic() + 30
    code = main(["pipeline", "train", "dssm_ranking", "--enrich-only", "--target-date",
                 DAY.isoformat(), "--ray-address", two_nodes(), "--num-workers", "2", "--json",
                 *project.cli_flags()])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["status"]) for r in summary["results"]] == [("enrich", "written")]
    with RayRuntime(progress=lambda _: None) as runtime:  # the cluster again, to ask its nodes
        runtime.start(RayEnvelope(num_cpus=2, address=two_nodes()))
        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
        while len(nodes) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2 and ray.cluster_resources()["CPU"] == 2
        driver = ray.get_runtime_context().get_node_id()

    placed = set()
    folder = tmp / "out_enriched" / f"dt={DAY:%Y-%m-%d}"
    for path in folder.glob("*.parquet"):
        meta = json.loads(pq.read_schema(path).metadata[PROVENANCE_KEY])
        assert meta["node_id"] in nodes and meta["pid"] != os.getpid()
        placed.add(meta["node_id"])
    assert placed - {driver}, "no enrich batch ran on the joined node"
    remote = _day(folder)
    assert remote.equals(_day(tmp / "local_enriched" / f"dt={DAY:%Y-%m-%d}"))
    assert_matches_reference(remote, days[DAY], store)
