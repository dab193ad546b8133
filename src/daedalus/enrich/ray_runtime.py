"""`RayRuntime`: the Ray the enrich stage runs on, owned by its caller.

One runtime starts (or connects to) Ray on first use and reuses it for every later day it is
given; `close()` stops it and puts back the environment it changed. Without an address it is
a local cluster sized to the `RayEnvelope` (clamped to the machine), listening on 127.0.0.1
only, no dashboard, worker logs kept out of the terminal; with one (`--ray-address`,
`RAY_ADDRESS`, `ray.address`) it connects to that cluster, sized to what the cluster offers.

Ray holds one cluster per process: starting a runtime while another one's Ray runs stops
that Ray first. The sizing rules for the stage's tasks (`actor_cpus`, `write_concurrency`,
`idle_workers`) live here beside it, since they are what the runtime's cluster must hold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from daedalus.core.envelope import RayEnvelope
from daedalus.core.errors import DaedalusError
from daedalus.enrich.preload_box import PreloadBox

Progress = Callable[[str], None]

# Write tasks ask for half a CPU, so two run on each CPU the actors leave: writing two
# float16 list columns costs more than computing them, and a half-idle actor's core is then
# filled by a second writer instead of staying idle.
WRITE_TASK_CPUS = 0.5
# A read task is a streaming generator that lives, paused by backpressure, as long as its
# piece lasts: any CPU it asks for is held away from the writers all that time, for ~1% of
# the stage's work. Reads ask for none, one at a time; Ray Data's memory backpressure still
# bounds them.
READ_TASK_CPUS = 0

# Ray reads these when it is imported, so they are set before the runtime's first `import
# ray`: workers run this venv's python (daedalus is installed in it), where Ray's `uv run`
# hook would package the working directory and start every worker through uv; and no usage
# statistics leave the machine.
_IMPORT_ENV = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Ray's "local-only cluster" switch (the flag Ray sets on macOS/Windows).
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AUTH_ENV = "RAY_AUTH_MODE"


class RayRuntime:
    """Ray for the enrich stage: `start(envelope)` on each day, `close()` once at the end."""

    def __init__(self, progress: Progress = print):
        self.progress = progress
        self.address: str | None = None
        self.envelope: RayEnvelope | None = None
        self.box: Any = None  # the PreloadBox actor, started with Ray
        self._saved_env: dict[str, str | None] | None = None

    def __enter__(self) -> RayRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self.envelope is not None

    def start(self, envelope: RayEnvelope,
              worker_env: dict[str, str | None] | None = None) -> RayEnvelope:
        """Ray for `envelope`, started or connected once and then reused; returns the
        effective envelope (what the cluster holds).

        `worker_env`: variables a local cluster's processes start with, None to start without
        one (the run's object-store settings, so its workers reach the bucket as the driver
        does); this process's own environment is left as it was. An existing cluster's nodes
        keep their own."""
        address = envelope.address
        if self.started and self.address == address and _ray_up():
            return replace(self.envelope, num_workers=envelope.num_workers,
                           preload_day_embeddings=envelope.preload_day_embeddings)
        if self.started:
            self.close()
        self._save_env()
        for name, value in _IMPORT_ENV.items():
            os.environ.setdefault(name, value)
        _loopback_only(address is None or is_loopback(address), self._saved_env[_LOOPBACK_ENV])
        import ray

        logging.getLogger("ray").setLevel(logging.ERROR)
        if ray.is_initialized():
            ray.shutdown()
        if address:
            self._connect(address)
        else:
            self._start_local(envelope, worker_env or {})
        self.address = address
        self.envelope = _fit_to_cluster(envelope)
        self.box = _start_box()
        _warm_writers(self.envelope)
        _warm_ray_data()
        return self.envelope

    def close(self) -> None:
        """Stop (or disconnect from) Ray and restore the environment variables it set."""
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        self.address = self.envelope = self.box = None
        if self._saved_env is not None:
            saved, self._saved_env = self._saved_env, None
            for name, value in saved.items():
                _set_env(name, value)
            _loopback_only(False, saved[_LOOPBACK_ENV])
            if "ray" in sys.modules:
                _reload_auth_mode()

    def _save_env(self) -> None:
        if self._saved_env is None:
            names = [*_IMPORT_ENV, _LOOPBACK_ENV, _AUTH_ENV]
            self._saved_env = {name: os.environ.get(name) for name in names}

    def _connect(self, address: str) -> None:
        import ray

        check_ray_address(address)
        self.progress(f"ray: connecting to the cluster at {redact_address(address)}")
        if self._saved_env[_AUTH_ENV] is None:  # a RAY_AUTH_MODE set by the user wins
            wants = cluster_wants_token(address)
            if wants is not None:
                _set_auth_mode("token" if wants else "disabled")
        with _no_fork_warning():
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                     namespace="daedalus")

    def _start_local(self, envelope: RayEnvelope, worker_env: dict[str, str | None]) -> None:
        import ray

        local = envelope.clamped_to_machine()
        for note in local.notes:
            self.progress(f"ray: {note}")
        gib = 2**30
        worker_memory = max(local.memory_gb - local.object_store_gb
                            - local.system_reserved_memory_gb, 1)
        _set_auth_mode(self._saved_env[_AUTH_ENV])
        # Ray's processes inherit this process's environment as it is at `ray.init`; the
        # variables are set for that moment only (not passed as a runtime_env, which Ray keeps
        # in its control store and shows).
        before = {name: os.environ.get(name) for name in worker_env}
        for name, value in worker_env.items():
            _set_env(name, value)
        try:
            with _no_fork_warning():
                ray.init(address="local", num_cpus=local.num_cpus,
                         object_store_memory=int(local.object_store_gb * gib),
                         _memory=int(worker_memory * gib), _node_ip_address="127.0.0.1",
                         include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, namespace="daedalus",
                         _system_config={"num_workers_soft_limit": idle_workers(local)})
        finally:
            for name, value in before.items():
                _set_env(name, value)
        # Ray's local init writes RAY_AUTH_MODE=token into this process's environment, where
        # it outlives the cluster: a later runtime would take it for the user's choice and
        # use a token against a tokenless cluster. Its own processes already have it.
        _set_env(_AUTH_ENV, self._saved_env[_AUTH_ENV])
        self.progress(f"ray: local cluster on 127.0.0.1, {local.num_cpus} CPUs,"
                      f" {local.object_store_gb:g} GiB object store")


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _ray_up() -> bool:
    """Whether this process's Ray still runs (another owner may have stopped it)."""
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()


