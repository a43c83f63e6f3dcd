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
import tqdm.auto
from flax import struct

from srlm import checkpointing
from srlm import config as config_lib
from srlm import evaluate
from srlm import inference
from srlm import langevin
from srlm import objectives
from srlm import parallel
from srlm import plots
from srlm import reporting
from srlm.checkpointing import Checkpointer
from srlm.config import Config
from srlm.data import pipeline
from srlm.models import Decoder, Encoder, make_decoder, make_encoder

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(struct.PyTreeNode):
  """The step count, the parameters and one Adam state per part.

  params is {"decoder": ...}, plus "encoder" for the VAE. Each part has its own optimiser
  state so that a part can be updated alone (the aggressive VAE schedule updates the encoder
  many times per decoder step) without the other's Adam moments moving it.
  """
  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  clip_norm: float = struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: dict[str, Any], config: Config) -> "TrainState":
    tx = optax.adam(config.train.learning_rate)
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state={part: tx.init(p) for part, p in params.items()}, tx=tx,
               clip_norm=config.train.grad_clip_norm)

  def apply_gradients(self, grads: dict[str, Any], count_step: bool = True) -> "TrainState":
    """Clips the given parts' gradients by their joint global norm, then one Adam step on
    each given part; parts absent from grads are untouched. step counts decoder updates."""
    norm = optax.tree.norm(grads)
    scale = jnp.where(norm > self.clip_norm, self.clip_norm / norm, 1.0)
    params, opt_state = dict(self.params), dict(self.opt_state)
    for part, grad in grads.items():
      updates, opt_state[part] = self.tx.update(
          jax.tree.map(lambda g: g * scale, grad), self.opt_state[part], self.params[part])
      params[part] = optax.apply_updates(self.params[part], updates)
    return self.replace(step=self.step + int(count_step), params=params, opt_state=opt_state)


def create_train_state(config: Config, model: Decoder, rng: jax.Array,
                       encoder: Encoder | None = None) -> TrainState:
  decoder_rng, encoder_rng = jax.random.split(rng)
  z = jnp.zeros((1, model.latent_dim), jnp.float32)
  tokens = jnp.zeros((1, 2), jnp.int32)
  params = {"decoder": model.init(
      decoder_rng if encoder is not None else rng, z, tokens, deterministic=True)["params"]}
  if encoder is not None:
    params["encoder"] = encoder.init(encoder_rng, tokens, jnp.ones((1, 2)))["params"]
  return TrainState.create(params, config)


def create_replicated_train_state(config: Config, model: Decoder, rng: jax.Array,
                                  mesh: jax.sharding.Mesh,
                                  encoder: Encoder | None = None) -> TrainState:
  """create_train_state, computed under jit straight into replicated arrays on the mesh (so
  every process holds the same state without copying it between hosts)."""
  return parallel.jit_replicated(
      lambda key: create_train_state(config, model, key, encoder), mesh)(rng)


def _sentence_mask(batch: Batch) -> jax.Array:
  """1.0 for real sentences, 0.0 for the all-padding rows that fill a bucket's last batch."""
  return (jnp.sum(batch["mask"], axis=-1) > 0).astype(jnp.float32)


def _sri_train_step(config: Config, model: Decoder):
  step_sizes_K = jnp.asarray(config_lib.step_sizes(config.langevin), jnp.float32)
  lcfg = config.langevin
  accumulated = config.train.gradient == "accumulated"

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    chain_rng, dropout_rng = jax.random.split(rng)
    temperature = langevin.temperature_at(batch["epoch"] + 1, lcfg.temperature_epochs,
                                          lcfg.temperature_values)
    z0, zK, infos, chain_grads = inference.infer_z(
        model, state.params["decoder"], batch, chain_rng, step_sizes_K, temperature,
        dropout=True, param_grads=accumulated)
    zK = jax.lax.stop_gradient(zK)
    sentence_mask_B = _sentence_mask(batch)
    num_sentences = jnp.sum(sentence_mask_B)

    def loss_fn(params):
      nll_B = -objectives.decoder_log_likelihood(model, params, zK, batch, dropout_rng)
      return jnp.sum(nll_B) / jnp.maximum(num_sentences, 1.0), nll_B

    (loss, nll_B), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["decoder"])
    if accumulated:
      grads = jax.tree.map(jnp.add, grads, chain_grads)
    state = state.apply_gradients({"decoder": grads})
    return state, {
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

  return train_step


def _lm_train_step(model: Decoder):
  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    num_sentences = jnp.sum(_sentence_mask(batch))
    z_Bx0 = jnp.zeros((batch["targets"].shape[0], 0), jnp.float32)

    def loss_fn(params):
      nll_B = -objectives.decoder_log_likelihood(model, params, z_Bx0, batch, dropout_rng)
      return jnp.sum(nll_B) / jnp.maximum(num_sentences, 1.0), nll_B

    (loss, nll_B), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["decoder"])
    state = state.apply_gradients({"decoder": grads})
    return state, {"loss": loss, "nll_sum": jnp.sum(nll_B), "num_tokens": jnp.sum(batch["mask"]),
                   "num_sentences": num_sentences, "param_grad_norm": optax.tree.norm(grads)}

  return train_step


