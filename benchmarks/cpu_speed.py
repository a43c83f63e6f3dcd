"""Where a CPU's SRI step loses against its float32 floor, under XLA:CPU's dot paths.

For each named setting (the XLA_FLAGS of SETTINGS below), one fresh process measures, in the same process so the ratios hold under the same load:
  - the float32 floor (common.output_layer_floor: 42 products of the output layer at NumPy's
    BLAS rate, which XLA's flags do not change),
  - XLA's output-layer products alone, in the three layouts a step uses, float32 and
    bfloat16 inputs: logits h @ W^T (672 x 256 x 10,002 at T = 22), the gradient back to h
    g @ W (672 x 10,002 x 256), the weight gradient g^T @ h (10,002 x 672 x 256),
  - the SRI training step at PTB sizes (B = 32, K = 20, E = H = 256, D = 32, V = 10,002),
    float32 and bfloat16 compute dtype.

    python benchmarks/cpu_speed.py [--settings=default,onednn,...] [--length=22]

Writes benchmarks/results/cpu_speed_<cpu vendor>_cpu.json and prints a table.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

# name -> XLA_FLAGS of the process (flag names as in openxla/xla's debug_options_flags.cc).
SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_fusion_dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "xnn_off": "--xla_cpu_use_xnnpack=false",
    "vector_512": "--xla_cpu_prefer_vector_width=512",
}

_SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), "Settings to measure.")
_LENGTH = flags.DEFINE_integer("length", 22, "Padded length T.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median reported).")
_WORKER = flags.DEFINE_string("worker", "", "Internal: measure one setting in this process.")


def _measure(name: str) -> dict:
  """Runs in a fresh process whose XLA_FLAGS are the setting's."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from srlm import config as config_lib  # pylint: disable=import-outside-toplevel
  from srlm import methods  # pylint: disable=import-outside-toplevel
  from srlm import state as state_lib  # pylint: disable=import-outside-toplevel
  from srlm import train  # pylint: disable=import-outside-toplevel
  from srlm.data import pipeline  # pylint: disable=import-outside-toplevel

  length, batch_size, hidden, vocab = _LENGTH.value, 32, 256, 10002
  out = {"setting": name, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         **common.output_layer_floor(common.gemm_rate(batch_size * (length - 1), hidden,
                                                       vocab), rate="gemm_numpy_gflops")}
  rows = batch_size * (length - 1)
  rng = np.random.default_rng(0)
  for dtype in ("float32", "bfloat16"):
    h = jnp.asarray(rng.standard_normal((rows, hidden)), dtype)
    g = jnp.asarray(rng.standard_normal((rows, vocab)), dtype)
    w = jnp.asarray(rng.standard_normal((vocab, hidden)), dtype)
    products = {
        "logits": jax.jit(lambda h, w: jnp.dot(h, w.T, preferred_element_type=jnp.float32)),
        "grad_h": jax.jit(lambda g, w: jnp.dot(g, w, preferred_element_type=jnp.float32)),
        "grad_w": jax.jit(lambda g, h: jnp.dot(g.T, h, preferred_element_type=jnp.float32)),
    }
    args = {"logits": (h, w), "grad_h": (g, w), "grad_w": (g, h)}
    for key, fn in products.items():
      timing = common.time_calls(lambda fn=fn, key=key: fn(*args[key]), _REPEATS.value * 2)
      out[f"{key}_{dtype}_ms"] = 1000 * timing["median_s"]
  for dtype in ("float32", "bfloat16"):
    config = config_lib.Config()
    config.model.compute_dtype = dtype
    method = methods.get(config, vocab, steps_per_epoch=1315)
    holder = {"state": state_lib.create_train_state(method, config.train, jax.random.key(0))}
    step = train.make_train_step(method)
    sentences = list(rng.integers(4, vocab, (batch_size, length)).astype(np.int32))
    batch = {**pipeline.make_batch(sentences, length, batch_size), "epoch": np.int32(0)}

    def one_step():
      holder["state"], metrics = step(holder["state"], batch, jax.random.key(1))
      return metrics

    timing = common.time_calls(one_step, _REPEATS.value)
    out[f"step_{dtype}_s"] = timing["median_s"]
    out[f"step_{dtype}_compile_s"] = timing["compile_and_first_call_s"]
  out["ratio_float32"] = out["step_float32_s"] / out["floor_s"]
  out["bfloat16_over_float32"] = out["step_bfloat16_s"] / out["step_float32_s"]
  out["hardware"] = common.hardware()
  return out


def main(argv):
  del argv
  if _WORKER.value:
    print("RESULT " + json.dumps(_measure(_WORKER.value)), flush=True)
    return
  results = []
  for name in _SETTINGS.value:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if SETTINGS[name]:
      env["XLA_FLAGS"] = SETTINGS[name]
    process = subprocess.run([sys.executable, __file__, f"--worker={name}",
                              f"--length={_LENGTH.value}", f"--repeats={_REPEATS.value}"],
                             env=env, capture_output=True, text=True, check=False)
    lines = [l for l in process.stdout.splitlines() if l.startswith("RESULT ")]
    if process.returncode or not lines:
      print(f"{name}: failed (exit {process.returncode}): {process.stderr[-1500:]}")
      results.append({"setting": name, "xla_flags": SETTINGS[name], "failed":
                      process.stderr[-1500:]})
      continue
    result = json.loads(lines[-1][len("RESULT "):])
    results.append(result)
    print(f"{name:18s} floor {result['floor_s']:.3f} s | products ms f32 "
          f"{result['logits_float32_ms']:.1f}/{result['grad_h_float32_ms']:.1f}/"
          f"{result['grad_w_float32_ms']:.1f} bf16 {result['logits_bfloat16_ms']:.1f}/"
          f"{result['grad_h_bfloat16_ms']:.1f}/{result['grad_w_bfloat16_ms']:.1f} | step f32 "
          f"{result['step_float32_s']:.3f} s ({result['ratio_float32']:.2f}x floor) bf16 "
          f"{result['step_bfloat16_s']:.3f} s ({result['bfloat16_over_float32']:.2f}x f32)"
          f" | {result['xla_flags'] or '-'}", flush=True)
  vendor = "intel" if "Intel" in common.hardware()["cpu"] else (
      "amd" if "AMD" in common.hardware()["cpu"] else "other")
  path = common.write_result(f"cpu_speed_{vendor}", {"length": _LENGTH.value,
                                                     "results": results})
  print(f"written to {path}")


if __name__ == "__main__":
  app.run(main)
