"""Learning by short-run inference (SRI_SPEC §3): the train step, the validation step, the loop.

Per mini-batch: z_0 ~ N(0, I); z_K = stop_gradient(chain(x, z_0)) with dropout on and a fresh
mask at every step; loss = mean over sentences of -log p(x | z_K) (summed over tokens);
Adam with global-norm clipping updates the decoder.

`config.train.gradient` picks the decoder gradient:
  "final"        grad_theta loss(z_K): the method as written (default).
  "accumulated"  the authors' code: sum_{k<K} grad_theta NLL_sum(x | z_k) + grad_theta loss(z_K),
                 the chain terms taken from the chain's own backward passes (same dropout masks).

Metrics leave the jitted step as sums with their denominators (`nll_sum`, `num_tokens`, ...).
"""

import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from srlm import checkpointing
from srlm import config as config_lib
from srlm import evaluate
from srlm import inference
from srlm import langevin
from srlm import objectives
from srlm.checkpointing import Checkpointer
from srlm.config import Config
from srlm.data import pipeline
from srlm.models import Decoder, make_decoder

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """step, params, opt_state (apply_fn and tx are static and not checkpointed)."""


def make_optimizer(config: Config) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(config.train.grad_clip_norm),
                     optax.adam(config.train.learning_rate))


