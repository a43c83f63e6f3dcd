"""The interface every method implements: a NamedTuple of pure functions and the texts that
describe them, in the manner of optax's (init, update) pairs and blackjax's SamplingAlgorithm.

A method is built once per run from the config and the vocabulary size (`srlm.methods.get`)
and closes over both; the drivers (train, evaluate, analysis) call its functions and never ask
which method they hold. Every step function is pure and not jitted: the drivers jit them (with
the mesh's shardings, see `srlm.parallel`), so one compilation serves each length bucket.

Step signatures (batch: `inputs`, `targets`, `mask` (B, L-1), plus `epoch` in training):
  train_step(state, batch, rng) -> (state, metric sums)    rng: the run's key; the step folds
                                                           in state.step itself
  valid_step(params, batch, rng) -> {"rec": (B,), ...}     per-sentence reconstruction NLL
                                                           (dropout off), other keys per
                                                           sentence too (e.g. "kl")
  nll_step(params, batch, rng) -> {"nll", "kl", "rec"}     each (B,): docs/method.md §4
  posterior_step(params, batch, rng) -> (mean, variance)   each (B, D): AU, MI, codes
  feature_step(params, batch, rng) -> (mean, variance)     the features of docs/method.md §6
Padding rows (mask all 0) may hold anything in per-sentence outputs; drivers drop them.
"""

import types
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

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

def schedule_keys(prefix: str, record: Mapping[str, Any]) -> list[str]:
  """The keys <prefix>_00, <prefix>_01, ... of a logged record (Method.schedule), in order."""
  return sorted(k for k in record
                if k.startswith(prefix + "_") and k[len(prefix) + 1:].isdigit())


# Every train_step reports these sums; `srlm.train.summarize_train` turns them into
# nll_per_token and ppl, and METRICS below into the rest.
REQUIRED_TRAIN_SUMS = ("nll_sum", "num_tokens", "num_sentences", "param_grad_norm")
# logged name -> (train_step metric, reduction); each method adds its own.
COMMON_METRICS = {"nll_per_sentence": ("nll_sum", PER_SENTENCE),
                  "param_grad_norm": ("param_grad_norm", PER_STEP)}


# The params part that holds a short-run chain's own step sizes, {"log_step_sizes": (K,)}: the
# learned ones (methods/sri_learned.py), or those fitted post hoc (srlm/step_sizes.py). A
# method with a chain uses them when the part is present, else its config's.
STEP_SIZES_PART = "step_sizes"


class LoopContext(NamedTuple):
  """What a method's host-level training schedule may use (see Method.loop_step)."""
  config: Any  # srlm.config.Config
  jit: Callable[[TrainStepFn], TrainStepFn]  # jits a train step as the loop does
  train_split: Any  # srlm.data.pipeline.Split
  mesh: jax.sharding.Mesh
  rng: jax.Array  # the run's training key


class Method(NamedTuple):
  """One way of training and evaluating the decoder. Functions are pure, not jitted."""
  name: str  # its --config.model.kind
  decoder: Decoder  # p(x | z); decoder.latent_dim is 0 for a method without a latent
  init_params: Callable[[jax.Array], Params]  # rng -> {"decoder": ..., [other parts]}
  train_step: TrainStepFn
  valid_step: BatchFn
  nll_step: BatchFn
  # None for a method without a latent space (then AU = MI = 0 and no latent-space modes).
  posterior_step: BatchFn | None
  feature_step: BatchFn | None
  # logged name -> (train_step metric, reduction), COMMON_METRICS included.
  train_metrics: Mapping[str, tuple[str, str]]
  # The method's part of a training progress line, from the summarised metrics.
  progress: Callable[[dict[str, float]], str]
  # (logged metric, axis label) drawn beside the NLL in training_curves.png, or None.
  curve: tuple[str, str] | None
  estimator: str  # how eval's nll, kl, rec, au and mi are estimated, for eval_<split>.json
  nll_samples: str  # the short form, for the summary line: "M=10 short-run chains per sentence"
  features: str  # what the features are, e.g. "encoder means"
  # Settings that determine the features, recorded beside saved features (a cache key).
  feature_settings: Mapping[str, Any]
  # A schedule that is not one jitted step per batch (the aggressive VAE's inner loop):
  # LoopContext -> LoopStep. None: the loop calls jit(train_step)(state, batch, rng).
  loop_step: Callable[[LoopContext], LoopStep] | None = None
  # part -> optimiser, for parts not trained by the run's Adam (the learned step sizes).
  optimizers: Mapping[str, optax.GradientTransformation] = types.MappingProxyType({})
  # (logged metric prefix, axis label): metrics <prefix>_00, _01, ... form a vector drawn
  # against its index once per epoch (schedule.png: the learned step sizes), or None.
  schedule: tuple[str, str] | None = None
  # For a method with a short-run chain: (params, batch, rng) -> each sentence's (B,) short-run
  # ELBO under the step sizes in params[STEP_SIZES_PART] (docs/method.md §7), differentiable
  # in them; `step_sizes(params)` gives the (K,) step sizes the chain uses. None for methods
  # without a chain.
  step_size_elbo: BatchFn | None = None
  step_sizes: Callable[[Params], jax.Array] | None = None

  @property
  def latent_dim(self) -> int:
    return self.decoder.latent_dim


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
