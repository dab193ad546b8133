"""A root as the user wrote it: a local path, or `s3://bucket/prefix`; any other scheme is an
error that names the field."""

from __future__ import annotations

import re
from pathlib import Path

from daedalus.core.config import ObjectStorage
from daedalus.core.errors import DaedalusError
from daedalus.storage.objects import SCHEME, ObjectPath
from daedalus.storage.s3 import S3Settings, object_store

Root = Path | ObjectPath
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_uri(text: object) -> bool:
    return isinstance(text, ObjectPath) or bool(_SCHEME.match(str(text)))


def parse_root(text: str | Path | ObjectPath, field: str,
               storage: ObjectStorage | None = None) -> Root:
    """`text` as a root: an `ObjectPath` for `s3://bucket/prefix`, else a local `Path`.

    `storage` is the config's object-store settings (the `AWS_*` variables fill the rest)."""
    if isinstance(text, ObjectPath | Path):
        return text
    match = _SCHEME.match(text)
    if not match:
        return Path(text)
    if match.group(1).lower() != "s3":
        raise DaedalusError(f"{field}: {text!r} has scheme {match.group(1)!r}; Daedalus reads"
                            " local paths and s3://bucket/prefix (fix: use one of those)")
    bucket, _, key = text[len(SCHEME):].partition("/")
    if len(bucket) < 3 or not re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", bucket):
        raise DaedalusError(f"{field}: {text!r}: {bucket!r} is not a bucket name (fix: 3-63"
                            " lowercase letters, digits, dots or hyphens, as in s3://bucket/prefix)")
    return ObjectPath(bucket, key.strip("/"), object_store(S3Settings.resolve(storage)))
