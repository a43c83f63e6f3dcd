"""Time one training step at PTB sizes: B=32, K=20, E=H=256, D=32, V=10,002.

    python benchmarks/train_step.py [--kind=sri] [--lengths=22,12,32] [--gradient=final]
        [--compute_dtype=float32] [--devices=1] [--batch_size=32] [--size=ptb]

--kind=lm|vae|savae|sri_learned (any registered method) times that method's step (the VAEs
with both encoder and decoder updated). For sri_learned, two rows per T: the decoder step alone
("step_size_update": false, what 19 of 20 steps cost) and the step that also updates the step
sizes (true), and the amortised cost per decoder step at --config.langevin.learn_every = 100
(launch/ptb_sri_learned.flags) in "amortised_s".
--devices=1,2,4,8 times the same global batch sharded over 1, 2, 4, 8 devices (on a CPU, with
XLA_FLAGS=--xla_force_host_platform_device_count=8, which simulates devices on the same cores).
T counts <s> and </s> (a batch predicts T-1 tokens). Prints, per T, the compile time and the
median seconds per step after compile, steps/s and sentences/s, the peak memory, and two
floors measured in the same process, with the step's ratio to each, so that figures from
different machines compare:
  - the matmul floor: every matrix product the step performs (LSTM and output layer, forward
    and backward; common.matmul_flops counts them on the step's jaxpr) at the best product
    rate measured here at the output layer's shape (common.gemm_rate: XLA's or NumPy's, in
    the compute dtype);
  - the latency floor: the loop iterations the step runs one after another (LSTM cell steps
    forward and backward, inside the chain's steps; common.scan_iterations counts them on the
    jaxpr) times one dependent cell step's time measured here (common.lstm_cell_seconds): on
    an accelerator the floor that faster arithmetic does not lower;
  - the output-layer floor: the step's 42 output-layer products at the same product rate
    (common.output_layer_floor), the floor earlier results quote.
Writes
benchmarks/results/train_step_<backend>.json. Random token ids: the cost does not depend on
the words.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import cli
from srlm import config as config_lib  # pylint: disable=wrong-import-position
from srlm import methods  # pylint: disable=wrong-import-position
from srlm import models  # pylint: disable=wrong-import-position
from srlm import parallel  # pylint: disable=wrong-import-position
from srlm import runtime  # pylint: disable=wrong-import-position
from srlm import state as state_lib  # pylint: disable=wrong-import-position
from srlm import train  # pylint: disable=wrong-import-position

_LENGTHS = flags.DEFINE_list("lengths", ["22", "12", "32"], "Padded lengths T to time.")
_KIND = flags.DEFINE_enum("kind", "sri", sorted(methods.REGISTRY), "Method.")
_GRADIENT = flags.DEFINE_enum("gradient", "final", config_lib.GRADIENTS,
                              "SRI's decoder gradient.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed steps per length (median reported).")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 0.0, "Fewer timed steps (at least 3) once "
                                  "they have taken this long, per row (0: --repeats always).")
_COMPUTE_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", config_lib.COMPUTE_DTYPES,
                                   "Matmul input precision (config.model.compute_dtype).")
_DEVICES = flags.DEFINE_list("devices", ["1"], "Device counts to shard the batch over.")
_PRECISION = flags.DEFINE_enum("matmul_precision", "default", config_lib.PRECISIONS,
                               "Float32 matmul precision (config.train.matmul_precision).")
_UNROLL = flags.DEFINE_integer("scan_unroll", 0, "The LSTM scan's unroll factor "
                               "(config.model.scan_unroll; 0: the backend's).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Sentences per step (config.data.batch_size; "
                                   "the paper's 32).")
_SIZE = flags.DEFINE_enum("size", "ptb", sorted(common.MODEL_SIZES),
                          "Model size (common.MODEL_SIZES; tiny: a rehearsal's).")
# The step-size update's period in launch/ptb_sri_learned.flags (the amortisation); run from
# the repository root, as the flagfile includes launch/ptb.flags.
_FLAGFILE_LEARN_EVERY = cli.config_from_flags(
    ["--flagfile=launch/ptb_sri_learned.flags"]).langevin.learn_every


def main(argv):
  del argv
  config, vocab = common.sized_config(_SIZE.value)
  config.data.batch_size = _BATCH_SIZE.value
  config.train.gradient = _GRADIENT.value
  config.model.kind = _KIND.value
  config.model.compute_dtype = _COMPUTE_DTYPE.value
  config.train.matmul_precision = _PRECISION.value
  config.model.scan_unroll = _UNROLL.value
  with runtime.matmul_precision(_PRECISION.value):
    _main(config, vocab)


def _main(config, vocab):
  rows = []
  # sri_learned: every step updates the step sizes (learn_every 1), or none after the first
  # (whose time is the compile's, not in the median).
  for learn_every in ((1, 10 ** 9) if _KIND.value == "sri_learned" else (None,)):
    if learn_every:
      config.langevin.learn_every = learn_every
    rows += _time_method(config, vocab, learn_every)
  if _KIND.value == "sri_learned":
    every = _FLAGFILE_LEARN_EVERY
    for update in (r for r in rows if r["step_size_update"]):
      plain = next(r for r in rows if not r["step_size_update"] and r["T"] == update["T"])
      update["amortised_s"] = plain["median_s"] + (update["median_s"] - plain["median_s"]) / every
      print(f"T={update['T']}: step-size update every {every} decoder steps adds "
            f"{(update['median_s'] - plain['median_s']) / every:.3f} s per decoder step "
            f"({update['amortised_s'] / plain['median_s'] - 1:.0%})")
  _write(config, vocab, rows)


def _time_method(config, vocab, learn_every):
  method = methods.get(config, vocab, steps_per_epoch=1315)
  rng = np.random.default_rng(0)
  batch_size = config.data.batch_size
  rows = []
  cell = common.lstm_cell_seconds(batch_size, config.model.hidden_dim)
  for num_devices in map(int, _DEVICES.value):
    mesh = parallel.make_mesh(num_devices)
    holder = {"state": state_lib.create_replicated_train_state(
        method, config.train, jax.random.key(0), mesh)}
    step = train.make_train_step(method, mesh)  # donates the state, as training does

    def one_step(batch):
      holder["state"], metrics = step(holder["state"], batch, jax.random.key(1))
      return metrics

    for length in map(int, _LENGTHS.value):
      sentences = list(rng.integers(4, vocab, (batch_size, length)).astype(np.int32))
      batch = {**parallel.global_batch(sentences, length, batch_size, mesh),
               "epoch": np.int32(0)}
      args = (holder["state"], batch, jax.random.key(1))
      jaxpr = common.traced(step, *args)
      flops, iterations = common.matmul_flops(jaxpr), common.scan_iterations(jaxpr)
      rate = common.gemm_rate(batch_size * (length - 1), config.model.hidden_dim, vocab,
                              config.model.compute_dtype)
      floor = common.output_layer_floor(rate)
      timing = common.time_calls(lambda: one_step(batch), _REPEATS.value, _MAX_SECONDS.value)
      matmul_floor_s = flops / (rate["gemm_gflops"] * 1e9)
      latency_floor_s = iterations * cell["lstm_cell_s"]
      row = {"devices": num_devices, "T": length, "batch_size": batch_size, **timing, **floor,
             "ratio_to_floor": timing["median_s"] / floor["floor_s"],
             "matmul_gflop": flops / 1e9, **rate, "matmul_floor_s": matmul_floor_s,
             "ratio_to_matmul_floor": timing["median_s"] / matmul_floor_s,
             "dependent_iterations": iterations, **cell, "latency_floor_s": latency_floor_s,
             "ratio_to_latency_floor": timing["median_s"] / latency_floor_s,
             **({"step_size_update": learn_every == 1} if learn_every else {}),
             "steps_per_s": 1 / timing["median_s"],
             "sentences_per_s": batch_size / timing["median_s"], **common.peak_memory_mb()}
      rows.append(row)
      print(f"devices={num_devices} T={length:3d}"
            + (f" step-size update {row['step_size_update']}" if learn_every else "")
            + f": {row['median_s']:.3f} s/step "
            f"(min {row['min_s']:.3f}), {row['steps_per_s']:.2f} steps/s, "
            f"{row['sentences_per_s']:.1f} sentences/s, "
            f"compile+first {row['compile_and_first_call_s']:.1f} s, matmul floor "
            f"{matmul_floor_s:.3f} s ({row['matmul_gflop']:.1f} GFLOP at "
            f"{rate['gemm_gflops']:.0f} GFLOP/s): {row['ratio_to_matmul_floor']:.2f}x, "
            f"latency floor {latency_floor_s:.3f} s ({iterations} dependent iterations at "
            f"{cell['lstm_cell_s'] * 1e6:.1f} us): {row['ratio_to_latency_floor']:.2f}x, "
            f"output-layer floor {floor['floor_s']:.3f} s ({floor['floor_products']} "
            f"products): {row['ratio_to_floor']:.2f}x, "
            f"peak RSS {row['peak_host_rss_mb']:.0f} MB", flush=True)
  return rows


def _write(config, vocab, rows):
  batch_size = config.data.batch_size
  name = "train_step_" + _KIND.value + (f"_{_GRADIENT.value}" if _KIND.value == "sri" else "")
  if _COMPUTE_DTYPE.value != "float32":
    name += f"_{_COMPUTE_DTYPE.value}"
  if _DEVICES.value != ["1"]:
    name += "_devices"
  if _PRECISION.value != "default":
    name += f"_{_PRECISION.value}"
  if _UNROLL.value:
    name += f"_unroll{_UNROLL.value}"
  if _SIZE.value != "ptb":
    name += f"_{_SIZE.value}"
  if _BATCH_SIZE.value != 32:
    name += f"_batch{_BATCH_SIZE.value}"
  path = common.write_result(name, {
      "config": {"batch_size": batch_size, "num_steps": config.langevin.num_steps,
                 "embed_dim": config.model.embed_dim, "hidden_dim": config.model.hidden_dim,
                 "latent_dim": config.model.latent_dim, "vocab_size": vocab,
                 "kind": _KIND.value, "gradient": _GRADIENT.value,
                 "compute_dtype": _COMPUTE_DTYPE.value,
                 "matmul_precision": _PRECISION.value,
                 "scan_unroll": models.scan_unroll(_UNROLL.value),
                 **({"learn_batch": config.langevin.learn_batch,
                     "amortised_over": _FLAGFILE_LEARN_EVERY}
                    if _KIND.value == "sri_learned" else {}),
                 **({"refine_steps": config.savae.refine_steps}
                    if _KIND.value == "savae" else {})},
      "rows": rows})
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
