"""The Lance embedding store: built from siglip2_vectors (latest dt wins), kept off NFS."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daedalus.cli import main
from daedalus.core.errors import DaedalusError
from daedalus.store.build import (
    build_store,
    check_local_disk,
    ensure_store,
    filesystem_type,
    store_info,
    store_version,
)
from daedalus.store.reader import StoreReader

DIM = 1152


def vectors(ids, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((len(ids), DIM)) * 0.05).astype(np.float16)


def write_vectors(root: Path, day: str, ids, values: np.ndarray | None, fixed: bool = True,
                  name: str = "part-0.parquet", nulls: tuple[int, ...] = ()) -> None:
    """A siglip2_vectors partition; `nulls` are positions whose embedding is null."""
    folder = root / "siglip2_vectors" / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    flat = pa.array(values.reshape(-1))
    offsets = pa.array(np.arange(len(ids) + 1) * DIM, pa.int32())
    column = (pa.FixedSizeListArray.from_arrays(flat, DIM) if fixed
              else pa.ListArray.from_arrays(offsets, flat))
    if nulls:
        mask = np.zeros(len(ids), bool)
        mask[list(nulls)] = True
        column = pa.array(column.to_pylist(), column.type, mask=mask)
    table = pa.table({"id": pa.array(ids, pa.int64()), "image_embedding": column})
    pq.write_table(table, folder / name)


@pytest.fixture
def sources(project) -> dict[int, np.ndarray]:
    """Two embedding runs; the second re-embeds ids 3 and 5 as plain lists. Returns the truth."""
    root = project.root.parent / "sources"
    base_ids = [1, 2, 3, 4, 5, 6]
    base = vectors(base_ids, 1)
    write_vectors(root, "2026-01-20", base_ids, base, nulls=(5,))
    again = vectors([3, 5, 7], 2)
    write_vectors(root, "2026-01-28", [3, 5, 7], again, fixed=False)
    truth = {i: base[k] for k, i in enumerate(base_ids) if i != 6}
    truth.update({3: again[0], 5: again[1], 7: again[2]})
    return truth


def stored(config) -> dict[int, np.ndarray]:
    path = config.store_path(config.aggregations.store("artwork_embeddings"))
    table = lance.dataset(str(path)).to_table()
    values = table.column(1).combine_chunks().values.to_numpy(zero_copy_only=False)
    return dict(zip(table.column(0).to_pylist(), values.reshape(-1, DIM), strict=True))


def test_store_is_built_on_first_use_latest_dt_wins(project, sources) -> None:
    config, _ = project.load()
    path = ensure_store(config, "artwork_embeddings")
    assert path == project.root.parent / "store" / "artwork_embedding"
    ds = lance.dataset(str(path))
    assert ds.schema.field("image_embedding").type == pa.list_(pa.float16(), DIM)
    indices = [(i.type_url.rsplit(".", 1)[-1], list(i.field_names)) for i in ds.describe_indices()]
    assert indices == [("BTreeIndexDetails", ["id"])]
    got = stored(config)
    assert sorted(got) == sorted(sources)
    for i, want in sources.items():
        assert np.array_equal(got[i].view(np.uint16), want.view(np.uint16)), i


def test_reader_takes_vectors_by_id(project, sources) -> None:
    config, _ = project.load()
    reader = StoreReader(ensure_store(config, "artwork_embeddings"))
    table = reader.table(np.array([2, 6, 7, 99, 3]))
    assert table.ids.tolist() == [2, 3, 7]
    assert table.matrix.shape == (4, DIM) and not table.matrix[-1].any()
    for row, i in enumerate(table.ids):
        assert np.array_equal(table.matrix[row].view(np.uint16), sources[int(i)].view(np.uint16))
    one = reader.table(np.array([5]))     # a small share of the store: taken, not scanned
    assert one.ids.tolist() == [5]
    assert np.array_equal(one.matrix[0].view(np.uint16), sources[5].view(np.uint16))


def test_build_is_idempotent_force_rebuilds_and_staleness_is_reported(project, sources) -> None:
    config, _ = project.load()
    first = build_store(config, "artwork_embeddings")
    assert build_store(config, "artwork_embeddings")["built_at"] == first["built_at"]
    assert first["stale"] is None and first["rows"] == len(sources)
    version = store_version(Path(first["path"]))
    write_vectors(project.root.parent / "sources", "2026-01-30", [1], vectors([1], 3))
    stale = store_info(config, "artwork_embeddings")["stale"]
    assert "changed since the store was built" in stale
    rebuilt = build_store(config, "artwork_embeddings", force=True)
    assert rebuilt["stale"] is None and rebuilt["built_at"] != first["built_at"]
    assert store_version(Path(rebuilt["path"])) != version
    for part in (project.root.parent / "sources").rglob("*.parquet"):   # re-exported, same bytes
        data = part.read_bytes()
        part.unlink()
        part.write_bytes(data)
    assert store_info(config, "artwork_embeddings")["stale"] is None
    assert np.array_equal(stored(config)[1].view(np.uint16), vectors([1], 3)[0].view(np.uint16))
    assert not [p.name for p in Path(first["path"]).parent.iterdir() if ".building-" in p.name
                or ".old-" in p.name]


def test_wrong_vector_size_is_a_one_line_error_naming_the_partition(project, sources) -> None:
    root = project.root.parent / "sources"
    short = np.zeros((1, DIM), np.float16)
    folder = root / "siglip2_vectors" / "dt=2026-01-29"
    folder.mkdir(parents=True)
    column = pa.ListArray.from_arrays(pa.array([0, DIM - 2], pa.int32()), pa.array(short[0, :-2]))
    pq.write_table(pa.table({"id": pa.array([42], pa.int64()), "image_embedding": column}),
                   folder / "part-0.parquet")
    config, _ = project.load()
    with pytest.raises(DaedalusError, match=r"dt=2026-01-29: image_embedding: id 42 has 1150"):
        build_store(config, "artwork_embeddings")
    assert not (project.root.parent / "store" / "artwork_embedding").exists()


def test_bad_sources_are_refused(project) -> None:
    config, _ = project.load()
    with pytest.raises(DaedalusError, match="siglip2_vectors: embedding source folder does not"):
        build_store(config, "artwork_embeddings")
    root = project.root.parent / "sources"
    folder = root / "siglip2_vectors" / "dt=2026-01-20"
    folder.mkdir(parents=True)
    floats = pa.array([[0.5] * 4], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": [1], "image_embedding": floats}), folder / "part-0.parquet")
    with pytest.raises(DaedalusError, match=r"part-0.parquet: image_embedding: expected fixed"):
        build_store(config, "artwork_embeddings")
    with pytest.raises(DaedalusError, match="no store named 'nope'"):
        build_store(config, "nope")


MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
filer:/export /mnt/shared nfs4 rw,vers=4.2 0 0
"""