def _vae_train_step(config: Config, model: Decoder, encoder: Encoder, steps_per_epoch: int,
                    parts: tuple[str, ...]):
  """The ELBO step; `parts` says which of encoder / decoder it updates. Only a step that
  updates the decoder counts as a step (the aggressive schedule's encoder-only updates don't)."""
  vcfg = config.vae
  counts_step = "decoder" in parts

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    z_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    sentence_mask_B = _sentence_mask(batch)
    num_sentences = jnp.sum(sentence_mask_B)
    beta = objectives.kl_weight(state.step, steps_per_epoch, vcfg.kl_start,
                                vcfg.kl_warmup_epochs)

    def loss_fn(params):
      mean_BxD, logvar_BxD = encoder.apply({"params": params["encoder"]}, batch["targets"],
                                           batch["mask"])
      z_BxD = mean_BxD + jnp.exp(0.5 * logvar_BxD) * jax.random.normal(z_rng, mean_BxD.shape)
      nll_B = -objectives.decoder_log_likelihood(model, params["decoder"], z_BxD, batch,
                                                 dropout_rng)
      kl_BxD = objectives.gaussian_kl(mean_BxD, logvar_BxD) * sentence_mask_B[:, None]
      penalty = objectives.kl_penalty(kl_BxD, sentence_mask_B, vcfg.free_bits)
      loss = jnp.sum(nll_B) / jnp.maximum(num_sentences, 1.0) + beta * penalty
      return loss, (nll_B, kl_BxD)

    (loss, (nll_B, kl_BxD)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = {part: grads[part] for part in parts}
    state = state.apply_gradients(grads, count_step=counts_step)
    return state, {"loss": loss, "nll_sum": jnp.sum(nll_B), "kl_sum": jnp.sum(kl_BxD),
                   "num_tokens": jnp.sum(batch["mask"]), "num_sentences": num_sentences,
                   "kl_weight": beta, "param_grad_norm": optax.tree.norm(grads)}

  return train_step


def train_step_fn(config: Config, model: Decoder, encoder: Encoder | None = None,
                  steps_per_epoch: int = 1, parts: tuple[str, ...] = ("encoder", "decoder")
                  ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """`train_step(state, batch, rng) -> (state, metrics)` for config.model.kind, not jitted.

  `batch` holds inputs, targets, mask and `epoch` (0-based), which sets SRI's noise multiplier
  through the configured schedule. `rng` is the run's base key; the step folds in state.step,
  so a resumed run draws the same numbers as an uninterrupted one. The VAE's KL weight is a
  function of state.step and `steps_per_epoch`; `parts` picks what a VAE step updates.
  """
  kind = config.model.kind
  if kind == "lm":
    return _lm_train_step(model)
  if kind == "vae":
    return _vae_train_step(config, model, encoder, steps_per_epoch, parts)
  return _sri_train_step(config, model)


def make_train_step(config: Config, model: Decoder, encoder: Encoder | None = None,
                    steps_per_epoch: int = 1, parts: tuple[str, ...] = ("encoder", "decoder"),
                    mesh: jax.sharding.Mesh | None = None):
  """The jitted train step; it compiles once per length bucket. With a mesh, the state and
  metrics it returns are replicated on it (batches come sharded, see srlm.parallel)."""
  fn = train_step_fn(config, model, encoder, steps_per_epoch, parts)
  return parallel.jit_replicated(fn, mesh)


def make_eval_step(config: Config, model: Decoder, encoder: Encoder | None = None,
                   mesh: jax.sharding.Mesh | None = None):
  """Jitted `eval_step(state, batch, rng) -> sums` for the per-epoch validation, dropout off:
  REC = -log p(x | z) with z from the chain at the evaluation T (sri), from q(z | x) with the
  closed-form KL (vae), or the exact NLL (lm, no z). Outputs replicated on `mesh` if given."""
  step_sizes_K = jnp.asarray(config_lib.step_sizes(config.langevin), jnp.float32)
  kind = config.model.kind

  def eval_step(state: TrainState, batch: Batch, rng: jax.Array):
    params = state.params["decoder"]
    sums = {"num_tokens": jnp.sum(batch["mask"]), "num_sentences": jnp.sum(_sentence_mask(batch))}
    if kind == "sri":
      _, z, _, _ = inference.infer_z(model, params, batch, rng, step_sizes_K,
                                     jnp.float32(config.langevin.eval_temperature),
                                     dropout=False)
    elif kind == "vae":
      mean, logvar = encoder.apply({"params": state.params["encoder"]}, batch["targets"],
                                   batch["mask"])
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
      kl_B = jnp.sum(objectives.gaussian_kl(mean, logvar), axis=-1)
      sums["kl_sum"] = jnp.sum(kl_B * _sentence_mask(batch))
    else:
      z = jnp.zeros((batch["targets"].shape[0], 0), jnp.float32)
    nll_B = -objectives.decoder_log_likelihood(model, params, z, batch, None)
    return {"rec_sum": jnp.sum(nll_B), **sums}

  return parallel.jit_replicated(eval_step, mesh)


def evaluate_reconstruction(eval_step, state: TrainState, split: pipeline.Split,
                            config: Config, rng: jax.Array,
                            mesh: jax.sharding.Mesh) -> dict[str, float]:
  """REC over a whole split: -log p(x | z_K) per token and per sentence, and exp(REC/token).

  This is a reconstruction perplexity (one chain per sentence), not the model's perplexity,
  which needs the importance-sampled NLL.
  """
  plan = pipeline.plan_batches(split, config.data.buckets, config.data.batch_size)
  sums = []
  for i, batch in enumerate(parallel.batches(split, plan, config.data.batch_size, mesh)):
    sums.append(eval_step(state, batch, jax.random.fold_in(rng, i)))
  totals = {k: float(sum(s[k] for s in parallel.to_host(sums))) for k in sums[0]}
  rec_per_token = totals["rec_sum"] / totals["num_tokens"]
  result = {"rec_per_token": rec_per_token, "rec_ppl": math.exp(rec_per_token),
            "rec_per_sentence": totals["rec_sum"] / totals["num_sentences"],
            "num_sentences": int(totals["num_sentences"]),
            "num_tokens": int(totals["num_tokens"])}
  if "kl_sum" in totals:
    result["kl_per_sentence"] = totals["kl_sum"] / totals["num_sentences"]
  return result


# Per-step sums turned into per-sentence averages (name_sum -> name), step averages, and
# schedule values whose last value is reported.
_PER_SENTENCE = ("nll", "grad_norm_first", "grad_norm_last", "z_distance", "kl")
_PER_STEP = ("param_grad_norm", "encoder_steps")
_LAST = ("temperature", "kl_weight")


def summarize_train(metrics: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """Turns a list of per-step metric sums into per-token and per-sentence averages."""
  total = {k: float(np.sum([m[k] for m in metrics])) for k in metrics[0]}
  sentences = max(total["num_sentences"], 1.0)
  nll_per_token = total["nll_sum"] / max(total["num_tokens"], 1.0)
  summary = {"nll_per_token": nll_per_token, "ppl": math.exp(min(nll_per_token, 700.0))}
  for name in _PER_SENTENCE:
    if f"{name}_sum" in total:
      summary[f"{name}_per_sentence" if name in ("nll", "kl") else name] = (
          total[f"{name}_sum"] / sentences)
  for name in _PER_STEP:
    if name in total:
      summary[name] = total[name] / len(metrics)
  for name in _LAST:
    if name in total:
      summary[name] = float(metrics[-1][name])
  return summary


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


def _kind_summary(summary: dict[str, float]) -> str:
  """The kind-specific part of a progress line."""
  if "z_distance" in summary:
    return (f"|z_K-z_0| {summary['z_distance']:.2f} |grad z| first "
            f"{summary['grad_norm_first']:.1f} last {summary['grad_norm_last']:.2f} "
            f"| T {summary['temperature']:.3f}")
  if "kl_per_sentence" in summary:
    return (f"KL {summary['kl_per_sentence']:.2f} beta {summary['kl_weight']:.3f} "
            f"encoder steps {summary['encoder_steps']:.1f}")
  return "lm"


def train_and_evaluate(config: Config, workdir: str, progress_bar: bool = False
                       ) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns its status and last metrics.

  status is "completed", "max_steps" (stopped at --config.train.max_steps), or "preempted"
  (a signal arrived; a checkpoint was saved and `signal` holds its number). `progress_bar`
  shows a tqdm bar over the run's steps (in notebooks, beside the log lines).
  """
  config_lib.validate(config)
  mesh = parallel.make_mesh(config.parallel.num_devices)
  parallel.check_batch_size(config.data.batch_size, mesh, "data.batch_size")
  os.makedirs(workdir, exist_ok=True)
  reporting.write_json_atomic(os.path.join(workdir, "config.json"), config_lib.to_dict(config))
  corpus = parallel.load_corpus(config.data)
  train_split = corpus.splits["train"]
  if not len(train_split):
    raise config_lib.ConfigError(
        f"--config.data: no training sentence is left after the length limit "
        f"(last bucket {config.data.buckets[-1]}, rule {config.data.overlong!r}): "
        f"{train_split.counts}.")
  model = make_decoder(config.model, len(corpus.vocab))
  encoder = make_encoder(config.model, len(corpus.vocab))
  init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.train.seed), 3)
  state = create_replicated_train_state(config, model, init_rng, mesh, encoder)
  checkpointer = Checkpointer(workdir, config)
  try:
    result = _train_loop(config, workdir, corpus, model, encoder, state, eval_rng, train_rng,
                         checkpointer, mesh, progress_bar)
    if parallel.is_writer():
      plots.training_curves(workdir)
    return result
  finally:
    # Also on errors: Orbax's background threads must not outlive the interpreter's exit.
    checkpointer.close()


def aggressive_encoder_updates(encoder_step, state: TrainState, split: pipeline.Split,
                               plan: pipeline.BatchPlan, config: Config, rng: jax.Array,
                               step: int, mesh: jax.sharding.Mesh) -> tuple[TrainState, int]:
  """He et al. 2019's inner loop: encoder-only updates on random batches of `plan` until the
  summed loss of a window of `aggressive_window` updates is no lower than the previous
  window's, or `aggressive_max_steps` updates. Returns the state and the number of updates.

  The batches are a function of (seed, step), so a resumed run repeats them.
  """
  vcfg, batch_size = config.vae, config.data.batch_size
  choice = np.random.default_rng([config.train.seed, step, 1])
  previous, current = math.inf, 0.0
  for update in range(1, vcfg.aggressive_max_steps + 1):
    index = int(choice.integers(len(plan)))
    batch = parallel.global_batch([split.sentences[j] for j in plan.indices[index]],
                                  plan.lengths[index], batch_size, mesh)
    batch["epoch"] = np.int32(0)
    state, metrics = encoder_step(state, batch, jax.random.fold_in(rng, update))
    current += float(metrics["loss"])
    if update % vcfg.aggressive_window == 0:
      if current >= previous:
        break
      previous, current = current, 0.0
  return state, update


def _train_loop(config: Config, workdir: str, corpus: pipeline.Corpus, model: Decoder,
                encoder: Encoder | None, state: TrainState, eval_rng: jax.Array,
                train_rng: jax.Array, checkpointer: Checkpointer, mesh: jax.sharding.Mesh,
                progress_bar: bool = False) -> dict[str, Any]:
  train_split, valid_split = corpus.splits["train"], corpus.splits["valid"]
  restored = checkpointer.restore(checkpointing.abstract(state))
  position = {"epoch": 0, "batch": 0}
  if restored is not None:
    state, position = restored
    logging.info("Resumed from %s at step %d (epoch %d, batch %d).", checkpointer.directory,
                 int(state.step), position["epoch"] + 1, position["batch"])
  tcfg, batch_size = config.train, config.data.batch_size
  steps_per_epoch = len(pipeline.plan_batches(train_split, config.data.buckets, batch_size))
  train_step = make_train_step(config, model, encoder, steps_per_epoch, mesh=mesh)
  if config.model.kind == "vae" and config.vae.aggressive_epochs:
    encoder_step = make_train_step(config, model, encoder, steps_per_epoch, ("encoder",), mesh)
    decoder_step = make_train_step(config, model, encoder, steps_per_epoch, ("decoder",), mesh)
    inner_plan = pipeline.plan_batches(train_split, config.data.buckets, batch_size)
  eval_step = make_eval_step(config, model, encoder, mesh)
  writer = reporting.MetricWriter(workdir)
  step = int(state.step)
  result: dict[str, Any] = {"status": "completed"}
  total_steps = steps_per_epoch * tcfg.num_epochs
  if tcfg.max_steps:
    total_steps = min(total_steps, tcfg.max_steps)
  logging.info("Training %d parameters on %d sentences (%d batches per epoch), %d epochs.",
               sum(x.size for x in jax.tree.leaves(state.params)), len(train_split),
               steps_per_epoch, tcfg.num_epochs)

  pending: list[dict[str, jax.Array]] = []
  run_start, window_start, window_step = time.time(), time.time(), step
  bar = tqdm.auto.tqdm(total=total_steps, initial=step, unit="step", disable=not progress_bar)
  with StopOnSignal() as stop, bar:
    for epoch in range(position["epoch"], tcfg.num_epochs):
      plan = pipeline.epoch_plan(train_split, config.data, tcfg.seed, epoch)
      start = position["batch"] if epoch == position["epoch"] else 0
      for index, batch in enumerate(parallel.batches(train_split, plan, batch_size, mesh,
                                                     start), start):
        batch["epoch"] = np.int32(epoch)
        if config.model.kind == "vae" and epoch < config.vae.aggressive_epochs:
          state, encoder_updates = aggressive_encoder_updates(
              encoder_step, state, train_split, inner_plan, config,
              jax.random.fold_in(train_rng, 1 << 30), step, mesh)
          state, metrics = decoder_step(state, batch, train_rng)
          metrics = {**metrics, "encoder_steps": encoder_updates}
        else:
          state, metrics = train_step(state, batch, train_rng)
          if config.model.kind == "vae":
            metrics = {**metrics, "encoder_steps": 1}
        pending.append(metrics)
        step += 1
        bar.update(1)
        next_position = {"epoch": epoch, "batch": index + 1}
        done_with_run = tcfg.max_steps and step >= tcfg.max_steps
        if step % tcfg.log_every_steps == 0 or done_with_run or stop.signum is not None:
          now = time.time()
          summary = summarize_train(parallel.to_host(pending))
          rate = (step - window_step) / max(now - window_start, 1e-9)
          summary.update(steps_per_sec=rate, sentences_per_sec=rate * batch_size)
          writer.write({"step": step, "epoch": epoch + 1, "split": "train", **summary})
          logging.info(
              "epoch %d/%d batch %d/%d step %d | nll/token %.3f ppl %.1f | %s | %.2f steps/s "
              "| ETA epoch %s, run %s", epoch + 1, tcfg.num_epochs, index + 1, len(plan), step,
              summary["nll_per_token"], summary["ppl"], _kind_summary(summary), rate,
              reporting.format_seconds((len(plan) - index - 1) / rate),
              reporting.format_seconds((total_steps - step) / rate))
          bar.set_postfix(epoch=epoch + 1, nll_per_token=f"{summary['nll_per_token']:.3f}")
          pending, window_start, window_step = [], now, step
        if step % tcfg.checkpoint_every_steps == 0:
          checkpointer.save(step, state, next_position)
        if done_with_run or stop.signum is not None:
          checkpointer.save(step, state, next_position)
          checkpointer.wait()
          status = "preempted" if stop.signum is not None else "max_steps"
          return {"status": status, "signal": stop.signum, "step": step}
      valid = evaluate_reconstruction(eval_step, state, valid_split, config, eval_rng, mesh)
      if tcfg.epoch_latent_metrics:
        latent = evaluate.latent_statistics(config, model, state.params, valid_split,
                                            eval_rng, config.eval.batch_size, encoder)
        valid.update(au=latent["au"], mi=latent["mi"])
      writer.write({"step": step, "epoch": epoch + 1, "split": "valid", **valid})
      logging.info("epoch %d/%d validation | REC/token %.3f (exp: %.1f) | REC/sentence %.2f%s%s",
                   epoch + 1, tcfg.num_epochs, valid["rec_per_token"], valid["rec_ppl"],
                   valid["rec_per_sentence"],
                   f" | KL {valid['kl_per_sentence']:.2f}" if "kl_per_sentence" in valid else "",
                   f" | AU {valid['au']} MI {valid['mi']:.3f}" if "au" in valid else "")
      result["valid"] = valid
      checkpointer.save(step, state, {"epoch": epoch + 1, "batch": 0})
      if parallel.is_writer():
        plots.training_curves(workdir)
  checkpointer.wait()
  logging.info("Finished %d steps in %s.", step, reporting.format_seconds(time.time() - run_start))
  return {**result, "step": step}
