"""Shared fixtures: a throwaway copy of the project's config and registry."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Project:
    """A copy of config/, feature_views/ and feature_services/ under a temp root."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "config/base.yaml"

    @property
    def runtime(self) -> Path:
        return self.root / "config/training/runtime.yaml"

    @property
    def aggregations(self) -> Path:
        return self.root / "config/training/aggregations.yaml"

    @property
    def views(self) -> Path:
        return self.root / "feature_views"

    @property
    def services(self) -> Path:
        return self.root / "feature_services"

    @property
    def pipelines(self) -> Path:
        return self.root / "config/pipelines"

    def cli_flags(self) -> list[str]:
        return ["--base-config-path", str(self.base), "--runtime-config-path", str(self.runtime),
                "--aggregation-config-path", str(self.aggregations),
                "--feature-views-dir", str(self.views), "--feature-services-dir", str(self.services)]

    def edit(self, path: Path, old: str, new: str) -> None:
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, 1))

    def load(self):
        from daedalus.core.config import load_config
        from daedalus.core.registry import load_registry

        return (load_config(self.base, self.runtime, self.aggregations),
                load_registry(self.views, self.services))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """Config pointing sources, store and output into tmp_path; env overrides cleared."""
    monkeypatch.delenv("DAEDALUS_SOURCES_ROOT", raising=False)
    monkeypatch.delenv("DAEDALUS_STORE_ROOT", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return make_project(tmp_path)


def make_project(tmp_path: Path) -> Project:
    """The project's config and registry copied under `tmp_path`, every root pointed there."""
    root = tmp_path / "project"
    for name in ("config", "feature_views", "feature_services"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("pipelines"))
    (root / "config/pipelines").mkdir(exist_ok=True)
    p = Project(root)
    p.edit(p.base, "sources_root: data/demo/sources", f"sources_root: {tmp_path / 'sources'}")
    p.edit(p.base, "store_root: data/store", f"store_root: {tmp_path / 'store'}")
    p.edit(p.runtime, "output_root: data/training_output", f"output_root: {tmp_path / 'out'}")
    p.edit(p.runtime, "temp_directory: data/tmp/duckdb", f"temp_directory: {tmp_path / 'duckdb_tmp'}")
    return p


@pytest.fixture(autouse=True)
def _dagster_home_per_test(tmp_path_factory: pytest.TempPathFactory,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`daeda pipeline train` records its days on `$DAGSTER_HOME`: each test gets its own, so
    no test writes into the checkout's `.dagster_home/`."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 server on 127.0.0.1 for the session, bucket `daedalus` created."""
    from s3server import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's process (and the CLIs it starts) pointed at the session's S3 server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.env()