def create_train_state(config: Config, model: Decoder, rng: jax.Array) -> TrainState:
  z = jnp.zeros((1, config.model.latent_dim), jnp.float32)
  tokens = jnp.zeros((1, 2), jnp.int32)
  params = model.init(rng, z, tokens, deterministic=True)["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(config))


def train_step_fn(config: Config, model: Decoder) -> Callable[[TrainState, Batch, jax.Array],
                                                              tuple[TrainState, Metrics]]:
  """`train_step(state, batch, rng) -> (state, metrics)`, pure and not yet jitted.

  `batch` holds inputs, targets, mask and `epoch` (0-based), which sets the noise multiplier
  through the configured schedule. `rng` is the run's base key; the step folds in state.step,
  so a resumed run draws the same numbers as an uninterrupted one.
  """
  step_sizes_K = jnp.asarray(config_lib.step_sizes(config.langevin), jnp.float32)
  lcfg = config.langevin

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    chain_rng, dropout_rng = jax.random.split(rng)
    temperature = langevin.temperature_at(batch["epoch"] + 1, lcfg.temperature_epochs,
                                          lcfg.temperature_values)
    accumulated = config.train.gradient == "accumulated"
    z0, zK, infos, chain_grads = inference.infer_z(model, state.params, batch, chain_rng, step_sizes_K,
                                         temperature, dropout=True, param_grads=accumulated)
    zK = jax.lax.stop_gradient(zK)
    sentence_mask_B = (jnp.sum(batch["mask"], axis=-1) > 0).astype(jnp.float32)
    num_sentences = jnp.sum(sentence_mask_B)

    def loss_fn(params):
      nll_B = -objectives.decoder_log_likelihood(model, params, zK, batch, dropout_rng)
      return jnp.sum(nll_B) / jnp.maximum(num_sentences, 1.0), nll_B

    (loss, nll_B), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if accumulated:
      grads = jax.tree.map(jnp.add, grads, chain_grads)
    state = state.apply_gradients(grads=grads)
    metrics = {
        "loss": loss,
        "nll_sum": jnp.sum(nll_B),
        "num_tokens": jnp.sum(batch["mask"]),
        "num_sentences": num_sentences,
        "grad_norm_first_sum": jnp.sum(infos.grad_norm[0] * sentence_mask_B),
        "grad_norm_last_sum": jnp.sum(infos.grad_norm[-1] * sentence_mask_B),
        "z_distance_sum": jnp.sum(jnp.linalg.norm(zK - z0, axis=-1) * sentence_mask_B),
        "param_grad_norm": optax.tree.norm(grads),
        "temperature": temperature,
    }
    return state, metrics

  return train_step


def make_train_step(config: Config, model: Decoder):
  """The jitted train step; it compiles once per length bucket."""
  return jax.jit(train_step_fn(config, model))


def make_eval_step(config: Config, model: Decoder):
  """Jitted `eval_step(params, batch, rng) -> sums`: REC, -log p(x | z_K), dropout off and
  the evaluation noise multiplier."""
  step_sizes_K = jnp.asarray(config_lib.step_sizes(config.langevin), jnp.float32)

  def eval_step(state: TrainState, batch: Batch, rng: jax.Array):
    _, zK, _, _ = inference.infer_z(model, state.params, batch, rng, step_sizes_K,
                          jnp.float32(config.langevin.eval_temperature), dropout=False)
    nll_B = -objectives.decoder_log_likelihood(model, state.params, zK, batch, None)
    return {"rec_sum": jnp.sum(nll_B), "num_tokens": jnp.sum(batch["mask"]),
            "num_sentences": jnp.sum(jnp.sum(batch["mask"], axis=-1) > 0)}

  return jax.jit(eval_step)

def evaluate_reconstruction(eval_step, state: TrainState, split: pipeline.Split,
                            config: Config, rng: jax.Array) -> dict[str, float]:
  """REC over a whole split: -log p(x | z_K) per token and per sentence, and exp(REC/token).

  This is a reconstruction perplexity (one chain per sentence), not the model's perplexity,
  which needs the importance-sampled NLL.
  """
  plan = pipeline.plan_batches(split, config.data.buckets, config.data.batch_size)
  sums = []
  for i, batch in enumerate(pipeline.iterate(split, plan, config.data.batch_size)):
    sums.append(eval_step(state, batch, jax.random.fold_in(rng, i)))
  totals = {k: float(sum(s[k] for s in jax.device_get(sums))) for k in sums[0]}
  rec_per_token = totals["rec_sum"] / totals["num_tokens"]
  return {"rec_per_token": rec_per_token, "rec_ppl": math.exp(rec_per_token),
          "rec_per_sentence": totals["rec_sum"] / totals["num_sentences"],
          "num_sentences": int(totals["num_sentences"]), "num_tokens": int(totals["num_tokens"])}


def summarize_train(metrics: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Turns a list of per-step metric sums into per-token and per-sentence averages."""
  total = {k: float(np.sum([m[k] for m in metrics])) for k in metrics[0]}
  sentences = max(total["num_sentences"], 1.0)
  nll_per_token = total["nll_sum"] / max(total["num_tokens"], 1.0)
  return {
      "nll_per_token": nll_per_token,
      "ppl": math.exp(min(nll_per_token, 700.0)),
      "nll_per_sentence": total["nll_sum"] / sentences,
      "grad_norm_first": total["grad_norm_first_sum"] / sentences,
      "grad_norm_last": total["grad_norm_last_sum"] / sentences,
      "z_distance": total["z_distance_sum"] / sentences,
      "param_grad_norm": total["param_grad_norm"] / len(metrics),
      "temperature": float(metrics[-1]["temperature"]),
  }


class MetricWriter:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


class StopOnSignal:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step (save, then stop)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # a second signal: stop now
      raise KeyboardInterrupt
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.signum = signum

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def write_json_atomic(path: str, value: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def train_and_evaluate(config: Config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns its status and last metrics.

  status is "completed", "max_steps" (stopped at --config.train.max_steps), or "preempted"
  (a signal arrived; a checkpoint was saved and `signal` holds its number).
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(os.path.join(workdir, "config.json"), config_lib.to_dict(config))
  corpus = pipeline.load_corpus(config.data)
  train_split = corpus.splits["train"]
  if not len(train_split):
    raise config_lib.ConfigError(
        f"--config.data: no training sentence is left after the length limit "
        f"(last bucket {config.data.buckets[-1]}, rule {config.data.overlong!r}): "
        f"{train_split.counts}.")
  model = make_decoder(config.model, len(corpus.vocab))
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.train.seed), 3)
  state = create_train_state(config, model, init_rng)
  checkpointer = Checkpointer(workdir, config)
  try:
    return _train_loop(config, workdir, corpus, model, state, eval_rng, train_rng, checkpointer)
  finally:
    # Also on errors: Orbax's background threads must not outlive the interpreter's exit.
    checkpointer.close()


def _train_loop(config: Config, workdir: str, corpus: pipeline.Corpus, model: Decoder,
                state: TrainState, eval_rng: jax.Array, train_rng: jax.Array,
                checkpointer: Checkpointer) -> dict[str, Any]:
  train_split, valid_split = corpus.splits["train"], corpus.splits["valid"]
  restored = checkpointer.restore(checkpointing.abstract(state))
  position = {"epoch": 0, "batch": 0}
  if restored is not None:
    state, position = restored
    logging.info("Resumed from %s at step %d (epoch %d, batch %d).", checkpointer.directory,
                 int(state.step), position["epoch"] + 1, position["batch"])
  train_step = make_train_step(config, model)
  eval_step = make_eval_step(config, model)
  writer = MetricWriter(workdir)
  tcfg, batch_size = config.train, config.data.batch_size
  step = int(state.step)
  result: dict[str, Any] = {"status": "completed"}
  steps_per_epoch = len(pipeline.plan_batches(train_split, config.data.buckets, batch_size))
  total_steps = steps_per_epoch * tcfg.num_epochs
  if tcfg.max_steps:
    total_steps = min(total_steps, tcfg.max_steps)
  logging.info("Training %d parameters on %d sentences (%d batches per epoch), %d epochs.",
               sum(x.size for x in jax.tree.leaves(state.params)), len(train_split),
               steps_per_epoch, tcfg.num_epochs)

  pending: list[dict[str, jax.Array]] = []
  run_start, window_start, window_step = time.time(), time.time(), step
  with StopOnSignal() as stop:
    for epoch in range(position["epoch"], tcfg.num_epochs):
      plan = pipeline.epoch_plan(train_split, config.data, tcfg.seed, epoch)
      start = position["batch"] if epoch == position["epoch"] else 0
      for index, batch in enumerate(pipeline.iterate(train_split, plan, batch_size, start),
                                    start):
        batch["epoch"] = np.int32(epoch)
        state, metrics = train_step(state, batch, train_rng)
        pending.append(metrics)
        step += 1
        next_position = {"epoch": epoch, "batch": index + 1}
        done_with_run = tcfg.max_steps and step >= tcfg.max_steps
        if step % tcfg.log_every_steps == 0 or done_with_run or stop.signum is not None:
          now = time.time()
          summary = summarize_train(jax.device_get(pending))
          rate = (step - window_step) / max(now - window_start, 1e-9)
          summary.update(steps_per_sec=rate, sentences_per_sec=rate * batch_size)
          writer.write({"step": step, "epoch": epoch + 1, "split": "train", **summary})
          logging.info(
              "epoch %d/%d batch %d/%d step %d | nll/token %.3f ppl %.1f | |z_K-z_0| %.2f "
              "|grad z| first %.1f last %.2f | T %.3f | %.2f steps/s | ETA epoch %s, run %s",
              epoch + 1, tcfg.num_epochs, index + 1, len(plan), step,
              summary["nll_per_token"], summary["ppl"], summary["z_distance"],
              summary["grad_norm_first"], summary["grad_norm_last"], summary["temperature"],
              rate, _format_seconds((len(plan) - index - 1) / rate),
              _format_seconds((total_steps - step) / rate))
          pending, window_start, window_step = [], now, step
        if step % tcfg.checkpoint_every_steps == 0:
          checkpointer.save(step, state, next_position)
        if done_with_run or stop.signum is not None:
          checkpointer.save(step, state, next_position)
          checkpointer.wait()
          status = "preempted" if stop.signum is not None else "max_steps"
          return {"status": status, "signal": stop.signum, "step": step}
      valid = evaluate_reconstruction(eval_step, state, valid_split, config, eval_rng)
      if tcfg.epoch_latent_metrics:
        latent = evaluate.latent_statistics(config, model, state.params, valid_split,
                                            eval_rng, config.eval.batch_size)
        valid.update(au=latent["au"], mi=latent["mi"])
      writer.write({"step": step, "epoch": epoch + 1, "split": "valid", **valid})
      logging.info("epoch %d/%d validation | REC/token %.3f (exp: %.1f) | REC/sentence %.2f%s",
                   epoch + 1, tcfg.num_epochs, valid["rec_per_token"], valid["rec_ppl"],
                   valid["rec_per_sentence"],
                   f" | AU {valid['au']} MI {valid['mi']:.3f}" if "au" in valid else "")
      result["valid"] = valid
      checkpointer.save(step, state, {"epoch": epoch + 1, "batch": 0})
  checkpointer.wait()
  logging.info("Finished %d steps in %s.", step, _format_seconds(time.time() - run_start))
  return {**result, "step": step}
