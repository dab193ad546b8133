"""`ObjectPath`: one key of an S3-compatible store, with the few path operations we need.

It reads like a `pathlib.Path` where object storage can honour that (`/`, `name`, `parent`,
`exists`, `read_bytes`, `write_bytes`, `unlink`) and says so where it cannot: there is no
rename, and a "folder" is just a key prefix. Writes can be conditional, which is what the
day commit and the day lock are built on (`if_none_match`: create only; `if_match`: replace
or delete only the version with that ETag). Every request's failure is a one-line error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

from daedalus.storage.s3 import ObjectStore, error_code, s3_errors

SCHEME = "s3://"
# What servers answer for a key that is not there (GET says NoSuchKey; HEAD has no body).
NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


class PreconditionFailed(Exception):
    """A conditional write or delete found another version of the key."""


@dataclass(frozen=True)
class ObjectInfo:
    path: ObjectPath
    size: int
    etag: str
    modified: dt.datetime


@dataclass(frozen=True, order=True)
class ObjectPath:
    bucket: str
    key: str
    store: ObjectStore = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}".rstrip("/")

    def __truediv__(self, name: str) -> ObjectPath:
        key = f"{self.key}/{name}" if self.key else str(name)
        return ObjectPath(self.bucket, key.strip("/"), self.store)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.bucket, self.key.rpartition("/")[0], self.store)

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    @property
    def arrow_path(self) -> str:
        """The path pyarrow's S3 filesystem takes: `bucket/key`."""
        return f"{self.bucket}/{self.key}"

    # -- objects ---------------------------------------------------------------------------

    def read_bytes(self) -> bytes:
        """The object's bytes; FileNotFoundError if there is none."""
        with self._errors():
            try:
                return self.store.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
            except Exception as exc:
                if error_code(exc) in NOT_FOUND:
                    raise FileNotFoundError(str(self)) from None
                raise

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_with_etag(self) -> tuple[bytes, str] | None:
        """(bytes, ETag) of the object, or None if there is none."""
        with self._errors():
            try:
                got = self.store.client.get_object(Bucket=self.bucket, Key=self.key)
            except Exception as exc:
                if error_code(exc) in NOT_FOUND:
                    return None
                raise
            return got["Body"].read(), got["ETag"]

    def write_bytes(self, data: bytes, *, if_none_match: bool = False,
                    if_match: str | None = None) -> str:
        """Put the object (one request: readers see the old version or this one); its ETag.
        Raises PreconditionFailed when a condition does not hold."""
        extra = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match:
            extra["IfMatch"] = if_match
        with self._errors():
            try:
                return self.store.client.put_object(Bucket=self.bucket, Key=self.key, Body=data,
                                                    **extra)["ETag"]
            except Exception as exc:
                if error_code(exc) in PRECONDITION_FAILED:
                    raise PreconditionFailed(str(self)) from None
                raise

    def write_text(self, text: str, **conditions) -> str:
        return self.write_bytes(text.encode(), **conditions)

    def unlink(self, missing_ok: bool = True, if_match: str | None = None) -> None:
        extra = {"IfMatch": if_match} if if_match else {}
        with self._errors():
            try:
                self.store.client.delete_object(Bucket=self.bucket, Key=self.key, **extra)
            except Exception as exc:
                if error_code(exc) in PRECONDITION_FAILED:
                    raise PreconditionFailed(str(self)) from None
                if error_code(exc) in NOT_FOUND and missing_ok:
                    return
                raise

    def open_input(self):
        """A seekable pyarrow file over the object (ranged reads: a parquet footer is cheap)."""
        with self._errors():
            return self.store.filesystem.open_input_file(self.arrow_path)

    def open_output(self):
        """A pyarrow output stream that becomes the object when closed (multipart upload)."""
        with self._errors():
            return self.store.filesystem.open_output_stream(self.arrow_path)

    def upload(self, local: str) -> None:
        """Copy a local file here (multipart where large)."""
        with self._errors():
            self.store.client.upload_file(local, self.bucket, self.key)

    def download(self, local) -> None:
        """Copy the object to a local file (ranged parts in parallel where large)."""
        with self._errors():
            self.store.client.download_file(self.bucket, self.key, str(local))

    def etag(self) -> str | None:
        """The object's ETag (its version), or None if there is none."""
        with self._errors():
            try:
                return self.store.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"]
            except Exception as exc:
                if error_code(exc) in NOT_FOUND:
                    return None
                raise

    def is_file(self) -> bool:
        return self.etag() is not None

    # -- prefixes ("folders") ----------------------------------------------------------------

    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Every object under this prefix, in key order."""
        prefix = f"{self.key}/" if self.key else ""
        with self._errors():
            pages = self.store.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(ObjectPath(self.bucket, item["Key"], self.store),
                                     item["Size"], item["ETag"].strip('"'), item["LastModified"])

    def children(self) -> list[ObjectPath]:
        """The "folders" directly under this prefix."""
        prefix = f"{self.key}/" if self.key else ""
        out = []
        with self._errors():
            pages = self.store.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    out.append(ObjectPath(self.bucket, common["Prefix"].rstrip("/"), self.store))
        return out

    def is_dir(self) -> bool:
        return next(self.iter_objects(), None) is not None

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def check_bucket(self) -> None:
        """Fail with the one-line error unless the bucket answers to our credentials."""
        with self._errors():
            self.store.client.head_bucket(Bucket=self.bucket)

    def _errors(self):
        return s3_errors(str(self), self.store.settings)


def parquet_dataset(paths: list[ObjectPath], columns: list[str] | None = None):
    """A pyarrow dataset over these parquet objects, read through the store's S3 filesystem
    (DuckDB scans it lazily once registered); a scanner reader of `columns` when given."""
    import pyarrow.dataset as ds

    first = paths[0]
    with s3_errors(str(first), first.store.settings):
        dataset = ds.dataset([p.arrow_path for p in paths], format="parquet",
                             filesystem=first.store.filesystem)
        return dataset if columns is None else dataset.scanner(columns=columns).to_reader()


def open_parquet(path):
    """`pq.ParquetFile` of a local path or an `ObjectPath` (read through pyarrow's S3 layer)."""
    import pyarrow.parquet as pq

    if isinstance(path, ObjectPath):
        with s3_errors(str(path), path.store.settings):
            return pq.ParquetFile(path.open_input())
    return pq.ParquetFile(path)
