"""Which Daft runner this process uses: the native one on this machine, or Ray's on the
cluster the run is connected to.

Daft sets its runner once per process and refuses to change it, so both stages ask here
(`use_daft_runner`) before their first Daft query: the first ask sets it, a later one that
wants the other runner fails in one line instead of running somewhere the user did not ask.
For Ray's runner, Ray is already up: the run's `RayRuntime` connects to the cluster (token
auth, loopback and worker environment handled there) and Daft uses that connection.
"""

from __future__ import annotations

from daedalus.core.errors import DaedalusError


def use_daft_runner(on_ray: bool) -> str:
    """Set (or check) this process's Daft runner: "ray" (Ray must be initialized) or "native"."""
    import daft
    from daft.daft import get_runner

    want = "ray" if on_ray else "native"
    runner = get_runner()
    if runner is None:
        if on_ray:
            daft.set_runner_ray(noop_if_initialized=True)
        else:
            daft.set_runner_native()
        return want
    have = getattr(runner, "name", want)
    if have != want:
        raise DaedalusError(f"compute.engine daft: this process already runs Daft on its {have}"
                            f" runner and Daft cannot switch to {want} (fix: run"
                            f" {'with' if on_ray else 'without'} --ray-address in a new process)")
    return want


def daft_nodes() -> int:
    """The nodes Daft's work spreads over: the Ray cluster's alive nodes with CPUs, else 1."""
    from daft.daft import get_runner

    runner = get_runner()
    if runner is None or getattr(runner, "name", "native") != "ray":
        return 1
    import ray

    return max(1, sum(1 for n in ray.nodes()
                      if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0))
