"""`compute.engine: polars` (the RollingAggregate on Polars) and `daft` (it and the
point-in-time joins on Daft) give the DuckDB engine's bytes.

Each engine runs the whole skeleton stage over the planted edge cases of test_skeleton (ties
at one timestamp, the 50-item cap, window, TTL and day boundaries to the microsecond, users who
never liked, a hand-edited 3-day window and cap of 5) and the small demo preset; every output
file and the qid map must be byte-identical to DuckDB's, and the output must match the
reference. test_daft_engine.py has what is Daft's own.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from reference import Rules, assert_same_rows, read_output, reference_days
from test_skeleton import D1, D2, D3, planted, train  # noqa: F401

from daedalus.cli import main

ENGINES = pytest.mark.parametrize("engine", ["polars", "daft"])


def use_engine(project, engine: str) -> None:
    project.edit(project.runtime, "engine: duckdb", f"engine: {engine}")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def assert_same_bytes(duck: Path, pol: Path) -> None:
    a, b = files(duck), files(pol)
    assert sorted(a) == sorted(b) and a, (sorted(a), sorted(b))
    for name in a:
        assert a[name] == b[name], name


@ENGINES
def test_the_engine_matches_duckdb_bytes_on_the_planted_edge_cases(planted, tmp_path,  # noqa: F811
                                                                   capsys, engine):
    assert train(planted, "--output-root", str(tmp_path / "duckdb")) == 0
    use_engine(planted, engine)
    assert train(planted, "--output-root", str(tmp_path / engine)) == 0
    assert_same_bytes(tmp_path / "duckdb", tmp_path / engine)
    expected, _ = reference_days(planted.root.parent / "sources", [D1, D2, D3])
    for day in (D1, D2):
        assert_same_rows(read_output(tmp_path / engine / f"dt={day}"), expected[day], str(day))


@ENGINES
def test_the_engine_follows_a_hand_edited_window_and_cap(planted, tmp_path, capsys,  # noqa: F811
                                                         engine):
    flags = ["--output-dir", str(planted.pipelines), *planted.cli_flags()]
    for run in ("duckdb", engine):  # a hand-edited DAG's engine tags are its own
        assert main(["pipeline", "compile", "dssm_ranking", "--engine", run, *flags]) == 0
        generated = (planted.pipelines / "dssm_ranking.generated.yaml").read_text()
        assert (f"engine: {run}" in generated) == (run != "duckdb")
        edited = generated.replace("max_items: 50", "max_items: 5").replace(
            "    window: 7d\n", "    window: 3d\n")
        (planted.pipelines / "dssm_ranking.yaml").write_text(edited)
        assert train(planted, "--output-root", str(tmp_path / run)) == 0
    assert_same_bytes(tmp_path / "duckdb", tmp_path / engine)
    rules = Rules(like_cap=5, like_window=dt.timedelta(days=3))
    expected, _ = reference_days(planted.root.parent / "sources", [D1, D2], rules)
    for day in (D1, D2):
        assert_same_rows(read_output(tmp_path / engine / f"dt={day}"), expected[day], str(day))


@pytest.mark.slow
@ENGINES
def test_the_engine_matches_duckdb_bytes_on_the_small_demo(project, tmp_path, engine):
    from daedalus.demo.data import PRESETS, generate_demo_data

    generate_demo_data(project.root.parent / "sources", PRESETS["small"])
    assert train(project, "--output-root", str(tmp_path / "duckdb")) == 0
    use_engine(project, engine)
    assert train(project, "--output-root", str(tmp_path / engine)) == 0
    assert_same_bytes(tmp_path / "duckdb", tmp_path / engine)


def test_the_polars_engine_really_runs_the_aggregate(planted, tmp_path, monkeypatch):  # noqa: F811
    import daedalus.skeleton.polars_engine as rolling_polars

    calls = []
    real = rolling_polars.rolling_aggregate
    monkeypatch.setattr(rolling_polars, "rolling_aggregate",
                        lambda *a: calls.append(a[0].name) or real(*a))
    use_engine(planted, "polars")
    assert train(planted, "--output-root", str(tmp_path / "polars")) == 0
    assert len(calls) == 2, calls  # D1 and D2; D3 has no impressions
