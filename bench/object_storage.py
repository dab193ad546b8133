"""Object storage beside local disk: the bench preset's 1M-impression day (2026-02-01), sources
and outputs on a local SeaweedFS against sources and outputs on local disk, in one run.

Each side is a fresh `daeda pipeline train dssm_ranking --target-date 2026-02-01` child
process on an empty output root, with the Lance store already built, so the two sides time the
same work. The object-storage side reads its sources from `s3://daedalus/bench/sources` (the
day's files copied into the day's scratch), and writes both stages' days to `s3://…/out`.
Reported: whole-process wall seconds, each stage's own seconds (from `--json`), and the ratio.
Target (issue 19): the object-storage day within 1.3x of the local one. The bench also checks
the two days equal: skeleton parts byte for byte, enriched parts by value.

The server is `weed server -s3` on 127.0.0.1 (tests/s3server.py), with its data under
data/bench/object_storage/seaweedfs; the upload of the sources (~1 GB, mostly siglip2_vectors) and the first
mirror of the embedding source for the store are done once, before timing.

Usage: uv run python bench/object_storage.py [--repeat N] [--ray-num-cpus 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
BENCH = REPO / "data/bench"
SOURCES = BENCH / "sources"
DAY = "2026-02-01"
DAEDA = [sys.executable, "-m", "daedalus.cli"]


def run(args: list[str], env: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run([*DAEDA, *args, "--json"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"daeda {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout), wall


def seconds(summary: dict, stage: str) -> float:
    return sum(r["seconds"] for r in summary["results"] if r["stage"] == stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--ray-num-cpus", type=int, default=2)
    args = parser.parse_args()
    from s3server import SeaweedS3

    if not (SOURCES / "_demo_data.json").exists():
        raise SystemExit(f"no bench sources under {SOURCES} (fix: make bench once, or"
                         " `daeda demo-data --preset bench --root data/bench/sources`)")
    work = BENCH / "object_storage"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with SeaweedS3(work / "seaweedfs") as server:
        client = server.client()
        started = time.perf_counter()
        for f in sorted(SOURCES.rglob("*.parquet")):
            client.upload_file(str(f), "daedalus", f"bench/sources/{f.relative_to(SOURCES)}")
        upload = time.perf_counter() - started
        local_env = {**base, "DAEDALUS_SOURCES_ROOT": str(SOURCES),
                     "DAEDALUS_STORE_ROOT": str(BENCH / "store")}
        s3_env = {**base, **server.env(), "DAEDALUS_SOURCES_ROOT": "s3://daedalus/bench/sources",
                  "DAEDALUS_STORE_ROOT": str(work / "store")}
        subprocess.run([*DAEDA, "store", "build"], cwd=REPO, env=local_env, check=True,
                       stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        subprocess.run([*DAEDA, "store", "build"], cwd=REPO, env=s3_env, check=True,
                       stdout=subprocess.DEVNULL)
        mirror = time.perf_counter() - started
        flags = ["--target-date", DAY, "--ray-num-cpus", str(args.ray_num_cpus),
                 "--no-dagster-record", "--pipelines-dir", str(work / "pipelines")]
        rows = []
        for i in range(args.repeat):
            for side, env, root in (("local disk", local_env, str(work / f"local-{i}")),
                                    ("SeaweedFS", s3_env, f"s3://daedalus/bench/out-{i}")):
                print(f"{side}, run {i + 1} ...", file=sys.stderr)
                summary, wall = run(["pipeline", "train", "dssm_ranking", "--output-root", root,
                                     *flags], env)
                rows.append({"side": side, "run": i, "root": root, "wall_s": wall,
                             "skeleton_s": seconds(summary, "skeleton"),
                             "enrich_s": seconds(summary, "enrich")})
        check_equal(client, work / "local-0", "bench/out-0")
    local = [r for r in rows if r["side"] == "local disk"]
    s3 = [r for r in rows if r["side"] == "SeaweedFS"]

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    ratio = median([r["wall_s"] for r in s3]) / median([r["wall_s"] for r in local])
    print(f"\nupload of the bench sources: {upload:.1f} s; first mirror + store build from"
          f" the bucket: {mirror:.1f} s\n")
    print("| side | process wall s | skeleton s | enrich s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['side']} | {r['wall_s']:.1f} | {r['skeleton_s']:.1f} | {r['enrich_s']:.1f} |")
    print(f"\nSeaweedFS / local disk (process wall, medians): {ratio:.2f}x (target <= 1.3x)")
    (BENCH / "object_storage_results.json").write_text(json.dumps(
        {"rows": rows, "ratio": ratio, "upload_s": upload, "mirror_s": mirror,
         "command": "uv run python bench/object_storage.py " + " ".join(sys.argv[1:])},
        indent=2))


def check_equal(client, local: Path, prefix: str) -> None:
    """Skeleton parts byte for byte, enriched parts by value (their metadata names actors)."""
    import pyarrow.parquet as pq

    for suffix in ("", "_enriched"):
        folder = Path(f"{local}{suffix}") / f"dt={DAY}"
        here = json.loads((folder / "_manifest.json").read_text())["files"]
        key = f"{prefix}{suffix}/dt={DAY}"
        there = json.loads(client.get_object(Bucket="daedalus", Key=f"{key}/_manifest.json")
                           ["Body"].read())["files"]
        assert len(here) == len(there), (suffix, len(here), len(there))
        for a, b in zip(here, there, strict=True):
            mine = (folder / a).read_bytes()
            theirs = client.get_object(Bucket="daedalus", Key=f"{key}/{b}")["Body"].read()
            if suffix == "":
                assert mine == theirs, f"skeleton part {a} differs"
            else:
                ta = pq.read_table(io.BytesIO(mine)).replace_schema_metadata(None)
                tb = pq.read_table(io.BytesIO(theirs)).replace_schema_metadata(None)
                assert ta.equals(tb), f"enriched part {a} differs"
    print("the two days are equal (skeleton bytes, enriched values)", file=sys.stderr)


if __name__ == "__main__":
    main()