# -- sizing -------------------------------------------------------------------------------------


def actor_cpus(envelope: RayEnvelope) -> float:
    """CPUs each actor asks for: one, unless the pool would leave no room for one write
    task (a pool holding every CPU deadlocks the stream); then an equal share of the rest."""
    pool = envelope.actor_pool_size()
    return max(0.1, min(1.0, (envelope.num_cpus - WRITE_TASK_CPUS) / pool))


def write_concurrency(envelope: RayEnvelope) -> int:
    """Write tasks run at once: at most one per CPU. Half-CPU tasks would let twice as many
    run once the actors finish, each in a fresh worker process that first spends ~3 CPU-s
    importing Ray Data, for a tail that one writer per CPU already keeps every core busy in."""
    return max(1, envelope.num_cpus)


def idle_workers(envelope: RayEnvelope) -> int:
    """Worker processes the local raylet keeps alive when idle. Ray's default (one per CPU)
    is fewer than one day's plan uses at once (actors, writers at half a CPU, reads at none),
    so each day's last tasks waited seconds for fresh processes to boot while others idled."""
    return 2 * envelope.num_cpus + 4


# -- addresses ----------------------------------------------------------------------------------


def redact_address(address: str) -> str:
    """The address without any `user:password@` in it, fit for logs and errors."""
    return re.sub(r"^((?:[a-z][a-z0-9+.-]*://)?)[^/@]*@", r"\1***@", address, flags=re.I)


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail in seconds when the Ray address answers nothing: `ray.init` would retry for minutes."""
    if not address or address in ("auto", "local"):
        return
    shown = redact_address(address)
    host, sep, port = address.split("://", 1)[-1].rsplit("@", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DaedalusError(f"ray address: {shown!r} is not host:port (fix: pass --ray-address"
                            " like 127.0.0.1:6379 or ray://host:10001, or drop it for a local"
                            " cluster)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DaedalusError(f"ray address: nothing answers at {shown} ({exc.strerror or exc})"
                            " (fix: start the cluster with `ray start --head`, correct"
                            " --ray-address / RAY_ADDRESS / ray.address, or drop it for a local"
                            " cluster)") from None


def is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit("@", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


# -- where Ray's public API stops ---------------------------------------------------------------
# Each helper below reaches past `ray.init`'s arguments for one thing it has no argument for;
# tests/test_ray_cluster.py and tests/test_enrich_ray_head.py fail when Ray's behaviour moves.


def _loopback_only(on: bool, original: str | None) -> None:
    """Keep Ray's servers on 127.0.0.1 for a cluster on this machine (`original`: the value
    to put back when off).

    `ray.init(_node_ip_address="127.0.0.1")` still binds Ray's gRPC servers to every
    interface; Ray's local-only switch keeps the node, and every server, on the loopback.
    Child processes read it from the environment, this process from Ray's constants.
    """
    if on:
        os.environ[_LOOPBACK_ENV] = "0"
    elif original is None:
        os.environ.pop(_LOOPBACK_ENV, None)
    else:
        os.environ[_LOOPBACK_ENV] = original
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(
            _LOOPBACK_ENV, not ray_constants.IS_WINDOWS_OR_OSX)


def cluster_wants_token(address: str, timeout: float = 5.0) -> bool | None:
    """Whether the cluster at `address` uses Ray token auth (None: it does not say).

    A mismatch fails late and obscurely: a driver with a token whose cluster has none refuses
    the cluster's calls to it, so the GCS takes the driver for dead and cancels every actor it
    owns ("all references to the actor were removed"). Ray has no call that asks a cluster
    its mode, so ask its GCS: it refuses a tokenless call only when tokens are on.
    """
    if address in ("auto", "local") or "://" in address:
        return None
    import grpc

    target = address.rsplit("@", 1)[-1].rstrip("/")
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")(b"", timeout=timeout)
        except grpc.RpcError as exc:
            return True if exc.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return False


def _set_auth_mode(mode: str | None) -> None:
    """Set this process's Ray auth mode (None: Ray's default). Ray's own local `ray.init()`
    sets RAY_AUTH_MODE=token for the whole process, so a later connection must set it back."""
    if mode is None:
        os.environ.pop(_AUTH_ENV, None)
    else:
        os.environ[_AUTH_ENV] = mode
    if "ray" in sys.modules:
        _reload_auth_mode()


def _reload_auth_mode() -> None:
    """Make Ray re-read RAY_AUTH_MODE, its token cache included: a token cached by an
    earlier local cluster keeps the mode on otherwise."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _fit_to_cluster(envelope: RayEnvelope) -> RayEnvelope:
    """The envelope as far as the connected cluster can hold it (CPUs are what actors need)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    if cpus >= envelope.num_cpus:
        return envelope
    note = f"ray num_cpus {envelope.num_cpus} is more than the cluster's {cpus}; using {cpus}"
    return replace(envelope, num_cpus=cpus,
                   system_reserved_cpus=min(envelope.system_reserved_cpus, max(0, cpus - 1)),
                   notes=(*envelope.notes, note))


def _start_box():
    """The runtime's PreloadBox: no CPU, a thread per waiting actor. Started with Ray, whose
    start leaves a core idle, even for runs without preload: started by a day's first preload
    instead, its boot competes with it (the cold bench day took ~2 s longer)."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=1000, max_restarts=0)(PreloadBox).remote()


