"""The avg-pool / lookup kernel against a brute-force numpy reference, row by row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from daedalus.enrich.kernel import (
    expand_dictionary,
    fp16_dictionary_array,
    fp16_list_array,
    like_windows,
    lookup,
    lookup_pool,
    unique_ids,
    window_means,
    window_pool,
)
from daedalus.store.table import EmbeddingTable

DIM = 8


def reference_mean(ids: list[int], store: dict[int, np.ndarray]) -> np.ndarray | None:
    """The data contract: float32 mean of the vectors of the ids the store has, each occurrence counts."""
    vectors = [store[i].astype(np.float32) for i in ids if i in store]
    if not vectors:
        return None
    return (np.sum(vectors, axis=0, dtype=np.float32) / np.float32(len(vectors))).astype(np.float16)


def assert_within_fp16_rounding(got: np.ndarray, want: np.ndarray) -> None:
    gap = np.abs(got.astype(np.float32) - want.astype(np.float32))
    assert np.all(gap <= np.spacing(np.abs(want)).astype(np.float32)), gap.max()


def make_store(rng: np.random.Generator, ids, scale: float = 0.05) -> dict[int, np.ndarray]:
    return {int(i): (rng.standard_normal(DIM) * scale).astype(np.float16) for i in ids}


def feed_like_lists(rng: np.random.Generator, users: int, rows: int, artworks: int,
                    cap: int = 50) -> tuple[np.ndarray, list[list[int]]]:
    """Rows in time order; each list is the last `cap` likes of the user in a 7-unit window."""
    likes = {u: (np.sort(rng.uniform(0, 20, rng.integers(0, 120))),
                 rng.integers(1, artworks + 1, 120)) for u in range(users)}
    times = np.sort(rng.uniform(7, 20, rows))
    user = rng.integers(0, users, rows)
    lists = []
    for t, u in zip(times, user, strict=True):
        ts, ids = likes[u]
        seen = [(s, int(a)) for s, a in zip(ts, ids[: ts.size], strict=True) if t - 7 <= s < t]
        lists.append([a for _, a in sorted(seen)][-cap:])
    return user.astype(np.int64), lists


def run_kernel(user: np.ndarray, lists: list[list[int]], store: dict[int, np.ndarray],
               chunk: int = 512):
    arr = pa.array(lists, type=pa.list_(pa.int64()))
    ids = np.array(sorted(store), dtype=np.int64)
    vectors = np.stack([store[i] for i in ids]) if ids.size else np.zeros((0, DIM), np.float16)
    table = EmbeddingTable.from_rows(ids[::-1].copy(), vectors[::-1].copy())
    windows = like_windows(user, arr.offsets.to_numpy(), arr.values.to_numpy())
    for r, want in enumerate(lists):
        assert windows.sequence[windows.start[r]:windows.end[r]].tolist() == want
    return windows, window_means(windows, table, chunk=chunk)


def check_means(lists, store, valid, means) -> None:
    k = 0
    for r, ids in enumerate(lists):
        want = reference_mean(ids, store)
        assert valid[r] == (want is not None), (r, ids)
        if want is not None:
            assert_within_fp16_rounding(means[k], want)
            k += 1
    assert k == means.shape[0]


@pytest.mark.parametrize("seed", range(6))
def test_sliding_window_means_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    user, lists = feed_like_lists(rng, users=12, rows=400, artworks=60, cap=rng.choice([5, 50]))
    store = make_store(rng, rng.choice(np.arange(1, 61), 45, replace=False))
    windows, (valid, means) = run_kernel(user, lists, store, chunk=int(rng.choice([1, 7, 64, 512])))
    check_means(lists, store, valid, means)
    assert windows.sequence.size < sum(map(len, lists)) / 3


@pytest.mark.parametrize("seed", range(4))
def test_arbitrary_lists_still_match(seed: int) -> None:
    """Lists that are not sliding windows (shuffled, repeated ids) fall back to fresh slices."""
    rng = np.random.default_rng(100 + seed)
    rows = 300
    user = rng.integers(0, 5, rows).astype(np.int64)
    lists = [rng.integers(1, 6, rng.integers(0, 9)).tolist() for _ in range(rows)]
    store = make_store(rng, np.arange(1, 5))
    _, (valid, means) = run_kernel(user, lists, store, chunk=int(rng.choice([1, 3, 512])))
    check_means(lists, store, valid, means)


def test_planted_edge_cases() -> None:
    rng = np.random.default_rng(7)
    store = make_store(rng, [1, 2, 3, 4])
    cases = [
        (1, []),              # empty list: null
        (1, [9, 8]),          # no id in the store: null
        (1, [1, 9, 2]),       # the missing id does not count
        (1, [9, 2, 2, 2]),    # duplicates count each time
        (2, [3]),
        (2, [3, 4]),          # grows
        (2, [4]),             # shrinks from the front
        (2, [4, 4, 1]),
        (3, [2, 2]),
        (3, [2, 2, 2]),       # ambiguous overlap with repeats
        (3, [2, 1, 2]),
        (2, [4, 4, 1]),       # identical to the user's previous row
    ]
    user = np.array([u for u, _ in cases], dtype=np.int64)
    lists = [ids for _, ids in cases]
    _, (valid, means) = run_kernel(user, lists, store)
    check_means(lists, store, valid, means)


def test_single_id_mean_is_the_vector_itself() -> None:
    """A mean of one occurrence is the stored float16 vector bit for bit, also for tiny values."""
    rng = np.random.default_rng(3)
    store = make_store(rng, np.arange(1, 200), scale=1e-4)
    user = np.zeros(199, dtype=np.int64)
    lists = [[i] for i in range(1, 200)]
    _, (valid, means) = run_kernel(user, lists, store)
    assert valid.all()
    want = np.stack([store[i] for i in range(1, 200)])
    assert np.array_equal(means.view(np.uint16), want.view(np.uint16))


def test_empty_batch_and_empty_store() -> None:
    _, (valid, means) = run_kernel(np.zeros(0, np.int64), [], {})
    assert valid.size == 0 and means.shape == (0, DIM)
    _, (valid, means) = run_kernel(np.array([1, 1], np.int64), [[1, 2], [2]], {})
    assert not valid.any() and means.shape == (0, DIM)


def test_lookup_and_fp16_list_array_round_trip() -> None:
    rng = np.random.default_rng(5)
    store = make_store(rng, [10, 20, 30])
    table = EmbeddingTable.from_rows(np.array([30, 10, 20]),
                                     np.stack([store[30], store[10], store[20]]))
    ids = np.array([20, 99, 10, 10, 5, 30])
    valid, vectors = lookup(ids, table)
    column = fp16_list_array(valid, vectors)
    assert column.type == pa.list_(pa.float16())
    column.validate(full=True)
    got = column.to_pylist()
    for i, value in zip(ids, got, strict=True):
        if int(i) in store:
            assert np.array_equal(np.array(value, dtype=np.float16).view(np.uint16),
                                  store[int(i)].view(np.uint16))
        else:
            assert value is None


def as_rows(column: pa.Array) -> list:
    """Each row's float16 bits (or None), for bit-exact comparison."""
    return [None if v is None else np.array(v, dtype=np.float16).view(np.uint16).tolist()
            for v in column.to_pylist()]


