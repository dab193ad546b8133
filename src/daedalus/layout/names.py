"""The names a root's layout is made of, on local disk and in object storage alike:
`<root>/dt=YYYY-MM-DD/` days with their `_manifest.json`, `.locks/` and `.manifests/` (the
0-row manifests of empty days), and the `r-<run>/` prefix of a run's parts in object storage."""

from __future__ import annotations

import datetime as dt

LOCK_DIR = ".locks"
MANIFESTS_DIR = ".manifests"  # 0-row manifests of empty days (hidden: no reader lists it)
MANIFEST_NAME = "_manifest.json"
STAGING_PREFIX = ".staging-"
RUN_PREFIX = "r-"


def day_name(day: dt.date) -> str:
    return f"dt={day:%Y-%m-%d}"