def _warm_writers(envelope: RayEnvelope) -> None:
    """Have the worker processes that will run the first write tasks import what they need
    now, while the driver preloads the day, rather than after the first batch (seconds on
    2 CPUs). Fire and forget: nothing waits for these tasks."""
    import ray

    from daedalus.enrich.io import import_writer

    writers = int((envelope.num_cpus - actor_cpus(envelope) * envelope.actor_pool_size())
                  // WRITE_TASK_CPUS)
    task = ray.remote(num_cpus=WRITE_TASK_CPUS, max_retries=0)(import_writer)
    for _ in range(max(1, writers)):
        task.remote()


def _warm_ray_data() -> None:
    """Start Ray Data's own per-cluster actors (stats, autoscaling coordinator, actor
    location tracker) now, while the driver preloads the day: a process's first day
    otherwise waits for three fresh processes to boot and import Ray Data, beside the
    actor pool's, on the same CPUs. These helpers are Ray Data internals: if an upgrade
    moves them, the first day just starts slower."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.execution.node_trackers.actor_location import (
            get_or_create_actor_location_tracker,
        )
        from ray.data._internal.stats import get_or_create_stats_actor
    except ImportError:
        return
    for create in (get_or_create_stats_actor, get_or_create_autoscaling_coordinator,
                   get_or_create_actor_location_tracker):
        with contextlib.suppress(Exception):
            create()


@contextlib.contextmanager
def _no_fork_warning() -> Iterator[None]:
    """Ray starts its processes by fork+exec, which Lance's at-fork hook warns about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        yield

