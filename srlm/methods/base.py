"""The interface every method implements: a core of pure functions, plus capability records
for what only some methods have, in the manner of optax's (init, update) pairs and blackjax's
SamplingAlgorithm.

A method is built once per run from the config and the vocabulary size (`srlm.methods.get`)
and closes over both; the drivers (train, evaluate, analysis, step_sizes) call its functions
and never ask which method they hold. They ask one question per capability (`method.latent is
None`: no latent space; `method.chain is None`: no short-run chain) and never look at metric
names, result keys or params keys to decide what to do. Every step function is pure and not
jitted: the drivers jit them (with the mesh's shardings, see `srlm.parallel`), so one
compilation serves each length bucket.

Step signatures (batch: `inputs`, `targets`, `mask` (B, L-1), plus `epoch` in training):
  train_step(state, batch, rng) -> (state, metric sums)    rng: the run's key; the step folds
                                                           in state.step itself
  valid_step(params, batch, rng) -> {"rec": (B,), ...}     per-sentence reconstruction NLL
                                                           (dropout off), other keys per
                                                           sentence too (e.g. "kl")
  nll_step(params, batch, rng) -> {"nll", "kl", "rec"}     each (B,): docs/method.md §4
  Latent.posterior_step(params, batch, rng) -> (mean, variance)   each (B, D): AU, MI, codes
  Latent.feature_step(params, batch, rng) -> (mean, variance)     the features of §6
  Latent.log_likelihood(params, z, batch) -> (B,)          log p(x | z), dropout off
  Chain.elbo(params, log_step_sizes, batch, rng) -> (B,)   the short-run ELBO of §7
Padding rows (mask all 0) may hold anything in per-sentence outputs; drivers drop them.
"""

import types
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from srlm import objectives
from srlm.models import Decoder

Batch = dict[str, jax.Array]
Params = dict[str, Any]
Metrics = dict[str, jax.Array]
TrainStepFn = Callable[[Any, Batch, jax.Array], tuple[Any, Metrics]]
BatchFn = Callable[[Params, Batch, jax.Array], Any]
# (state, batch, epoch (0-based), step (updates done so far)) -> (state, metrics): one
# training step as the loop sees it, possibly several jitted calls (see Method.loop_step).
LoopStep = Callable[[Any, Batch, int, int], tuple[Any, Metrics]]

# How a training metric's per-step values become one logged number over a log window.
PER_SENTENCE = "per_sentence"  # sum over the window / sentences in the window
PER_STEP = "per_step"  # mean over the window's steps
LAST = "last"  # the value at the window's last step (a schedule's current value)


def per(count_metric: str) -> str:
  """Reduction: sum over the window / the window's sum of count_metric (e.g. the mean over
  the steps that did a periodic update); left out of a window whose count is 0."""
  return f"per:{count_metric}"


# Every train_step reports these sums; `srlm.train.summarize_train` turns them into
# nll_per_token and ppl, and Report.train_metrics into the rest.
REQUIRED_TRAIN_SUMS = ("nll_sum", "num_tokens", "num_sentences", "param_grad_norm")
# logged name -> (train_step metric, reduction); each method adds its own.
COMMON_METRICS = {"nll_per_sentence": ("nll_sum", PER_SENTENCE),
                  "param_grad_norm": ("param_grad_norm", PER_STEP)}


class LoopContext(NamedTuple):
  """What a method's host-level training schedule may use (see Method.loop_step): no mesh, no
  data pipeline, only functions the training loop hands down."""
  jit: Callable[[TrainStepFn], TrainStepFn]  # jits a train step as the loop does
  # random_batches(entropy) -> endless iterator of training batches drawn at random (with
  # replacement) from the training split, a function of (entropy, the run's seed) only, so a
  # resumed run draws the same ones (the aggressive VAE's inner loop).
  random_batches: Callable[[tuple[int, ...]], Iterator[Batch]]
  rng: jax.Array  # the run's training key


