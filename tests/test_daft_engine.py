"""What is Daft's own in `compute.engine: daft` (its bytes against DuckDB's, on the planted
edge cases, a hand-edited window and the small demo, are in test_skeleton_engines.py): it
really runs the aggregate and both point-in-time joins, `--engine` picks it, and a hand-edited
DAG can move one operator to it. Daft's as-of join is backward `<=`; the planted cases at
exactly `t` (a like, a profile row, a stats row), at `t - 7d` and at the TTL boundaries check
that the engine makes it strict, and the equal-timestamp profile rows that the largest values
win."""

from __future__ import annotations

from test_skeleton import D1, D2, D3, planted, train  # noqa: F401
from test_skeleton_engines import assert_same_bytes

from daedalus.cli import main


def use_daft(project) -> None:
    project.edit(project.runtime, "engine: duckdb", "engine: daft")


def test_the_daft_engine_really_runs_the_aggregate(planted, tmp_path, monkeypatch):  # noqa: F811
    import daedalus.skeleton.daft_engine as rolling_daft

    calls = []
    for name in ("rolling_aggregate", "point_in_time_join"):
        real = getattr(rolling_daft, name)
        monkeypatch.setattr(rolling_daft, name, lambda *a, real=real, **k: calls.append(
            type(a[0]).__name__) or real(*a, **k))
    use_daft(planted)
    assert train(planted, "--output-root", str(tmp_path / "out")) == 0
    # D1 and D2 (D3 has no impressions): the like aggregate and both point-in-time joins.
    assert sorted(calls) == ["PointInTimeJoin"] * 4 + ["RollingAggregate"] * 2, calls


def test_the_engine_flag_picks_the_engine_and_a_bad_one_is_one_line(planted, tmp_path,  # noqa: F811
                                                                    capsys):
    """`--engine daft` overrides runtime.yaml's compute.engine for the run (and `status`);
    the DAG says which engine computes the aggregate; an unknown engine is one line."""
    out = str(tmp_path / "out")
    assert train(planted, "--output-root", out, "--engine", "daft", "--dry-run") == 0
    assert train(planted, "--output-root", out, "--engine", "daft") == 0
    capsys.readouterr()
    flags = ["--pipelines-dir", str(planted.pipelines), *planted.cli_flags(), "--output-root", out]
    assert main(["status", "dssm_ranking", *flags, "--engine", "daft", "--from", str(D1),
                 "--to", str(D2)]) == 0
    assert capsys.readouterr().out.count(" complete ") == 2  # both days (the skeleton stage)
    assert main(["pipeline", "compile", "dssm_ranking", "--no-write", "--engine", "daft",
                 *planted.cli_flags()]) == 0
    assert "engine daft computes it" in capsys.readouterr().out
    assert train(planted, "--output-root", out, "--engine", "spark") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --engine: 'spark' is not an engine of the skeleton's heavy operators"
                   " (fix: one of duckdb, polars, daft)")


def test_a_hand_edited_dag_runs_one_operator_on_daft(planted, tmp_path, capsys,  # noqa: F811
                                                     monkeypatch):
    """A compiled DAG's engines follow compute.engine (here duckdb: every operator `sql`); a
    hand-edited one may put one operator elsewhere within its `can_run_on`: only that one runs
    on Daft, the bytes are DuckDB's, and an engine it cannot run on is one line."""
    import daedalus.skeleton.daft_engine as on_daft

    flags = ["--output-dir", str(planted.pipelines), *planted.cli_flags()]
    assert main(["pipeline", "compile", "dssm_ranking", *flags]) == 0
    generated = (planted.pipelines / "dssm_ranking.generated.yaml").read_text()
    assert "engine: daft" not in generated and "engine: polars" not in generated
    head, rest = generated.split("name: pit_user_profile", 1)
    edited = head + "name: pit_user_profile" + rest.replace("engine: sql", "engine: daft", 1)
    (planted.pipelines / "dssm_ranking.yaml").write_text(edited)
    calls = []
    real = on_daft.point_in_time_join
    monkeypatch.setattr(on_daft, "point_in_time_join",
                        lambda *a: calls.append(a[0].name) or real(*a))
    assert train(planted, "--output-root", str(tmp_path / "mixed")) == 0
    assert calls == ["pit_user_profile", "pit_user_profile"]  # D1 and D2
    (planted.pipelines / "dssm_ranking.yaml").unlink()
    assert train(planted, "--output-root", str(tmp_path / "duckdb")) == 0
    assert_same_bytes(tmp_path / "duckdb", tmp_path / "mixed")

    (planted.pipelines / "dssm_ranking.yaml").write_text(
        head + "name: pit_user_profile" + rest.replace("engine: sql", "engine: polars", 1))
    capsys.readouterr()
    assert train(planted, "--output-root", str(tmp_path / "bad")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "PointInTimeJoin cannot run on 'polars'" in err, err
