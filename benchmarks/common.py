"""Helpers shared by the benchmark scripts: timing, memory, hardware, results files."""

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from typing import Any, Callable

import jax
from jax.extend import core as jax_core

from srlm import reporting

# $SRLM_RESULTS_DIR puts a run's results elsewhere (benchmarks/gpu_check.sh's $OUT, a rehearsal).
RESULTS_DIR = os.environ.get("SRLM_RESULTS_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results")


def time_calls(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
  """Compile time (first call) and the median / min of `repeats` later calls, in seconds."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return {"compile_and_first_call_s": compile_s, "median_s": statistics.median(times),
          "min_s": min(times), "repeats": repeats}


def peak_memory_mb() -> dict[str, float]:
  """Peak host RSS of this process; on GPU/TPU also the device's peak bytes in use."""
  out = {"peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
  return out


def hardware() -> dict[str, Any]:
  device = jax.devices()[0]
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "num_devices": jax.device_count(), "cpu": cpu, "cpu_count": os.cpu_count(),
          "jax": jax.__version__}


def run_srlm(args: list[str], log_path: str) -> float:
  """Runs python -m srlm.main with args, its output appended to log_path; returns seconds.
  A failure stops the calling script with the command and the log named."""
  import sys  # pylint: disable=import-outside-toplevel
  start = time.time()
  with open(log_path, "a") as log:
    log.write(f"$ python -m srlm.main {' '.join(args)}\n")
    log.flush()
    process = subprocess.run([sys.executable, "-m", "srlm.main", *args], stdout=log,
                             stderr=subprocess.STDOUT, check=False)
  if process.returncode:
    raise SystemExit(f"python -m srlm.main {' '.join(args)} failed (exit "
                     f"{process.returncode}); see {log_path}")
  return time.time() - start


def read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def write_result(name: str, result: dict[str, Any], directory: str = "") -> str:
  """Writes <directory, default RESULTS_DIR>/<name>_<backend>.json and returns its path."""
  directory = directory or RESULTS_DIR
  os.makedirs(directory, exist_ok=True)
  # srlm's own commit, or None where it runs from an archive (not an enclosing repository's).
  record = {"benchmark": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            **reporting.provenance(), "hardware": hardware(), **result}
  path = os.path.join(directory, f"{name}_{jax.default_backend()}.json")
  with open(path, "w") as f:
    json.dump(record, f, indent=2)
  return path


# The output layer's products in one SRI training step at B sentences of T tokens (T - 1
# predicted): per chain step the logits (B(T-1) x H) @ (H x V) and their gradient back to h,
# K = 20 times, plus the decoder update's logits and weight gradient. The rest of the step
# (LSTM recurrence, exponentials) comes on top, so this is a lower bound on the step.
OUTPUT_LAYER_PRODUCTS = 42


def float32_floor(batch_size: int, length: int, hidden: int = 256, vocab: int = 10002,
                  products: int = OUTPUT_LAYER_PRODUCTS, repeats: int = 5) -> dict[str, float]:
  """The float32 floor of an SRI step, measured here: `products` NumPy (BLAS) products of
  (batch_size (length - 1) x hidden) @ (hidden x vocab), median of `repeats`, in seconds."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  h = rng.standard_normal((batch_size * (length - 1), hidden), dtype=np.float32)
  w = rng.standard_normal((vocab, hidden), dtype=np.float32)
  np.dot(h, w.T)  # warm-up (threads, page faults)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(products):
      np.dot(h, w.T)
    times.append(time.perf_counter() - start)
  gflop = 2 * h.shape[0] * hidden * vocab * products / 1e9
  median = statistics.median(times)
  return {"floor_s": median, "floor_products": products, "floor_gflops": gflop / median}


def gemm_rate(rows: int, inner: int, cols: int, dtype: str = "float32",
              repeats: int = 5) -> dict[str, float]:
  """The best matrix-product rate this machine reaches at one shape, (rows x inner) @
  (inner x cols): XLA's (jit, on the default backend, inputs in dtype, f32 accumulation) and,
  for float32 on a CPU, NumPy's BLAS; GFLOP/s, median of `repeats`. The faster is the rate a
  floor assumes."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  a = rng.standard_normal((rows, inner), dtype=np.float32)
  b = rng.standard_normal((inner, cols), dtype=np.float32)
  gflop = 2 * rows * inner * cols / 1e9
  product = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  a_dev, b_dev = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
  rates = {"gemm_xla_gflops": gflop / time_calls(lambda: product(a_dev, b_dev),
                                                 repeats)["median_s"]}
  if dtype == "float32" and jax.default_backend() == "cpu":
    np.dot(a, b)  # warm-up (threads, page faults)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      np.dot(a, b)
      times.append(time.perf_counter() - start)
    rates["gemm_numpy_gflops"] = gflop / statistics.median(times)
  return {"gemm_shape": [rows, inner, cols], "gemm_dtype": dtype,
          "gemm_gflops": max(rates.values()), **rates}


def matmul_flops(fn: Callable[..., Any], *args: Any) -> int:
  """The floating-point operations of every matrix product fn(*args) performs, counted on its
  jaxpr after dead-code elimination: each dot_general is 2 x (its output's elements) x (its contracted size), a scan's body
  counts `length` times, a cond its costliest branch. XLA's own cost analysis cannot be used:
  it counts a loop's body once (srlm's step is a scan of K chain steps of a scan over T)."""
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  # What XLA would remove first: products whose results are never used (a custom VJP's weight
  # gradient inside a chain that differentiates with respect to z only).
  from jax._src.interpreters import partial_eval  # pylint: disable=import-outside-toplevel
  jaxpr, _ = partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
  return _jaxpr_matmul_flops(jaxpr)


def _jaxpr_matmul_flops(jaxpr) -> int:
  import math  # pylint: disable=import-outside-toplevel
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
      rhs_free = [d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch)]
      total += 2 * math.prod(lhs) * math.prod(rhs_free)
    elif name == "while":
      raise ValueError("matmul_flops: a while loop's trip count is unknown to the jaxpr")
    elif name == "cond":
      total += max(_jaxpr_matmul_flops(b.jaxpr) for b in eqn.params["branches"])
    else:
      inner = sum(_jaxpr_matmul_flops(getattr(p, "jaxpr", p)) for p in eqn.params.values()
                  if isinstance(p, (jax_core.Jaxpr, jax_core.ClosedJaxpr)))
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total
