"""How srlm uses its backend, whatever the method: the matmul precision policy, the
deterministic mode and the persistent compilation cache. These change how numbers are
computed (and how fast), never which numbers a method defines.

**Precision policy.** On GPUs and TPUs JAX's DEFAULT float32 matmul runs at reduced precision
(TF32 on an H200: inputs rounded to 10 mantissa bits, twice as fast as HIGHEST; bf16 passes on
a TPU). On the CPU DEFAULT is full float32. srlm's evaluation must not depend on the backend:
the exact log-det NLL, AIS and BDMC, the LM's exact NLL and the analyses run their matmuls at
`--config.eval.matmul_precision` ("highest", full float32 on every backend). Training runs at
`--config.train.matmul_precision` ("default": the backend's fast path, as srlm always trained;
"highest" one flag away), and so does the per-epoch validation, which is part of training.
Results JSON record the precision their numbers were computed at (`matmul_precision`).

JAX reads the precision when it traces a function, so the contexts below must be entered before
the first call of a jitted function (the mode entry points do it). `imitate_tf32` rounds every
float32 matmul's inputs to TF32 where the precision in force lets an accelerator do so: what a
GPU's DEFAULT would do to a figure, measured on any backend (benchmarks/precision.py).

**Deterministic mode** (`--config.train.deterministic`): XLA's GPU reductions (scatter-adds,
the atomics of some reductions) may sum in a different order from run to run, so a resumed run
is not bitwise the uninterrupted one there. The mode asks XLA for deterministic ops; it must be
set before JAX starts its backend, which `srlm.cli` does from the run's config. The CPU is
deterministic either way.

**Compilation cache.** Compiling the five PTB buckets takes about 50 s on a GPU in every new
process; JAX's persistent cache keeps the compiled programs on disk, so a resumed or repeated
job compiles nothing it compiled before (`--compilation_cache`, see `enable_compilation_cache`).
"""

import contextlib
import functools
import os
from typing import Iterator

from absl import logging
import jax
from jax import monitoring

from srlm.errors import ConfigError


def matmul_precision(precision: str) -> contextlib.AbstractContextManager:
  """The context in which functions traced (jitted) inside it multiply at `precision`."""
  return jax.default_matmul_precision(precision)


def evaluation_precision(config) -> contextlib.AbstractContextManager:
  return matmul_precision(config.eval.matmul_precision)


def _at_precision(precision_of):
  def decorate(fn):
    @functools.wraps(fn)
    def wrapped(config, *args, **kwargs):
      with matmul_precision(precision_of(config)):
        return fn(config, *args, **kwargs)
    return wrapped
  return decorate


# Decorators of entry points fn(config, ...): fn runs at the config's training or evaluation
# precision, whoever calls it (the command line or Python).
at_training_precision = _at_precision(lambda config: config.train.matmul_precision)
at_evaluation_precision = _at_precision(lambda config: config.eval.matmul_precision)


def precision_in_force() -> str:
  """The float32 matmul precision that functions traced now get ("default" when unset)."""
  return str(jax.config.jax_default_matmul_precision or "default")


# The precisions at which an accelerator may round float32 matmul inputs to TF32.
_REDUCIBLE = (None, "default", "tensorfloat32", "bfloat16", "fastest")


@contextlib.contextmanager
def imitate_tf32() -> Iterator[None]:
  """Inside it, every float32 matmul traced at a reducible precision (DEFAULT, unset) has its
  inputs rounded to TF32 (8 exponent, 10 mantissa bits) before a float32 product: an
  accelerator's DEFAULT float32 matmul, imitated on any backend. HIGH and HIGHEST products are
  left alone. Caches are cleared on entry and exit, so nothing traced outside is reused inside
  and the reverse. A diagnostic (benchmarks/precision.py, tests/precision_test.py); it patches
  jax's internal dot_general, through which jnp.matmul, `@` and their gradients pass."""
  from jax._src.lax import lax as lax_internal  # pylint: disable=import-outside-toplevel
  original = lax_internal.dot_general

  def dot_general(lhs, rhs, dimension_numbers, precision=None, *args, **kwargs):
    effective = precision if precision is not None else jax.config.jax_default_matmul_precision
    if (isinstance(effective, str) or effective is None) and effective in _REDUCIBLE:
      lhs, rhs = (_round_to_tf32(x) if getattr(x, "dtype", None) == jax.numpy.float32 else x
                  for x in (lhs, rhs))
    return original(lhs, rhs, dimension_numbers, precision, *args, **kwargs)

  jax.clear_caches()
  lax_internal.dot_general = dot_general
  try:
    yield
  finally:
    lax_internal.dot_general = original
    jax.clear_caches()