@pytest.mark.parametrize("seed", range(3))
def test_compact_columns_expand_to_the_written_columns(seed: int) -> None:
    """What the actors hand the writer (each distinct vector once, as an Arrow dictionary)
    expands, bit for bit, to the list<halffloat> rows the brute force expects, nulls too."""
    rng = np.random.default_rng(seed)
    user, lists = feed_like_lists(rng, users=6, rows=300, artworks=40, cap=5)
    store = make_store(rng, rng.choice(np.arange(1, 41), 25, replace=False))
    ids = np.array(sorted(store), dtype=np.int64)
    table = EmbeddingTable.from_rows(ids, np.stack([store[i] for i in ids]))
    arr = pa.array(lists, type=pa.list_(pa.int64()))
    windows = like_windows(user, arr.offsets.to_numpy(), arr.values.to_numpy())
    pooled = window_pool(windows, table)
    assert pooled.vectors.shape[0] < len(lists)      # shared windows are stored once
    column = fp16_dictionary_array(pooled)
    column.validate(full=True)
    expanded = expand_dictionary(column)
    expanded.validate(full=True)
    assert expanded.type == pa.list_(pa.float16())
    assert as_rows(expanded) == as_rows(fp16_list_array(*window_means(windows, table)))
    for r, row in enumerate(as_rows(expanded)):
        want = reference_mean(lists[r], store)
        assert (row is None) == (want is None)
        if want is not None:
            assert_within_fp16_rounding(np.array(row, np.uint16).view(np.float16), want)

    artwork = rng.choice(np.arange(0, 50), 200)       # ids 0 and 41..49 are not in the store
    pooled = lookup_pool(artwork, table)
    assert pooled.vectors.shape[0] == len(set(artwork.tolist()) & set(store))
    got = as_rows(expand_dictionary(fp16_dictionary_array(pooled)))
    assert got == [store[int(a)].view(np.uint16).tolist() if int(a) in store else None
                   for a in artwork]


