"""The enrich kernel: embedding lookup and the windowed avg-pool, on numpy buffers.

A day's like lists overlap heavily: the list of a user's next impression is a
suffix of the previous list plus the likes made in between (docs/data-contract.md: oldest
first, the last 50 of a sliding 7-day window). `like_windows` recovers, per
user, one like sequence in which every row's list is a contiguous slice, so
`window_pool` sums each slice as the difference of two prefix sums: the cost
is O(sequence + rows) vectors, not O(sum of list lengths), and does not grow
with the window length. The recovery never has to be "right", only valid:
every row's list must equal its slice exactly, which is checked element by
element; where an overlap does not check out the row simply starts afresh.

The sums are exact: a float16 value is a multiple of 2^-24, so float64 sums of
them round nothing while every partial sum stays below 2^29 in magnitude (a chunk
of the sequence shorter than 8,192 positions, or a store whose values are that
small; otherwise the prefix runs in int64 fixed point). A row's mean is then its
exact sum times 1/count, rounded to float16: it does not depend on which rows
share its batch, so every engine, batch size and partitioning gives the same bytes.

Everything here is vectorized over rows; the only Python loop is over chunks of
a few thousand sequence positions, which bounds the float64 prefix in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from daedalus.core.errors import DaedalusError
from daedalus.store.table import EmbeddingTable

PREFIX_CHUNK = 512
# float16 values are multiples of 2^-24: float64 (53-bit) sums of them are exact below 2^29,
# int64 fixed-point sums (value * 2^24) below 2^39.
FLOAT64_EXACT_BELOW = 2.0**29
FIXED_EXACT_BELOW = 2.0**39
FLOAT16_MAX = 65504.0


def unique_ids(ids: np.ndarray) -> np.ndarray:
    """Sorted unique ids. Dense non-negative ids (the usual case) use a presence bitmap,
    O(n) instead of a sort."""
    if ids.size == 0:
        return ids.astype(np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi <= 8 * ids.size + (1 << 20):
        seen = np.zeros(hi + 1, dtype=bool)
        seen[ids] = True
        return np.flatnonzero(seen).astype(np.int64)
    return np.unique(ids)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened [start, start + length) ranges: (positions, range index of each)."""
    lengths = lengths.astype(np.int64, copy=False)
    owner = np.repeat(np.arange(lengths.size), lengths)
    first = np.cumsum(lengths) - lengths
    return np.arange(owner.size) - first[owner] + starts.astype(np.int64)[owner], owner


@dataclass(frozen=True)
class LikeWindows:
    """Per-user like sequences and each row's slice of them.

    `sequence` holds artwork ids; row `r` (in the batch's own order) has the list
    `sequence[start[r]:end[r]]`. Users own disjoint, consecutive stretches of the
    sequence; `user_start` lists where each begins.
    """

    sequence: np.ndarray
    start: np.ndarray
    end: np.ndarray
    user_start: np.ndarray


