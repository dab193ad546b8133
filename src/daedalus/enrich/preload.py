"""The day's preload: the float16 vectors a day needs, taken from the Lance store once.

With `preload_day_embeddings` (the default) the driver reads each store's needed vectors for
the day (`day_tables`) and puts them in Ray's object store; the actors and the writers map
them zero-copy and keep only the day's id index. The driver does this on a thread while Ray
Data already runs the plan (`preloading`): the actors' constructors wait for the vectors'
refs in the runtime's `PreloadBox`. A process's first day reads them while Ray starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from daedalus.enrich.batch import needed_ids
from daedalus.enrich.kernel import unique_ids
from daedalus.enrich.plan import Enrichment, EnrichPlan
from daedalus.storage.objects import open_parquet
from daedalus.store.reader import StoreReader
from daedalus.store.table import EmbeddingTable


def day_table(files: list[Path], enrichments: list[Enrichment], store: dict) -> EmbeddingTable:
    """One store's vectors for the day: read the input columns, take once from Lance."""
    columns = sorted({e.input_column for e in enrichments})
    parts = [np.empty(0, np.int64)]
    for path in files:
        for batch in open_parquet(path).iter_batches(batch_size=262_144, columns=columns):
            parts.append(needed_ids(pa.Table.from_batches([batch]), enrichments))
    return StoreReader(**store).table(unique_ids(np.concatenate(parts)))


def store_table(plan: EnrichPlan, files: list[Path], stores: dict[str, dict],
                store: str) -> EmbeddingTable:
    return day_table(files, [e for e in plan.enrichments if e.store == store], stores[store])


def day_tables(plan: EnrichPlan, files: list[Path], stores: dict[str, dict]
               ) -> dict[str, EmbeddingTable]:
    """Every store's vectors for the day, read with no Ray: a process's first day reads them
    while Ray starts (3-4 s on 2 CPUs, one core mostly idle), not after."""
    return {store: store_table(plan, files, stores, store) for store in plan.stores}


@contextlib.contextmanager
def preloading(box: Any, plan: EnrichPlan, files: list[Path], stores: dict[str, dict],
               day: dt.date, timings: dict[str, float], loaded: Future | None = None
               ) -> Iterator[tuple[Any, str]]:
    """Preload the day's vectors on a driver thread while the caller runs the Ray Data plan,
    and hand them to its actors through `box` (the runtime's PreloadBox; yields the actors'
    handle to them). `loaded`, when given, is the day's tables already being read
    (`day_tables`). The driver owns the vectors' object refs until the plan is done. When the
    plan fails and the preload failed too, the preload's error is the one raised: it is the
    cause, the actors only reported it."""
    import ray

    key = f"{day}/{uuid.uuid4().hex}"
    refs: list = []
    failed = threading.Event()

    def load() -> None:
        started = time.perf_counter()
        try:
            preloaded = {}
            tables = loaded.result() if loaded is not None else None
            for store in plan.stores:
                table = (tables.pop(store) if tables is not None
                         else store_table(plan, files, stores, store))
                pair = (ray.put(table.ids), ray.put(table.matrix))
                refs.extend(pair)
                preloaded[store] = pair
                del table
        except BaseException as exc:
            failed.set()
            box.put.remote(key, f"the driver's preload of {day} failed: {exc}")
            raise
        timings["preload"] = time.perf_counter() - started
        box.put.remote(key, preloaded)

    with ThreadPoolExecutor(1, thread_name_prefix="enrich-preload") as pool, \
            _console_quiet_while(failed):
        loading = pool.submit(load)
        try:
            yield box, key
        except BaseException:
            cause = loading.exception()
            if cause is not None:
                raise cause from None
            raise
        finally:
            box.drop.remote(key)
        loading.result()


@contextlib.contextmanager
def _console_quiet_while(flag: threading.Event) -> Iterator[None]:
    """Once `flag` is set, Ray Data's console handlers drop its records (its log file in the
    Ray session keeps them): a failed preload makes the actors fail, which Ray Data reports
    with a traceback of its own internals, while the error to show is the preload's."""

    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not flag.is_set()

    quiet = Quiet()
    handlers = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
