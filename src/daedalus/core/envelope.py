"""`RayEnvelope`: the CPU and memory budget the pythonic operators run in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from daedalus.core.config import RaySettings
from daedalus.core.errors import DaedalusError


@dataclass(frozen=True)
class RayEnvelope:
    """The resource budget of the pythonic operators (16 CPUs / 64 GiB by default)."""

    num_cpus: int = 16
    memory_gb: float = 64
    object_store_gb: float = 20
    system_reserved_cpus: int = 1
    system_reserved_memory_gb: float = 4
    num_workers: int | None = None
    preload_day_embeddings: bool = True
    address: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_settings(cls, settings: RaySettings, **overrides) -> RayEnvelope:
        values = settings.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["num_cpus"] <= 0:
            raise DaedalusError(f"--ray-num-cpus: {values['num_cpus']} is not a positive CPU count"
                                " (fix: pass 1 or more)")
        if values.get("num_workers") is not None and values["num_workers"] <= 0:
            raise DaedalusError(f"--num-workers: {values['num_workers']} is not a positive actor"
                                " count (fix: pass 1 or more, or leave it out to size the pool)")
        return cls(**values)

    @property
    def worker_cpu_budget(self) -> int:
        return max(1, self.num_cpus - self.system_reserved_cpus)

    def actor_pool_size(self) -> int:
        """~80% of the worker CPUs, so Ray Data read/write tasks are never starved."""
        size = self.num_workers or max(1, int(self.worker_cpu_budget * 0.8))
        return max(1, min(size, self.worker_cpu_budget))

    def clamped_to_machine(self) -> RayEnvelope:
        """A local cluster cannot exceed the host: clamp CPUs and memory, saying so."""
        if self.address:
            return self
        notes = list(self.notes)
        cpus = os.cpu_count() or 1
        num_cpus = self.num_cpus
        if num_cpus > cpus:
            notes.append(f"ray num_cpus {num_cpus} clamped to this machine's {cpus}")
            num_cpus = cpus
        total_gb = _host_memory_gb()
        memory_gb = self.memory_gb
        if memory_gb > total_gb * 0.8:
            memory_gb = round(total_gb * 0.8, 1)
            notes.append(f"ray memory {self.memory_gb} GiB (runtime.yaml ray.memory_gb) is more than"
                         f" this machine's 80%: using {memory_gb} GiB")
        object_store_gb = min(self.object_store_gb, memory_gb * 0.3, _shm_gb() * 0.8)
        if object_store_gb < self.object_store_gb:
            object_store_gb = round(object_store_gb, 1)
            notes.append(f"ray object store {self.object_store_gb} GiB (ray.object_store_gb) is more"
                         f" than 30% of Ray's memory or 80% of /dev/shm: using {object_store_gb} GiB")
        return replace(self, num_cpus=num_cpus, memory_gb=memory_gb, object_store_gb=object_store_gb,
                       system_reserved_cpus=min(self.system_reserved_cpus, max(0, num_cpus - 1)),
                       notes=tuple(notes))


def _host_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _shm_gb() -> float:
    try:
        st = os.statvfs("/dev/shm")
        return st.f_bsize * st.f_blocks / 2**30
    except OSError:
        return _host_memory_gb() * 0.3