def like_windows(user_ids: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> LikeWindows:
    """Recover per-user like sequences from the rows' lists (see the module docstring).

    Rows are taken in their batch order within each user (chronological in a day).
    For each row whose predecessor of the same user has a non-empty list, the overlap
    `o` is found from the first occurrence of the row's first id in the previous
    list and kept only if the previous list's last `o` ids equal the row's first `o`;
    the row then appends only its remaining ids to the sequence.
    """
    n = user_ids.size
    offsets = offsets.astype(np.int64, copy=False)
    order = np.argsort(user_ids, kind="stable")
    user = user_ids[order]
    first = offsets[:-1][order]
    length = (offsets[1:] - offsets[:-1])[order]

    overlap = np.zeros(n, dtype=np.int64)
    pair = np.zeros(n, dtype=bool)
    if n > 1:
        pair[1:] = (user[1:] == user[:-1]) & (length[1:] > 0) & (length[:-1] > 0)
    cur = np.flatnonzero(pair)
    if cur.size:
        prev = cur - 1
        pos, owner = _ranges(first[prev], length[prev])
        hit = np.flatnonzero(values[pos] == values[first[cur]][owner])
        if hit.size:
            keep = np.ones(hit.size, dtype=bool)
            keep[1:] = owner[hit[1:]] != owner[hit[:-1]]
            hit = hit[keep]
            k = owner[hit]
            j = pos[hit] - first[prev[k]]
            o = length[prev[k]] - j
            fits = o <= length[cur[k]]
            k, j, o = k[fits], j[fits], o[fits]
            a_pos, a_owner = _ranges(first[prev[k]] + j, o)
            b_pos, _ = _ranges(first[cur[k]], o)
            bad = np.bincount(a_owner[values[a_pos] != values[b_pos]], minlength=k.size) > 0
            overlap[cur[k[~bad]]] = o[~bad]

    added = length - overlap
    end_sorted = np.cumsum(added)
    start_sorted = end_sorted - length
    seq_pos, _ = _ranges(first + overlap, added)
    new_user = np.ones(n, dtype=bool)
    if n > 1:
        new_user[1:] = user[1:] != user[:-1]
    start = np.empty(n, dtype=np.int64)
    end = np.empty(n, dtype=np.int64)
    start[order] = start_sorted
    end[order] = end_sorted
    return LikeWindows(sequence=values[seq_pos], start=start, end=end,
                       user_start=np.unique((end_sorted - added)[new_user]))


@dataclass(frozen=True)
class PooledVectors:
    """One float16 vector per row, each distinct vector stored once: row `r` has
    `vectors[index[r]]`, or no vector (null) where `index[r] == -1`.

    Neighbouring impressions share like windows and artworks, so a batch's distinct
    vectors are far fewer than its rows; the enrich actors hand this compact form to the
    writer (as an Arrow dictionary column) and the writer expands it.
    """

    index: np.ndarray
    vectors: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.index >= 0

    def expanded(self) -> tuple[np.ndarray, np.ndarray]:
        """(valid, vectors of the valid rows in row order)."""
        valid = self.valid
        return valid, np.take(self.vectors, self.index[valid], axis=0)


def window_pool(windows: LikeWindows, table: EmbeddingTable,
                chunk: int = PREFIX_CHUNK) -> PooledVectors:
    """Mean embedding of each row's slice, over the ids the table has; -1 where the table has
    none of the row's ids.

    Each distinct slice is computed once (consecutive impressions often share a
    list). Sums are exact prefix differences (see the module docstring); chunks of
    the sequence begin at a user's first position, so no slice crosses a chunk.
    """
    seq_rows = table.rows_of(windows.sequence)
    found = np.zeros(windows.sequence.size + 1, dtype=np.int64)
    np.cumsum(seq_rows != table.missing_row, out=found[1:])
    counts = found[windows.end] - found[windows.start]
    valid = counts > 0
    index = np.full(valid.size, -1, dtype=np.int32)
    if not valid.any():
        return PooledVectors(index, np.empty((0, table.dim), dtype=np.float16))

    span = windows.sequence.size + 1
    keys, inverse = np.unique(windows.start[valid] * span + windows.end[valid], return_inverse=True)
    index[valid] = inverse
    start, end = keys // span, keys % span
    scale = 1.0 / (found[end] - found[start])
    means = np.empty((keys.size, table.dim), dtype=np.float16)
    cuts = _chunk_starts(windows.user_start, windows.sequence.size, chunk)
    at = np.searchsorted(start, cuts, side="left")
    fixed = not _float64_exact(table, int(np.diff(cuts).max()))
    for lo, hi, w_lo, w_hi in zip(cuts[:-1], cuts[1:], at[:-1], at[1:], strict=True):
        if w_lo == w_hi:
            continue
        if fixed:
            prefix = _fixed_prefix_sums(table.matrix, seq_rows[lo:hi])
            sums = (prefix[end[w_lo:w_hi] - lo] - prefix[start[w_lo:w_hi] - lo]).astype(np.float64)
            sums *= 2.0**-24
        else:
            prefix = _prefix_sums(table.matrix, seq_rows[lo:hi])
            sums = prefix[end[w_lo:w_hi] - lo]
            sums -= prefix[start[w_lo:w_hi] - lo]
        sums *= scale[w_lo:w_hi, None]
        means[w_lo:w_hi] = sums
    return PooledVectors(index, means)


def window_means(windows: LikeWindows, table: EmbeddingTable,
                 chunk: int = PREFIX_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """`window_pool`, expanded: (valid, the float16 means of the valid rows in row order)."""
    return window_pool(windows, table, chunk).expanded()


def _prefix_sums(matrix: np.ndarray, rows: np.ndarray, block: int = 16) -> np.ndarray:
    """float64 prefix sums of `matrix[rows]`, shape (len(rows) + 1, dim), row 0 zero.

    numpy's cumsum along axis 0 runs one column at a time; here a block of `block`
    rows is summed with whole-row adds, block by block: O(len(rows) / block + block)
    vectorized steps.
    """
    m, dim = rows.size, matrix.shape[1]
    nb = -(-m // block)
    out = np.zeros((nb * block + 1, dim), dtype=np.float64)
    out[1 : m + 1] = matrix[rows]
    blocks = out[1:].reshape(nb, block, dim)
    for i in range(1, min(block, m)):
        blocks[:, i] += blocks[:, i - 1]
    for b in range(1, nb):
        blocks[b] += blocks[b - 1, -1]
    return out[: m + 1]


def _float64_exact(table: EmbeddingTable, longest: int) -> bool:
    """Whether float64 prefix sums over chunks of at most `longest` positions are exact: any
    float16 values are when the chunks are short; else it takes the table's own magnitude.
    Past what int64 fixed point holds exactly, the batch is too large to pool exactly."""
    if longest * FLOAT16_MAX < FLOAT64_EXACT_BELOW:
        return True
    bound = longest * table.max_abs
    if bound >= FIXED_EXACT_BELOW:
        raise DaedalusError(f"avg_pool: one user's like sequence of {longest:,} ids in a batch"
                            " cannot be pooled exactly (fix: lower enrich_batch_rows)")
    return bound < FLOAT64_EXACT_BELOW


def _fixed_prefix_sums(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int64 prefix sums of `matrix[rows] * 2^24` (exact integers), row 0 zero."""
    out = np.zeros((rows.size + 1, matrix.shape[1]), dtype=np.int64)
    np.cumsum((matrix[rows].astype(np.float64) * 2.0**24).astype(np.int64), axis=0, out=out[1:])
    return out


def _chunk_starts(user_start: np.ndarray, total: int, chunk: int) -> np.ndarray:
    """Sequence positions where chunks begin: user starts about `chunk` apart, plus the end."""
    if total == 0:
        return np.array([0, 0], dtype=np.int64)
    nearest = np.searchsorted(user_start, np.arange(0, total, chunk), "right") - 1
    cuts = np.concatenate([[0], user_start[np.unique(nearest)], [total]])
    return np.unique(cuts).astype(np.int64)


def lookup_pool(ids: np.ndarray, table: EmbeddingTable) -> PooledVectors:
    """Each id's vector, each distinct id's once; -1 where the table lacks the id."""
    rows = table.rows_of(ids)
    valid = rows != table.missing_row
    index = np.full(rows.size, -1, dtype=np.int32)
    distinct, index[valid] = np.unique(rows[valid], return_inverse=True)
    return PooledVectors(index, table.matrix[distinct])


def lookup(ids: np.ndarray, table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
    """`lookup_pool`, expanded: (valid, each found id's float16 vector, in order)."""
    return lookup_pool(ids, table).expanded()


def fp16_list_array(valid: np.ndarray, vectors: np.ndarray) -> pa.ListArray:
    """A list<halffloat> column straight from buffers: `vectors` are the valid rows' values."""
    n = valid.size
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    if vectors.size >= 2**31:
        raise ValueError(f"{vectors.size} float16 values overflow int32 list offsets"
                         " (fix: use smaller batches)")
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(valid, out=offsets[1:])
    offsets *= dim
    nulls = n - int(valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    values = pa.Array.from_buffers(pa.float16(), vectors.size,
                                   [None, pa.py_buffer(np.ascontiguousarray(vectors))])
    return pa.Array.from_buffers(pa.list_(pa.float16()), n, [bitmap, pa.py_buffer(offsets)],
                                 null_count=nulls, children=[values])


def fp16_dictionary_array(pooled: PooledVectors) -> pa.DictionaryArray:
    """The compact column: int32 indices (null where -1) into fixed_size_list<halffloat>[dim]."""
    k, dim = pooled.vectors.shape
    values = pa.Array.from_buffers(pa.float16(), k * dim,
                                   [None, pa.py_buffer(np.ascontiguousarray(pooled.vectors))])
    dictionary = pa.FixedSizeListArray.from_arrays(values, dim)
    indices = pa.array(pooled.index, mask=pooled.index < 0)
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def expand_dictionary(column: pa.DictionaryArray) -> pa.ListArray:
    """`fp16_dictionary_array`'s column as the contract's list<halffloat>, one gather."""
    k, dim = len(column.dictionary), column.type.value_type.list_size
    vectors = column.dictionary.flatten().to_numpy(zero_copy_only=False).reshape(k, dim)
    return gather_rows(vectors, column.indices)


def gather_rows(vectors: np.ndarray, rows: pa.Array) -> pa.ListArray:
    """list<halffloat> of `vectors[rows[r]]` per row, null where `rows` is null."""
    index = rows.fill_null(-1).to_numpy(zero_copy_only=False)
    return fp16_list_array(*PooledVectors(index, vectors).expanded())
