"""The Dagster UI in a real browser after the CLI wrote the demo days, as a new user sees it:
`daeda pipeline train` in the project folder (recording into its `.dagster_home/`), then
`dagster dev` on that home (as `make dev` runs it), then headless Chromium driven by Playwright.

The UI shows the CLI's days as materialized partitions of the training asset, and the feature
views' observations with their data versions. Dagster 1.13's open-source UI draws no column-
lineage view (its metadata tables leave `dagster/column_lineage` out), so the lineage is read
where the page itself reads metadata: the webserver's GraphQL, fetched from inside the page.

Chromium: `make browser` installs it (Playwright's own build, else Debian's `chromium` through
apt when run as root); `DAEDALUS_CHROMIUM` names another binary. Where none can be found the
test skips and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster_dev import dagster_dev
from test_dagster_e2e import _make_project

REPO = Path(__file__).resolve().parents[1]
TRAINING = dg.AssetKey("dssm_ranking_training")
# Without them Chromium's background connections are refused by a closed network at every start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LINEAGE_QUERY = """
query($day: String!) {
  assetNodes(assetKeys: [{path: ["dssm_ranking_training"]}]) {
    assetMaterializations(partitions: [$day]) {
      metadataEntries {
        label
        ... on TableColumnLineageMetadataEntry {
          lineage { columnName columnDeps { assetKey { path } columnName } }
        }
      }
    }
  }
}
"""


def _chromium() -> str | None:
    """A Chromium to drive: $DAEDALUS_CHROMIUM, Playwright's own build, else one on PATH."""
    if os.environ.get("DAEDALUS_CHROMIUM"):
        return os.environ["DAEDALUS_CHROMIUM"]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        if Path(p.chromium.executable_path).exists():
            return p.chromium.executable_path
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = _chromium()
    if path is None:
        pytest.skip("no Chromium on this machine (fix: `make browser` installs one, or set"
                    " DAEDALUS_CHROMIUM to a Chromium binary)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory, browser):
    """A small demo written by the CLI from the project folder, then `dagster dev` over it."""
    from daedalus.demo.data import DemoDataSpec, generate_demo_data

    root = tmp_path_factory.mktemp("ui")
    generate_demo_data(root / "sources",
                       DemoDataSpec(days=2, users=150, artworks=400, events_per_day=1500))
    demo = _make_project(root / "project", root / "sources", root / "store")
    env = {k: v for k, v in demo.env().items() if k != "DAGSTER_HOME"}  # the project's home
    subprocess.run([str(REPO / ".venv/bin/daeda"), "pipeline", "train", "dssm_ranking",
                    "--ray-num-cpus", "2"], cwd=demo.root, env=env, check=True,
                   capture_output=True)
    with dagster_dev(demo.root, demo.env(), TRAINING.path[-1]) as server:
        yield demo, server


def _open(browser, server, path: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"http://127.0.0.1:{server.port}{path}")
    skip = page.get_by_role("button", name="Skip")  # the first visit's newsletter dialog
    try:
        skip.click(timeout=5000)
    except Exception:  # noqa: BLE001 - no dialog on this visit
        pass
    return page


@pytest.mark.slow
def test_the_ui_shows_cli_days_materialized_views_with_data_versions_and_lineage(browser,
                                                                                demo_ui):
    demo, server = demo_ui
    written = sorted(p.name.removeprefix("dt=") for p in (demo.root / "out_enriched").glob("dt=*"))
    assert written, "the CLI wrote no day"
    instance = dg.DagsterInstance.from_config(str(demo.home))
    recorded = instance.get_materialized_partitions(TRAINING)
    assert set(written) <= recorded

    # The training asset's partitions: every day the CLI recorded is materialized, with its rows.
    page = _open(browser, server, "/assets/dssm_ranking_training?view=partitions")
    page.get_by_text(f"Materialized ({len(recorded)})").wait_for(timeout=60_000)
    day = written[0]
    page.goto(f"http://127.0.0.1:{server.port}/assets/dssm_ranking_training"
              f"?view=partitions&partition={day}")
    page.get_by_text("daeda pipeline train").wait_for(timeout=60_000)  # recorded_by
    rows = pq.ParquetDataset(demo.root / "out_enriched" / f"dt={day}").read(
        columns=["qid"]).num_rows
    body = page.inner_text("body")
    assert re.search(rf"dagster/row_count\s+({rows}|{rows:,})\s", body), body[-2000:]

    # A feature view's observations carry their data versions: the source day's fingerprint.
    view = dg.AssetKey(["feature_view", "feed_impressions"])
    observed = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=view, asset_partitions=[day]), limit=1).records[0]
    version = observed.asset_observation.tags["dagster/data_version"]
    page.goto(f"http://127.0.0.1:{server.port}/assets/feature_view/feed_impressions"
              "?view=events")
    page.get_by_text(day, exact=True).first.click(timeout=60_000)
    page.get_by_text(f"Partition {day} observed").wait_for(timeout=30_000)
    page.get_by_text("Show tags").click()
    page.get_by_text(version).wait_for(timeout=30_000)

    # Column lineage, as the page reads it: qid back to feed_impressions.feed_session.
    answer = page.evaluate(
        """async ([query, day]) => (await fetch('/graphql', {method: 'POST',
             headers: {'Content-Type': 'application/json'},
             body: JSON.stringify({query, variables: {day}})})).json()""", [LINEAGE_QUERY, day])
    (node,) = answer["data"]["assetNodes"]
    entries = node["assetMaterializations"][0]["metadataEntries"]
    lineage = {e["columnName"]: e["columnDeps"] for entry in entries
               if entry["label"] == "dagster/column_lineage" for e in entry["lineage"]}
    assert lineage["qid"] == [{"assetKey": {"path": ["feature_view", "feed_impressions"]},
                               "columnName": "feed_session"}]
    assert {d["assetKey"]["path"][-1] for deps in lineage.values() for d in deps} == {
        "feed_impressions", "user_profile", "artwork_stats", "user_likes"}
    page.close()
