"""Safety: YAML is only ever loaded with safe loaders, servers listen on loopback by default,
and credentials do not reach the terminal.

Where the listening sockets are checked: the enrich stage's local Ray in-process in
test_enrich.py::test_local_ray_listens_on_loopback_only, and a `daeda pipeline train` child's
whole Ray in test_reliability_crash.py (stopped mid-enrich); `dagster dev` is started on
127.0.0.1 in test_dagster_e2e.py, and `make dev` is pinned here.
"""

from __future__ import annotations

import ast
import re
import socket

import pytest
import yaml
from reliability import REPO, workspace

from daedalus.cli import main
from daedalus.core import yamlio
from daedalus.enrich.ray_runtime import redact_address

SOURCE_FILES = sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py"))


def test_every_yaml_load_in_the_code_uses_a_safe_loader() -> None:
    unsafe = re.compile(r"yaml\.(unsafe_load|full_load|load_all|unsafe_load_all)\b"
                        r"|Loader\s*=\s*yaml\.(Loader|FullLoader|UnsafeLoader)\b"
                        r"|yaml\.(Loader|FullLoader|UnsafeLoader)\b")
    loads = []
    for path in SOURCE_FILES:
        text = path.read_text()
        assert not unsafe.search(text), path
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "yaml"):
                loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
                loads.append((path.name, ast.unparse(loader) if loader is not None else None))
    assert loads == [("yamlio.py", "_Loader")]
    assert issubclass(yamlio._Loader, yaml.SafeLoader)
    assert "ruamel" not in "".join(p.read_text() for p in SOURCE_FILES)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    for name in ("DAEDALUS_SOURCES_ROOT", "DAEDALUS_STORE_ROOT", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return workspace(tmp_path / "ws")


@pytest.mark.parametrize("where", ["config/training/runtime.yaml", "feature_views/user_likes.yaml",
                                   "config/pipelines/dssm_ranking.yaml"])
def test_a_python_tag_in_any_yaml_is_refused_and_never_run(where, ws, tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    path = ws.project / where
    if path.exists():
        text = path.read_text()
        key = text.splitlines()[0].split(":")[0] if not text.startswith("#") else "feed_start"
        path.write_text(re.sub(rf"^{key}:.*$", f"{key}: {payload}", text, count=1, flags=re.M))
    else:
        path.write_text(f"service: {payload}\n")
    assert main(ws.train("--skeleton-only")) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert where.split("/")[-1] in lines[0] and "python/object/apply" in lines[0]
    assert not marker.exists()


def test_credentials_in_a_ray_address_are_never_printed(ws, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "hunter2-9c1e"
    assert main(ws.train("--enrich-only", "--ray-address",
                         f"ray://alice:{secret}@127.0.0.1:{port}")) == 2
    err = capsys.readouterr().err
    assert secret not in err and "ray://***@127.0.0.1" in err
    assert redact_address(f"alice:{secret}@10.0.0.7:6379") == "***@10.0.0.7:6379"
    assert redact_address("10.0.0.7:6379") == "10.0.0.7:6379"


def test_servers_are_started_on_loopback_only() -> None:
    makefile = (REPO / "Makefile").read_text()
    dev = [line for line in makefile.splitlines() if "dagster dev" in line]
    assert dev and all("-h 127.0.0.1" in line for line in dev), dev
    enrich = "".join(p.read_text() for p in sorted((REPO / "src/daedalus/enrich").glob("*.py")))
    assert '_node_ip_address="127.0.0.1"' in enrich and "include_dashboard=False" in enrich
    for path in [REPO / "Makefile", REPO / "README.md", *SOURCE_FILES,
                 *sorted((REPO / "docs").glob("*.md"))]:
        assert "0.0.0.0" not in path.read_text(), path