def jitted_loop_step(train_step: TrainStepFn) -> Callable[[LoopContext], LoopStep]:
  """The default schedule: one jitted train_step per batch."""
  def make_loop_step(context: LoopContext) -> LoopStep:
    step = context.jit(train_step)
    return lambda state, batch, epoch, step_count: step(state, batch, context.rng)
  return make_loop_step


class Latent(NamedTuple):
  """A latent space: posterior moments, features, and the decoder's likelihood of a code."""
  posterior_step: BatchFn  # (params, batch, rng) -> (mean, variance), each (B, D)
  feature_step: BatchFn  # the same for the features of docs/method.md §6
  features: str  # what the features are, e.g. "encoder means"
  # Settings that determine the features, recorded beside saved features (a cache key).
  feature_settings: Mapping[str, Any]
  # (params, z (B, D), batch) -> log p(x | z) (B,), dropout off: the decoder alone, for
  # estimators that need no proposal of the method's own (AIS).
  log_likelihood: Callable[[Params, jax.Array, Batch], jax.Array]


class Chain(NamedTuple):
  """A short-run chain (SRI-like methods): its step sizes and the objective that tunes them."""
  # params -> the (K,) step sizes the method's chains use (the config's, learned, or fitted).
  step_sizes: Callable[[Params], jax.Array]
  # (params, log step sizes (K,), batch, rng) -> each sentence's (B,) short-run ELBO (docs/
  # method.md §7) with those step sizes, dropout off, at the evaluation noise; differentiable
  # in the log step sizes.
  elbo: Callable[[Params, jax.Array, Batch, jax.Array], jax.Array]
  # (step sizes (K,), where they come from) -> the same method with its chains at those fixed
  # step sizes (for evaluation with fitted step sizes).
  with_step_sizes: Callable[[Any, str], "Method"]


class Curve(NamedTuple):
  """A method's own training curve, drawn beside the NLL in training_curves.png."""
  metric: str  # a logged training metric
  label: str  # its axis label
  in_valid: bool  # whether the validation records carry it too


class Schedule(NamedTuple):
  """A vector logged as one metric per entry, drawn against its index once per epoch
  (schedule.png: the learned step sizes)."""
  metrics: tuple[str, ...]  # logged metric names, in index order
  label: str


class Estimator(NamedTuple):
  """How eval's numbers are estimated, in parts a method can override (SA-VAE names its
  refined q where the VAE names the encoder's); `text` joins them for eval_<split>.json."""
  nll: str
  kl: str
  rec: str
  latent: str  # AU and MI
  extra: str = ""  # e.g. where a chain's step sizes come from

  @property
  def text(self) -> str:
    return " ".join(part for part in (f"{self.nll}; {self.kl}; REC: {self.rec}; AU/MI: "
                                      f"{self.latent}.", self.extra) if part)


class Report(NamedTuple):
  """What a method says about itself: logs, figures and the eval JSON's descriptions."""
  # logged name -> (train_step metric, reduction), COMMON_METRICS included.
  train_metrics: Mapping[str, tuple[str, str]]
  # The method's part of a training progress line, from the summarised metrics.
  progress: Callable[[dict[str, float]], str]
  curve: Curve | None
  schedule: Schedule | None
  estimator: Estimator
  nll_samples: str  # the short form, for the summary line: "M=10 short-run chains per sentence"
  # params -> the settings the method adds to eval_<split>.json (JSON values).
  eval_settings: Callable[[Params], dict[str, Any]] = lambda params: {}
  # settings (as returned above) -> an extra line of the eval summary, "" for none.
  eval_note: Callable[[dict[str, Any]], str] = lambda settings: ""


