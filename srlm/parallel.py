"""Data parallelism on JAX's own runtime: a mesh with one axis, "data".

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
import time
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from srlm import journal as journal_lib
from srlm import reporting
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
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise ConfigError(
        f"--distributed (or {DISTRIBUTED_ENV}=1): no cluster to join ({first_line}). Run under "
        "SLURM or on a TPU VM, or set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and "
        "JAX_PROCESS_ID for every process; for one process, leave the flag off.") from None
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def load_corpus(config) -> pipeline.Corpus:
  """pipeline.load_corpus, with process 0 preparing the TFDS data first and the others
  reading it after a barrier (several processes preparing one directory would collide)."""
  if jax.process_count() == 1:
    return pipeline.load_corpus(config)
  corpus = pipeline.load_corpus(config) if reporting.is_writer() else None
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


def jit_replicated(fn: Callable, mesh: jax.sharding.Mesh | None,
                   donate_argnames: str | tuple[str, ...] = ()) -> Callable:
  """jax.jit with every output replicated on the mesh: parameters stay replicated, and each
  process can read per-sentence results without a gather. Without a mesh, plain jax.jit.
  donate_argnames: arguments whose buffers the outputs may reuse (the train state: parameters
  and Adam moments are then not held twice); the caller must not use them after the call."""
  if mesh is None:
    return jax.jit(fn, donate_argnames=donate_argnames)
  return jax.jit(fn, out_shardings=replicated(mesh), donate_argnames=donate_argnames)


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


def random_batches(split: pipeline.Split, buckets: Sequence[int], batch_size: int,
                   mesh: jax.sharding.Mesh, entropy: Sequence[int]
                   ) -> Iterator[dict[str, jax.Array]]:
  """An endless stream of batches of `split`'s bucketed batch plan, each drawn uniformly with
  replacement by np.random.default_rng(entropy): the same entropy gives the same batches (a
  resumed run repeats them). Sharded by rows (see global_batch)."""
  plan = pipeline.plan_batches(split, buckets, batch_size)
  choice = np.random.default_rng(list(entropy))
  while True:
    index = int(choice.integers(len(plan)))
    yield global_batch([split.sentences[j] for j in plan.indices[index]], plan.lengths[index],
                       batch_size, mesh)


def map_split(fn: Callable[[dict[str, jax.Array], jax.Array], Any], split: pipeline.Split,
              buckets: Sequence[int], batch_size: int, mesh: jax.sharding.Mesh,
              rng: jax.Array, label: str = "", status: Callable[[], str] | None = None,
              journal: journal_lib.Journal | None = None, journal_prefix: str = ""
              ) -> Iterator[tuple[np.ndarray, Any]]:
  """Runs fn(batch, key) over a whole split, batch by batch in bucket order.

  Batch i gets key fold_in(rng, i); batch_size must divide among the mesh's devices
  (`check_batch_size`, which callers run before any expensive work). Yields (the batch's
  sentence indices into the split, fn's output on the host with the padding rows dropped):
  every leaf of the output must have the batch as its first axis. With a label, logs
  progress with an ETA every 10 batches (and `status()`, the caller's running summary).
  With a journal (srlm.journal.Journal; fn's output then a dict of arrays), the batches it
  holds are not run again: their journaled outputs are yielded, and each batch run is
  journaled as it finishes, as journal_prefix + its index (a journal may hold several passes).
  The ETA is for what is left: reused batches count as done.
  """
  plan = pipeline.plan_batches(split, buckets, batch_size)
  done, computed, start = 0, 0, time.time()  # sentences yielded; of them, computed here
  for i in range(len(plan)):
    indices = np.asarray(plan.indices[i])

    def run(i=i, indices=indices):
      batch = global_batch([split.sentences[j] for j in indices], plan.lengths[i], batch_size,
                           mesh)
      # A batch's sentences fill its first rows; the rest is padding.
      return jax.tree.map(lambda x: x[:len(indices)],
                          to_host(fn(batch, jax.random.fold_in(rng, i))))

    out, ran = journal_lib.reuse_or_run(journal, f"{journal_prefix}{i}", run)
    computed += len(indices) if ran else 0
    yield indices, out
    done += len(indices)
    if label and (i == 0 or (i + 1) % 10 == 0 or i + 1 == len(plan)):
      elapsed = time.time() - start
      eta = (reporting.format_seconds(elapsed / computed * (len(split) - done)) if computed
             else "after the first batch run")
      logging.info("%s: %d/%d sentences%s | ETA %s", label, done, len(split),
                   f", {status()}" if status else "", eta)


def to_host(tree: Any) -> Any:
  """Device arrays as numpy on every process. A replicated array is read from this process's
  own copy; only a sharded one is gathered across processes. That keeps the train loop's
  metric fetches free of collectives: on CPU (Gloo) a collective dispatched while a train step
  is in flight can interleave with the step's gradient all-reduce in a different order on each
  process, and the job aborts ("collective mismatch")."""
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def fetch(x: Any) -> Any:
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return jax.device_get(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return multihost_utils.process_allgather(x, tiled=True)

  return jax.tree.map(fetch, tree)