def test_store_on_a_network_filesystem_is_refused() -> None:
    assert filesystem_type(Path("/mnt/shared/store"), MOUNTS) == "nfs4"
    assert filesystem_type(Path("/mnt/sharedx"), MOUNTS) == "ext4"
    with pytest.raises(DaedalusError, match="nfs4 network filesystem; Lance needs an atomic"):
        check_local_disk(Path("/mnt/shared/store/artwork_embedding"), mounts=MOUNTS)
    check_local_disk(Path("/data/store/artwork_embedding"), mounts=MOUNTS)
    with pytest.raises(DaedalusError, match="is a URI"):
        check_local_disk(Path("s3://bucket/store"))


def test_cli_store_build_and_info(project, sources, capsys) -> None:
    flags = project.cli_flags()
    assert main(["store", "info", *flags]) == 0
    assert "not built" in capsys.readouterr().out
    assert main(["store", "build", *flags]) == 0
    out = capsys.readouterr().out
    assert "artwork_embeddings: 6 vectors" in out and "BTree on id" in out and "fresh    yes" in out
    assert main(["store", "info", "--json", *flags]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 6
    assert info["embedding_type"].startswith("fixed_size_list<item: halffloat>")
    assert main(["store", "info", "--name", "nope", *flags]) == 2
