"""S3-compatible object storage: the settings, the two clients, and their errors.

Settings follow the ecosystem's conventions: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`),
`AWS_REGION` (or `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
(/ `AWS_SESSION_TOKEN`); without keys, boto3's own chain (profiles, instance roles) applies.
A field of the config's `object_storage` (base.yaml's endpoint and region, the Dagster
resource's keys) wins over its variable. The secret is held out of `repr` and never appears in
a message, a log line or a manifest.

Two real clients do the work: boto3 for small objects (manifests, locks, listings with ETags,
and conditional writes: `If-None-Match: *`, `If-Match`), and pyarrow's `S3FileSystem` for
parquet bytes. `s3_errors` turns either's failure into one line naming the URI and the fix.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property

from daedalus.core.config import ObjectStorage
from daedalus.core.errors import DaedalusError

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """Where the object store is and who we are to it. `secret_access_key` is never shown."""

    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> S3Settings:
        env = os.environ if environ is None else environ
        return cls(endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
                   region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
                   access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                   secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                   session_token=env.get("AWS_SESSION_TOKEN"))

    @classmethod
    def resolve(cls, given: ObjectStorage | None,
                environ: dict[str, str] | None = None) -> S3Settings:
        """The config's fields where set, the `AWS_*` variables for the rest."""
        env = cls.from_env(environ)
        if given is None:
            return env
        secret = given.secret_access_key
        keys = given.access_key_id is not None or secret is not None
        return cls(endpoint_url=given.endpoint_url or env.endpoint_url,
                   region=given.region or env.region,
                   access_key_id=given.access_key_id if keys else env.access_key_id,
                   secret_access_key=secret.get_secret_value() if secret else (
                       None if keys else env.secret_access_key),
                   session_token=None if keys else env.session_token)

    def environment(self) -> dict[str, str | None]:
        """These settings as every `AWS_*` variable `from_env` reads (None: unset it), for the
        processes of a local Ray cluster, whose workers take their keys from their variables."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ENDPOINT_URL_S3": self.endpoint_url,
                "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region,
                "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_SESSION_TOKEN": self.session_token}

    @property
    def shown_endpoint(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"


class ObjectStore:
    """One store's clients, made on first use and shared by every path under its roots."""

    def __init__(self, settings: S3Settings):
        self.settings = settings

    def __repr__(self) -> str:
        return f"ObjectStore({self.settings.shown_endpoint})"

    # Shipped to a Ray worker, a store carries its endpoint and region but no key: the worker
    # takes its keys from its own `AWS_*` variables (a local cluster's workers start with the
    # run's), so no key is ever pickled, and every node talks to the driver's server. The
    # worker's store is its process's one per settings, so its clients are made once.
    def __reduce__(self):
        return worker_store, (self.settings.endpoint_url, self.settings.region)

    @cached_property
    def client(self):
        """boto3's S3 client: a few quick attempts, so a dead endpoint fails in seconds."""
        import boto3
        from botocore.config import Config

        s = self.settings
        return boto3.client("s3", endpoint_url=s.endpoint_url, region_name=s.region,
                            aws_access_key_id=s.access_key_id,
                            aws_secret_access_key=s.secret_access_key,
                            aws_session_token=s.session_token,
                            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                                          connect_timeout=3, read_timeout=60,
                                          s3={"addressing_style": "path"}))

    @cached_property
    def filesystem(self):
        """pyarrow's S3 filesystem, for parquet reads and writes."""
        import pyarrow.fs as pafs

        s = self.settings
        endpoint, scheme = s.endpoint_url, "https"
        if endpoint and "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
        return pafs.S3FileSystem(access_key=s.access_key_id, secret_key=s.secret_access_key,
                                 session_token=s.session_token, region=s.region,
                                 endpoint_override=endpoint, scheme=scheme,
                                 connect_timeout=3, request_timeout=60,
                                 retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))


@functools.lru_cache(maxsize=8)
def object_store(settings: S3Settings) -> ObjectStore:
    """The one `ObjectStore` per settings in this process: boto3 clients are slow to make."""
    return ObjectStore(settings)


def worker_store(endpoint_url: str | None, region: str) -> ObjectStore:
    """The store of an unpickled path: the sender's endpoint and region, this process's keys."""
    return object_store(replace(S3Settings.from_env(), endpoint_url=endpoint_url, region=region))


# The error codes the fix depends on; anything else is reported with its code.
_NO_BUCKET = {"NoSuchBucket"}
_BAD_KEYS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "403",
             "InvalidToken", "ExpiredToken"}


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a boto3 failure (`PreconditionFailed`, `NoSuchKey`, ...)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or "") or None
    return None


def describe(exc: BaseException, uri: str, settings: S3Settings) -> DaedalusError:
    """One line for a failed request on `uri`: what went wrong and the fix, no credentials."""
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    endpoint = settings.shown_endpoint
    code = error_code(exc)
    text = str(exc)
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError) or (
            isinstance(exc, OSError) and ("connect" in text.lower() or "curl" in text.lower())):
        return DaedalusError(f"{uri}: the object store at {endpoint} does not answer (fix: start"
                             " it, or correct AWS_ENDPOINT_URL / the endpoint setting)")
    if isinstance(exc, NoCredentialsError):
        return DaedalusError(f"{uri}: no credentials for the object store at {endpoint} (fix: set"
                             " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if code in _NO_BUCKET or "NO_SUCH_BUCKET" in text:
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        return DaedalusError(f"{uri}: bucket {bucket!r} does not exist at {endpoint} (fix: create"
                             " it, or correct the bucket in the URI)")
    if code in _BAD_KEYS or "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text:
        return DaedalusError(f"{uri}: the object store at {endpoint} refused our credentials"
                             f" ({code or 'access denied'}) (fix: correct AWS_ACCESS_KEY_ID /"
                             " AWS_SECRET_ACCESS_KEY, or grant them this bucket)")
    first = text.splitlines()[0] if text else type(exc).__name__
    key = settings.secret_access_key
    if key:
        first = first.replace(key, "***")
    return DaedalusError(f"{uri}: object store request failed ({code or type(exc).__name__}:"
                         f" {first[:200]}) (fix: check the endpoint and rerun)")


@contextlib.contextmanager
def s3_errors(uri: str, settings: S3Settings) -> Iterator[None]:
    """Turn a boto3 or pyarrow failure on `uri` into the one-line error."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise describe(exc, uri, settings) from None
    except OSError as exc:
        if type(exc) is OSError or "AWS Error" in str(exc):  # pyarrow's S3 errors
            raise describe(exc, uri, settings) from None
        raise
