"""Data parallelism over every device, on one host or several, with JAX's own runtime (jax.sharding, jax.distributed).

One `Mesh` with the axis "data" over all devices of all processes. The batch of a step is the *global* batch
(`plan.kinds.KIND.batch`), sharded along "data"; the train state is replicated. Each process cuts only its share of the
global batch (its rows of the "data" axis) from the one sample stream of the step, and the global array is built
with `jax.make_array_from_process_local_data`, so 1 device and N devices, 1 process and P processes, train on
exactly the same samples and keys. Only process 0 writes files.

Several hosts: `initialize(...)` calls `jax.distributed.initialize` before any computation, with the coordinator
address, process count and id given, or detected from SLURM, Open MPI or a TPU pod by JAX.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from heartjax.common.errors import HeartjaxError

AXIS = "data"
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               log: Callable = print) -> bool:
    """Start JAX's multi-process runtime when asked (arguments) or when a cluster launched several processes.

    Returns True when running multi-process. Must run before JAX's first computation.
    """
    detected = any(int(os.environ.get(v, "1") or 1) > 1 for v in _CLUSTER_ENV)
    if coordinator is None and num_processes is None and not detected:
        return False
    if (num_processes is None) != (process_id is None):
        raise HeartjaxError("--num-processes and --process-id go together (or neither, on SLURM / Open MPI / TPU pods)")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except Exception as e:  # the runtime's own errors: unreachable coordinator, bad ids, timeouts
        raise HeartjaxError(f"jax.distributed.initialize failed ({type(e).__name__}: {e}); check --coordinator "
                            f"(host:port of process 0), --num-processes and --process-id") from e
    log(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} devices")
    return jax.process_count() > 1


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """The mesh and the two shardings a run uses: `batch` (split along "data") and `replicated`."""

    mesh: Mesh

    @classmethod
    def create(cls, devices=None) -> "DataParallel":
        devices = list(jax.devices() if devices is None else devices)
        return cls(Mesh(np.array(devices), (AXIS,)))

    @property
    def size(self) -> int:
        return self.mesh.devices.size

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def primary(self) -> bool:
        """Whether this process writes files (process 0)."""
        return jax.process_index() == 0

    def check_batch(self, batch: int, setting: str) -> None:
        """A global batch must split evenly over the devices."""
        if batch % self.size:
            raise HeartjaxError(f"config setting {setting}={batch} is not divisible by the {self.size} devices of the "
                                f"mesh; use a multiple of {self.size} (it is the global batch of a step)")

    def share(self, batch: int) -> tuple[int, int]:
        """The rows [lo, hi) of a global batch that this process's devices hold."""
        rows = sorted(idx[0].indices(batch)[:2] for idx in self.batch.addressable_devices_indices_map((batch,)).values())
        lo, hi = rows[0][0], rows[-1][1]
        if sum(b - a for a, b in rows) != hi - lo:
            raise HeartjaxError("this process's devices do not hold contiguous rows of the batch; use jax.devices() "
                                "order (grouped by process) for the mesh")
        return lo, hi

    def place(self, local: np.ndarray, batch: int) -> jax.Array:
        """This process's rows of a global batch -> the global array, sharded along "data"."""
        if jax.process_count() == 1:
            return jax.device_put(local, self.batch)
        return jax.make_array_from_process_local_data(self.batch, local, (batch, *local.shape[1:]))

    def replicate(self, tree: Any) -> Any:
        """A pytree of arrays (typed PRNG keys included) placed on every device; each process passes the same."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)

        def put(x):
            if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
                impl = jax.random.key_impl(x)
                return jax.random.wrap_key_data(put(np.asarray(jax.random.key_data(x))), impl=impl)
            return jax.make_array_from_process_local_data(self.replicated, np.asarray(x))
        return jax.tree.map(put, tree)

    def spread(self, host: np.ndarray) -> jax.Array:
        """A host array (the same on every process) split along "data" over all devices."""
        if jax.process_count() == 1:
            return jax.device_put(host, self.batch)
        lo, hi = self.share(host.shape[0])
        return jax.make_array_from_process_local_data(self.batch, host[lo:hi], host.shape)

    def info(self, batch: int) -> dict:
        """What results.json records about where a model trained."""
        return {"mesh": {AXIS: self.size}, "global_batch": batch, "per_device_batch": batch // self.size,
                "processes": jax.process_count(), "platform": jax.devices()[0].platform,
                "device_kind": jax.devices()[0].device_kind}


class Feed:
    """This process's share of a sampler's global batches, placed as global arrays: the fit loop's sampler and
    its Prefetcher's `place`."""

    def __init__(self, sampler, parallel: DataParallel):
        self.sampler, self.parallel, self.size = sampler, parallel, sampler.batch_size
        self.part = parallel.share(self.size)

    def batch(self, step: int):
        return self.sampler.batch(step, self.part)

    def place(self, local: np.ndarray) -> jax.Array:
        return self.parallel.place(local, self.size)


def _gpu_present() -> bool:
    """Whether nvidia-smi lists a GPU on this machine."""
    if not shutil.which("nvidia-smi"):
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU" in out


def report_devices(log: Callable = print) -> None:
    """Print the devices a run trains on; warn loudly when a GPU is present but JAX runs on the CPU."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    log(f"JAX {jax.__version__} on {jax.default_backend()}: {len(devices)} device(s) ({', '.join(kinds)}) in "
        f"{jax.process_count()} process(es); mesh axis '{AXIS}' over all of them")
    if jax.default_backend() == "cpu" and _gpu_present():
        print("\n" + "!" * 100 + "\nWARNING: nvidia-smi finds a GPU, but JAX runs on the CPU: this environment has the "
              "CPU-only jaxlib.\nRun ./run.sh (it installs the CUDA build when nvidia-smi finds a card) or set "
              "HEARTJAX_ACCELERATOR=cuda12.\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)


def agree(value: int) -> int:
    """Process 0's value of an integer decision (e.g. the budget's plan), the same on every process."""
    if jax.process_count() == 1:
        return int(value)
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def sync(name: str) -> None:
    """A barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