def test_compact_columns_of_empty_and_all_missing_batches() -> None:
    table = EmbeddingTable.from_rows(np.array([1], np.int64), np.ones((1, DIM), np.float16))
    for ids in (np.zeros(0, np.int64), np.array([7, 8, 7], np.int64)):
        column = expand_dictionary(fp16_dictionary_array(lookup_pool(ids, table)))
        column.validate(full=True)
        assert column.to_pylist() == [None] * ids.size


def test_write_part_writes_the_expanded_rows_in_row_groups(tmp_path, monkeypatch) -> None:
    """The writer expands a compact block slice by slice into row groups; read back, the
    file is the block expanded at once, bit for bit, nulls (a slice of only nulls) too."""
    import pyarrow.parquet as pq

    from daedalus.enrich import batch as enrich_batch
    from daedalus.enrich import io as enrich_io

    rng = np.random.default_rng(7)
    store = make_store(rng, np.arange(1, 21))
    ids = np.array(sorted(store), dtype=np.int64)
    table = EmbeddingTable.from_rows(ids, np.stack([store[i] for i in ids]))
    artwork = np.concatenate([rng.choice(np.arange(0, 30), 8), [99, 98, 97, 96], [5, 5]])
    compact = pa.table({"row": np.arange(artwork.size),
                        "image_embedding": fp16_dictionary_array(lookup_pool(artwork, table))})
    monkeypatch.setattr(enrich_io, "ROW_GROUP_ROWS", 4)
    path = tmp_path / "part.parquet"
    assert enrich_io.write_part(compact, path, "zstd", ["row"]) == artwork.size
    written = pq.ParquetFile(path)
    assert written.metadata.num_row_groups == 4          # 14 rows: 4 + 4 + 4 (all null) + 2
    back = written.read()
    assert back.schema.field("image_embedding").type == pa.list_(pa.float16())
    assert back.column("row").to_pylist() == list(range(artwork.size))
    assert as_rows(back.column("image_embedding").combine_chunks()) == as_rows(
        enrich_batch.expand_table(compact).column("image_embedding").combine_chunks())
    assert not enrich_io.write_part(compact.slice(0, 0), tmp_path / "empty.parquet", "zstd", [])
    assert not (tmp_path / "empty.parquet").exists()


def test_lookups_in_a_shared_store_are_row_numbers_the_writer_gathers(tmp_path) -> None:
    """With the day's vectors preloaded, the actors hand the writer only each row's row number
    in the shared matrix (null for an id the store lacks, or a null id); the writer gathers
    the vectors from that matrix: the same file, bit for bit, as from the dictionary form."""
    import pyarrow.parquet as pq

    from daedalus.core.errors import DaedalusError
    from daedalus.enrich import batch as enrich_batch
    from daedalus.enrich import io as enrich_io

    rng = np.random.default_rng(11)
    store = make_store(rng, np.arange(1, 31))
    ids = np.array(sorted(store), dtype=np.int64)
    table = EmbeddingTable.from_rows(ids, np.stack([store[i] for i in ids]))
    artwork = [int(a) for a in rng.choice(np.arange(0, 40), 25)] + [None, 7, 7, 99]
    batch = pa.table({"row": np.arange(len(artwork)), "artwork_id": pa.array(artwork, pa.int64())})
    lookup_e = enrich_batch.Enrichment("image_embedding", "lookup", "artwork_id", "art")
    columns = ["row", "image_embedding"]

    compact = enrich_batch.compact_table(batch, [lookup_e], {"art": table}, columns, shared={"art"})
    field = compact.schema.field("image_embedding")
    assert field.type == pa.int32() and field.metadata == {enrich_batch.ROWS_OF_KEY: b"art"}
    assert compact.column("image_embedding").nbytes <= 5 * len(artwork)   # no vectors in it
    want = [store[a].view(np.uint16).tolist() if a in store else None for a in artwork]
    expanded = enrich_batch.expand_table(compact, {"art": table})
    assert expanded.schema.field("image_embedding").type == pa.list_(pa.float16())
    assert as_rows(expanded.column("image_embedding").combine_chunks()) == want
    dictionary = enrich_batch.compact_table(batch, [lookup_e], {"art": table}, columns)
    assert pa.types.is_dictionary(dictionary.schema.field("image_embedding").type)

    for name, block, tables in (("shared", compact, {"art": table}), ("dict", dictionary, None)):
        assert enrich_io.write_part(block, tmp_path / f"{name}.parquet", "zstd", ["row"],
                                 tables) == len(artwork)
    assert pq.read_table(tmp_path / "shared.parquet").equals(pq.read_table(tmp_path / "dict.parquet"))
    with pytest.raises(DaedalusError, match="image_embedding: the writer does not hold store 'art'"):
        enrich_batch.expand_table(compact)


