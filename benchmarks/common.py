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


# Model sizes the benchmarks time: PTB's (the paper's decoder), the small study's, and a
# rehearsal's (hardware_report.py --smoke: every stage runs, no figure is a measurement).
MODEL_SIZES = {
    "ptb": {"embed_dim": 256, "hidden_dim": 256, "latent_dim": 32, "vocab_size": 10002},
    "study": {"embed_dim": 128, "hidden_dim": 128, "latent_dim": 16, "vocab_size": 10002},
    "tiny": {"embed_dim": 32, "hidden_dim": 32, "latent_dim": 8, "vocab_size": 500},
}


def sized_config(size: str):
  """srlm's default Config with the model of MODEL_SIZES[size]; and its vocabulary size."""
  from srlm import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.Config()
  fields = MODEL_SIZES[size]
  for name in ("embed_dim", "hidden_dim", "latent_dim"):
    setattr(config.model, name, fields[name])
  return config, fields["vocab_size"]


def time_calls(fn: Callable[[], Any], repeats: int,
               max_seconds: float = 0.0) -> dict[str, float]:
  """Compile time (first call) and the median / min of `repeats` later calls, in seconds;
  with max_seconds, fewer once the later calls have taken that long (at least 3)."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - start
  times = []
  while len(times) < repeats and not (max_seconds and len(times) >= 3
                                      and sum(times) >= max_seconds):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return {"compile_and_first_call_s": compile_s, "median_s": statistics.median(times),
          "min_s": min(times), "repeats": len(times)}


def isolated_step_seconds(config, corpus, repeats: int) -> dict[int, dict[str, float]]:
  """Each bucket's jitted train step on a fixed batch of that bucket (the first batch_size
  training sentences that fit it): time_calls' compile and median, by length."""
  from srlm import methods  # pylint: disable=import-outside-toplevel
  from srlm import state as state_lib  # pylint: disable=import-outside-toplevel
  from srlm import train  # pylint: disable=import-outside-toplevel
  from srlm.data import pipeline  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  method = methods.get(config, len(corpus.vocab))
  state = state_lib.create_train_state(method, config.train, jax.random.key(0))
  step = train.make_train_step(method, donate=False)
  split = corpus.splits["train"]
  timings = {}
  for length in config.data.buckets:
    sentences = [s for s in split.sentences if len(s) + 2 <= length][:config.data.batch_size]
    batch = {**pipeline.make_batch(sentences, length, config.data.batch_size),
             "epoch": np.int32(0)}
    timings[length] = time_calls(lambda: step(state, batch, jax.random.key(1)), repeats)
  return timings


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


def output_layer_floor(gemm: dict[str, Any], products: int = OUTPUT_LAYER_PRODUCTS,
                       rate: str = "gemm_gflops") -> dict[str, float]:
  """The output-layer floor of an SRI step: `products` output-layer products at the rate
  gemm_rate measured at that shape ((B (T - 1) x H) @ (H x V)), its best by default (`rate`
  names another of its rates); seconds."""
  rows, inner, cols = gemm["gemm_shape"]
  gflop = 2 * rows * inner * cols * products / 1e9
  return {"floor_s": gflop / gemm[rate], "floor_products": products,
          "floor_gflops": gemm[rate]}


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


def traced(fn: Callable[..., Any], *args: Any):
  """fn(*args)'s jaxpr after dead-code elimination, for matmul_flops and scan_iterations."""
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  # What XLA would remove first: products whose results are never used (a custom VJP's weight
  # gradient inside a chain that differentiates with respect to z only).
  from jax._src.interpreters import partial_eval  # pylint: disable=import-outside-toplevel
  jaxpr, _ = partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
  return jaxpr


def matmul_flops(jaxpr) -> int:
  """The floating-point operations of every matrix product a traced function performs: each
  dot_general is 2 x (its output's elements) x (its contracted size), a scan's body counts
  `length` times, a cond its costliest branch. XLA's own cost analysis cannot be used: it
  counts a loop's body once (srlm's step is a scan of K chain steps of a scan over T)."""
  import math  # pylint: disable=import-outside-toplevel

  def product_flops(eqn) -> int:
    if eqn.primitive.name != "dot_general":
      return 0
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch)]
    return 2 * math.prod(lhs) * math.prod(rhs_free)

  return _jaxpr_total(jaxpr, product_flops, lambda length, body: length * body)


def scan_iterations(jaxpr) -> int:
  """How many loop iterations a traced function runs one after another: a scan's body counts
  `length` times (once per iteration, or its nested scans' iterations), a cond its longest
  branch. Each iteration of srlm's scans is an LSTM cell step (forward or backward) or a
  chain step that holds them, and each waits for the one before: their count times one cell
  step's time (lstm_cell_seconds) is a floor on the step that faster arithmetic does not
  lower (train_step.py's latency floor)."""
  return _jaxpr_total(jaxpr, lambda eqn: 0, lambda length, body: length * max(body, 1))


def _jaxpr_total(jaxpr, eqn_value, scan_value) -> int:
  """The sum over a jaxpr's equations of eqn_value(eqn) and of what their inner jaxprs hold:
  a scan's body's total as scan_value(length, total), a cond's costliest branch, any other
  inner jaxpr (pjit, custom VJP, ...) once."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "while":
      raise ValueError("a while loop's trip count is unknown to the jaxpr")
    if name == "cond":
      total += max(_jaxpr_total(b.jaxpr, eqn_value, scan_value)
                   for b in eqn.params["branches"])
      continue
    inner = sum(_jaxpr_total(getattr(p, "jaxpr", p), eqn_value, scan_value)
                for p in eqn.params.values()
                if isinstance(p, (jax_core.Jaxpr, jax_core.ClosedJaxpr)))
    total += eqn_value(eqn) + (scan_value(eqn.params["length"], inner) if name == "scan"
                               else inner)
  return total


def lstm_cell_seconds(batch_size: int = 32, hidden: int = 256, cells: int = 200,
                      repeats: int = 5) -> dict[str, float]:
  """One LSTM cell step's time when each waits for the one before (srlm's cell, in a rolled
  lax.scan of `cells` steps at B x H; median of `repeats` scans, divided by `cells`). On an
  accelerator this is latency (kernel launches, the loop's bookkeeping), not arithmetic."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from srlm import models  # pylint: disable=import-outside-toplevel

  def run(w_h, gates_in, h0):
    def step(carry, _):
      return models.lstm_cell(*carry, gates_in, w_h), None
    (h, _), _ = jax.lax.scan(step, (h0, jnp.zeros_like(h0)), None, length=cells)
    return h

  keys = jax.random.split(jax.random.key(0), 3)
  w_h = 0.1 * jax.random.normal(keys[0], (hidden, 4 * hidden))
  gates_in = jax.random.normal(keys[1], (batch_size, 4 * hidden))
  h0 = jax.random.normal(keys[2], (batch_size, hidden))
  run = jax.jit(run)
  timing = time_calls(lambda: run(w_h, gates_in, h0), repeats)
  return {"lstm_cell_s": timing["median_s"] / cells, "lstm_cell_shape": [batch_size, hidden]}