def _round_to_tf32(x: jax.Array) -> jax.Array:
  """x with TF32's 10 mantissa bits, as a tensor core reads a product's input; derivatives
  pass through unrounded (the hardware rounds the backward products' inputs, which the patched
  dot_general does, not the gradient itself). x + (r - x) is exactly r: r - x is exact."""
  rounded = jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=10)
  return x + jax.lax.stop_gradient(rounded - x)


# --- deterministic mode --------------------------------------------------------------------------

# The flag JAX documents for run-to-run determinism on GPUs (deterministic reductions and
# scatter-adds, no autotuning among nondeterministic kernels). jax-ml/jax#27796 reports it
# breaking an `.at[].set` on jax 0.5.3: tests/runtime_test.py checks that a step under it
# equals the plain step within float tolerance, so a GPU run of the suite would show such a bug.
DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true",)


def _backend_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  return xla_bridge.backends_are_initialized()


def set_deterministic(deterministic: bool) -> None:
  """Adds XLA's deterministic-ops flags to XLA_FLAGS (deterministic) before the backend starts.
  Raises ConfigError if the backend has already started without them (too late to apply)."""
  if not deterministic:
    return
  current = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in DETERMINISTIC_XLA_FLAGS if f.split("=")[0] not in current]
  if not missing:
    return
  if _backend_started():
    raise ConfigError("--config.train.deterministic: JAX's backend has already started in this "
                      "process, so XLA's flags can no longer change; set it before any JAX "
                      "computation (srlm.main does), or set XLA_FLAGS="
                      f"\"{' '.join(DETERMINISTIC_XLA_FLAGS)}\" before starting Python.")
  os.environ["XLA_FLAGS"] = " ".join([current, *missing]).strip()
  logging.info("Deterministic mode: XLA_FLAGS=%s", os.environ["XLA_FLAGS"])


def deterministic_in_force() -> bool:
  flags_set = os.environ.get("XLA_FLAGS", "")
  return all(f in flags_set for f in DETERMINISTIC_XLA_FLAGS)


# --- the persistent compilation cache ------------------------------------------------------------

DEFAULT_CACHE = "default"
CACHE_OFF = "off"
_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits",
                 "/jax/compilation_cache/cache_misses": "misses"}
_cache_counts = {"hits": 0, "misses": 0}
_listening = False


def default_cache_dir() -> str:
  """$SRLM_CACHE_DIR, else JAX's own $JAX_COMPILATION_CACHE_DIR, else
  $XDG_CACHE_HOME/srlm/xla, else ~/.cache/srlm/xla."""
  for variable in ("SRLM_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR"):
    if os.environ.get(variable):
      return os.environ[variable]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "srlm", "xla")


def _count(event: str, **kwargs) -> None:
  del kwargs
  if event in _CACHE_EVENTS:
    _cache_counts[_CACHE_EVENTS[event]] += 1


def enable_compilation_cache(setting: str = DEFAULT_CACHE) -> str | None:
  """Turns JAX's persistent compilation cache on in the directory `setting` ("default":
  default_cache_dir(); "off": leaves it off). Every compiled program is cached, however quick
  to compile (a PTB bucket's step is seconds on a GPU, many small ones add up). Returns the
  directory, or None when off (also in CPU jobs of several processes, where cached programs
  hang). Cache hits and misses are counted (cache_counts). Call it after
  parallel.initialize_distributed, before the first compilation."""
  global _listening
  if setting == CACHE_OFF:
    # Off also when $JAX_COMPILATION_CACHE_DIR is set: JAX itself would use that.
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    # Measured with JAX 0.12.1: a multi-process CPU job whose programs come from the cache
    # hangs in its first collective (the train step's gradient all-reduce); with the same
    # programs compiled afresh it runs. CPU jobs of several processes are tests and
    # rehearsals, whose programs compile in seconds: they go without the cache.
    jax.config.update("jax_enable_compilation_cache", False)
    logging.info("Compilation cache off: programs read back from it hang in collectives "
                 "across CPU processes (JAX 0.12).")
    return None
  path = os.path.abspath(os.path.expanduser(default_cache_dir() if setting == DEFAULT_CACHE
                                            else setting))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--compilation_cache={setting}: cannot create {path} ({e.strerror}); "
                      f"choose another directory or --compilation_cache={CACHE_OFF}.") from None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if not _listening:
    monitoring.register_event_listener(_count)
    _listening = True
  return path


def cache_counts() -> dict[str, int]:
  """Persistent-cache hits and misses of the programs compiled so far in this process."""
  return dict(_cache_counts)
