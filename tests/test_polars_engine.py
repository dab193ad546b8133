"""`compute.engine: polars`: the RollingAggregate on Polars gives the DuckDB engine's bytes.

Both engines run the whole skeleton stage over the planted edge cases of test_skeleton (ties
at one timestamp, the 50-item cap, window and day boundaries to the microsecond, users who
never liked, a hand-edited 3-day window and cap of 5) and the small demo preset; every output
file and the qid map must be byte-identical, and the Polars output must match the reference.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from reference import Rules, assert_same_rows, read_output, reference_days
from test_skeleton import D1, D2, D3, planted, train  # noqa: F401

from daedalus.cli import main


def use_polars(project) -> None:
    project.edit(project.runtime, "engine: duckdb", "engine: polars")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def assert_same_bytes(duck: Path, pol: Path) -> None:
    a, b = files(duck), files(pol)
    assert sorted(a) == sorted(b) and a, (sorted(a), sorted(b))
    for name in a:
        assert a[name] == b[name], name


def test_polars_engine_matches_duckdb_bytes_on_the_planted_edge_cases(planted, tmp_path,  # noqa: F811
                                                                        capsys):
    assert train(planted, "--output-root", str(tmp_path / "duckdb")) == 0
    use_polars(planted)
    assert train(planted, "--output-root", str(tmp_path / "polars")) == 0
    assert_same_bytes(tmp_path / "duckdb", tmp_path / "polars")
    expected, _ = reference_days(planted.root.parent / "sources", [D1, D2, D3])
    for day in (D1, D2):
        assert_same_rows(read_output(tmp_path / "polars" / f"dt={day}"), expected[day], str(day))


def test_polars_engine_follows_a_hand_edited_window_and_cap(planted, tmp_path, capsys):  # noqa: F811
    flags = ["--output-dir", str(planted.pipelines), *planted.cli_flags()]
    assert main(["pipeline", "compile", "dssm_ranking", *flags]) == 0
    generated = (planted.pipelines / "dssm_ranking.generated.yaml").read_text()
    edited = generated.replace("max_items: 50", "max_items: 5").replace(
        "    window: 7d\n", "    window: 3d\n")
    (planted.pipelines / "dssm_ranking.yaml").write_text(edited)
    assert train(planted, "--output-root", str(tmp_path / "duckdb")) == 0
    use_polars(planted)
    assert train(planted, "--output-root", str(tmp_path / "polars")) == 0
    assert_same_bytes(tmp_path / "duckdb", tmp_path / "polars")
    rules = Rules(like_cap=5, like_window=dt.timedelta(days=3))
    expected, _ = reference_days(planted.root.parent / "sources", [D1, D2], rules)
    for day in (D1, D2):
        assert_same_rows(read_output(tmp_path / "polars" / f"dt={day}"), expected[day], str(day))


@pytest.mark.slow
def test_polars_engine_matches_duckdb_bytes_on_the_small_demo(project, tmp_path):
    from daedalus.demo.data import PRESETS, generate_demo_data

    generate_demo_data(project.root.parent / "sources", PRESETS["small"])
    assert train(project, "--output-root", str(tmp_path / "duckdb")) == 0
    use_polars(project)
    assert train(project, "--output-root", str(tmp_path / "polars")) == 0
    assert_same_bytes(tmp_path / "duckdb", tmp_path / "polars")


def test_the_polars_engine_really_runs_the_aggregate(planted, tmp_path, monkeypatch):  # noqa: F811
    import daedalus.skeleton.polars_engine as rolling_polars

    calls = []
    real = rolling_polars.rolling_aggregate
    monkeypatch.setattr(rolling_polars, "rolling_aggregate",
                        lambda *a: calls.append(a[0].name) or real(*a))
    use_polars(planted)
    assert train(planted, "--output-root", str(tmp_path / "polars")) == 0
    assert len(calls) == 2, calls  # D1 and D2; D3 has no impressions