def test_the_skeleton_datasource_reads_the_day_in_order_in_batch_sized_pieces(tmp_path) -> None:
    """One read task per run of whole row groups of about `batch_rows` rows, its rows and size
    known from the footer (no sampling task); read in task order, the tasks give every row of
    every file once, in order, only the asked columns, in blocks of at most `batch_rows`."""
    import pyarrow.parquet as pq

    from daedalus.enrich import io as enrich_io

    files = []
    for i, n in enumerate((7, 0, 12, 4)):
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"row": np.arange(n) + 100 * i, "x": np.zeros(n),
                                 "like": pa.array([[1, 2]] * n, pa.list_(pa.int64()))}),
                       path, row_group_size=3)
        files.append(path)
    source, pieces = enrich_io.skeleton_source(files, ["row", "like"], batch_rows=5)
    tasks = source.get_read_tasks(1)
    assert len(tasks) == pieces
    sizes = [t.metadata.num_rows for t in tasks]
    assert [n for n in sizes if n] == [6, 1, 6, 6, 4]           # groups of 3: 3+3 | 1 | 3+3 ...
    assert all(t.metadata.input_files for t in tasks)
    assert source.estimate_inmemory_data_size() > 0
    blocks = [list(t.read_fn()) for t in tasks]
    assert [sum(b.num_rows for b in bs) for bs in blocks] == sizes
    assert all(b.num_rows <= 5 and b.column_names == ["row", "like"] for bs in blocks for b in bs)
    rows = [r for bs in blocks for b in bs for r in b.column("row").to_pylist()]
    assert rows == list(range(7)) + list(range(200, 212)) + list(range(300, 304))


@pytest.mark.parametrize("ids", [[], [5, 3, 5, 0], [2**40, 7, 7], [-3, 4, -3], list(range(1000, 0, -3))])
def test_unique_ids_is_sorted_unique(ids) -> None:
    arr = np.array(ids, dtype=np.int64)
    assert unique_ids(arr).tolist() == np.unique(arr).tolist()


def exact_mean(ids: list[int], store: dict[int, np.ndarray]) -> np.ndarray | None:
    """The kernel's arithmetic done independently: each sum exactly, as integers in units of
    2^-24 (every float16 value is one), times 1/count in float64, rounded to float16."""
    found = [store[i] for i in ids if i in store]
    if not found:
        return None
    units = sum((v.astype(np.float64) * 2.0**24).astype(np.int64) for v in found)
    return (units.astype(np.float64) * 2.0**-24 * (1.0 / len(found))).astype(np.float16)


def pooled_rows(user: np.ndarray, lists: list[list[int]], table: EmbeddingTable) -> np.ndarray:
    """Each row's float16 mean as uint16 bits (0xFFFF where it has none)."""
    arr = pa.array(lists, type=pa.list_(pa.int64()))
    windows = like_windows(user, arr.offsets.to_numpy(), arr.values.to_numpy())
    valid, means = window_means(windows, table)
    bits = np.full((len(lists), table.dim), 0xFFFF, dtype=np.uint16)
    bits[valid] = means.view(np.uint16)
    return bits


@pytest.mark.parametrize("scale, longest", [(0.05, 50), (1.5e4, 60)])
def test_means_are_exact_whatever_the_batching(scale: float, longest: int) -> None:
    """The pooled bytes do not depend on which rows share a batch (so engines, batch sizes and
    partitionings agree byte for byte), and equal the exact reference; with values near
    float16's largest and one user's sequence past 8,192 ids, the sums run in fixed point."""
    rng = np.random.default_rng(11)
    store = make_store(rng, np.arange(1, 400), scale=scale)
    ids = np.array(sorted(store), dtype=np.int64)
    table = EmbeddingTable.from_rows(ids, np.stack([store[i] for i in ids]))
    user, lists = [], []
    for u in range(6):  # sliding lists over long like sequences, users interleaved below
        likes = rng.integers(1, 420, 3000 if u == 0 else 300).tolist()
        for end in range(0, len(likes), 3):
            user.append(u)
            lists.append(likes[max(0, end - longest):end])
    order = np.argsort(rng.permutation(len(user)) % 7, kind="stable")  # interleave, keep per-user order
    user = np.array(user, dtype=np.int64)[order]
    lists = [lists[i] for i in order]
    whole = pooled_rows(user, lists, table)
    for rows in (1, 97, 1000):
        parts = [pooled_rows(user[s:s + rows], lists[s:s + rows], table)
                 for s in range(0, len(lists), rows)]
        assert np.array_equal(np.concatenate(parts), whole)
    for r, row in enumerate(lists):
        want = exact_mean(row, store)
        got = whole[r]
        assert (got == 0xFFFF).all() if want is None else np.array_equal(got, want.view(np.uint16))
