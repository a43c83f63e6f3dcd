"""Data parallelism on JAX's own runtime (SRI_SPEC's scale-out): a mesh with one axis, "data".

Parameters and optimiser states are replicated; every batch is sharded by rows, so each
device runs the short-run chains (and their keys' share of the random numbers) of its own
sentences, and jit's SPMD partitioner adds the gradient all-reduce. With JAX's partitionable
Threefry (the default), the random numbers of a sharded step are the ones a single device
draws, so the result does not depend on the number of devices (up to float summation order).

Multi-host: every process runs the same program (`jax.distributed.initialize()` in
`srlm.main` when asked); process p builds only its rows of each global batch
(`jax.make_array_from_process_local_data`). Only process 0 writes files and logs at INFO.
"""

import os
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from srlm.data import pipeline
from srlm.errors import ConfigError

DATA_AXIS = "data"
# Set by the launchers in launch/ (or pass --distributed to srlm.main).
DISTRIBUTED_ENV = "SRLM_DISTRIBUTED"


def distributed_requested(flag: bool) -> bool:
  return flag or os.environ.get(DISTRIBUTED_ENV, "") not in ("", "0")


def initialize_distributed() -> None:
  """jax.distributed.initialize(), which reads the cluster from the environment (TPU pods,
  SLURM, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID). CPU processes
  exchange collectives over gloo."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = {"coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"],
              "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
              "process_id": int(os.environ["JAX_PROCESS_ID"])}
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def is_writer() -> bool:
  """Whether this process writes files (metrics, checkpoints' side files, results)."""
  return jax.process_index() == 0


def load_corpus(config) -> pipeline.Corpus:
  """pipeline.load_corpus, with process 0 preparing the TFDS data first and the others
  reading it after a barrier (several processes preparing one directory would collide)."""
  if jax.process_count() == 1:
    return pipeline.load_corpus(config)
  corpus = pipeline.load_corpus(config) if is_writer() else None
  multihost_utils.sync_global_devices("srlm: corpus prepared")
  return corpus or pipeline.load_corpus(config)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over the first num_devices devices (0: all devices of all processes)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices) or (jax.process_count() > 1 and num_devices != len(devices)):
      raise ConfigError(f"--config.parallel.num_devices={num_devices}: asks for more than "
                        f"or part of the {len(devices)} devices of this run's "
                        f"{jax.process_count()} process(es); use 0 (all) or, in a single "
                        "process, a number up to that.")
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def rows(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Arrays whose first axis is the batch, split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, flag: str) -> None:
  if batch_size % mesh.size:
    raise ConfigError(f"--config.{flag}={batch_size} must be a multiple of the number of "
                      f"devices ({mesh.size}), which share each batch's sentences.")


def jit_replicated(fn: Callable, mesh: jax.sharding.Mesh | None) -> Callable:
  """jax.jit with every output replicated on the mesh: parameters stay replicated, and each
  process can read per-sentence results without a gather. Without a mesh, plain jax.jit."""
  if mesh is None:
    return jax.jit(fn)
  return jax.jit(fn, out_shardings=replicated(mesh))


def global_batch(sentences: Sequence[np.ndarray], length: int, batch_size: int,
                 mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """The batch of `sentences` (padded to batch_size rows of `length` ids) as arrays sharded
  by rows over the mesh. This process builds only its own rows."""
  num_processes, index = jax.process_count(), jax.process_index()
  local_size = batch_size // num_processes
  local = pipeline.make_batch(sentences[index * local_size:(index + 1) * local_size], length,
                              local_size)
  sharding = rows(mesh)
  return {name: jax.make_array_from_process_local_data(
      sharding, value, (batch_size, *value.shape[1:])) for name, value in local.items()}


def batches(split: pipeline.Split, plan: pipeline.BatchPlan, batch_size: int,
            mesh: jax.sharding.Mesh, start: int = 0) -> Iterator[dict[str, jax.Array]]:
  """The batches of `plan` from position `start` on, sharded by rows (see global_batch)."""
  for i in range(start, len(plan)):
    yield global_batch([split.sentences[j] for j in plan.indices[i]], plan.lengths[i],
                       batch_size, mesh)


def to_host(tree: Any) -> Any:
  """Device arrays as numpy on every process (a gather across processes if needed)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