class Method(NamedTuple):
  """One way of training and evaluating the decoder. Functions are pure, not jitted."""
  name: str  # its --config.model.kind
  decoder: Decoder  # p(x | z); decoder.latent_dim is 0 for a method without a latent
  init_params: Callable[[jax.Array], Params]  # rng -> {"decoder": ..., [other parts]}
  train_step: TrainStepFn
  valid_step: BatchFn
  nll_step: BatchFn
  report: Report
  latent: Latent | None = None  # None: no latent space (AU = MI = 0, no latent-space modes)
  chain: Chain | None = None  # None: no short-run chain (no step sizes to fit)
  # LoopContext -> LoopStep: the training schedule; one jitted train_step per batch unless
  # the method has a host-level one (the aggressive VAE's inner loop). None: that default.
  loop_step: Callable[[LoopContext], LoopStep] | None = None
  # part -> optimiser, for parts not trained by the run's Adam (the learned step sizes).
  optimizers: Mapping[str, optax.GradientTransformation] = types.MappingProxyType({})

  @property
  def latent_dim(self) -> int:
    return self.decoder.latent_dim

  def make_loop_step(self, context: LoopContext) -> LoopStep:
    return (self.loop_step or jitted_loop_step(self.train_step))(context)


def sentence_mask(batch: Batch) -> jax.Array:
  """1.0 for real sentences, 0.0 for the all-padding rows that fill a bucket's last batch."""
  return (jnp.sum(batch["mask"], axis=-1) > 0).astype(jnp.float32)


def sentence_mean(values_B: jax.Array, batch: Batch) -> jax.Array:
  """The mean of per-sentence values over the batch's real sentences (padding rows left out)."""
  mask_B = sentence_mask(batch)
  return jnp.sum(jnp.where(mask_B > 0, values_B, 0.0)) / jnp.maximum(jnp.sum(mask_B), 1.0)


def empty_latent(batch: Batch) -> jax.Array:
  """A (B, 0) code: the decoder's input when there is no latent."""
  return jnp.zeros((batch["targets"].shape[0], 0), jnp.float32)


def init_decoder(decoder: Decoder, rng: jax.Array) -> Params:
  """The decoder's parameters, initialised from one key (shapes from a 1 x 2 dummy batch)."""
  z = jnp.zeros((1, decoder.latent_dim), jnp.float32)
  tokens = jnp.zeros((1, 2), jnp.int32)
  return decoder.init(rng, z, tokens, deterministic=True)["params"]


def decoder_log_likelihood_fn(model: Decoder) -> Callable[[Params, jax.Array, Batch], jax.Array]:
  """Latent.log_likelihood of a method whose params hold the decoder as params["decoder"]."""
  return lambda params, z_BxD, batch: objectives.decoder_log_likelihood(
      model, params["decoder"], z_BxD, batch, None)


# The step sizes' own params part, {"log_step_sizes": (K,)}, and its optimiser state.
StepSizesPart = dict[str, jax.Array]


def step_size_ascent(elbo: Callable[[Params, jax.Array, Batch, jax.Array], jax.Array],
                     tx: optax.GradientTransformation, clip_norm: float | None = None):
  """One ascent step on the mean short-run ELBO of a batch in the log step sizes, the decoder
  fixed: the update of learned step sizes (methods/sri_learned.py, during training) and of
  fitted ones (--mode=fit_step_sizes, after it). `elbo` is a Chain.elbo; the gradient is
  clipped to clip_norm (as the run's optimiser clips) when given, then `tx` updates.

  Returns (params, part, opt_state, batch, rng) -> (part, opt_state, the batch's mean ELBO at
  the step sizes before the step), with part = {"log_step_sizes": (K,)}.
  """
  def update(params, part: StepSizesPart, opt_state, batch, rng):
    def loss_fn(part):
      return -sentence_mean(elbo(params, part["log_step_sizes"], batch, rng), batch)

    loss, grad = jax.value_and_grad(loss_fn)(part)
    if clip_norm is not None:
      grad = objectives.clip_by_global_norm(grad, clip_norm)
    updates, opt_state = tx.update(grad, opt_state, part)
    return optax.apply_updates(part, updates), opt_state, -loss

  return update
