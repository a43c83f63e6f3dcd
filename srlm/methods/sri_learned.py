"""Short-run inference with learned step sizes (docs/method.md §7; Nijkamp, Pang, Han, Zhou,
Zhu, Wu, arXiv 1912.01909): the SRI of methods/sri.py whose K chain step sizes are parameters.

The step sizes live in params[base.STEP_SIZES_PART] as log step sizes (so they stay positive),
starting at the config's hand-set schedule, with their own Adam (langevin.learn_rate). Every
langevin.learn_every decoder steps, before the decoder's step, they take one ascent step on the
short-run ELBO
    L(s) = E_{z_0, eps} [log p(x, z_K) - log N(z_0; 0, I) + log|det dz_K/dz_0|]
of the batch's first langevin.learn_batch sentences (dropout off, the evaluation noise T): the
density --mode=eval scores, so maximising L(s) minimises KL(q_s(z|x) || p(z|x)) for the
proposal of the importance-sampled NLL. The gradient is exact autodiff through the log-det
chain (`sri.make_step_size_elbo`). Everything else, the decoder's update included, is SRI's,
with the current step sizes in every chain (training, validation, NLL, posterior moments).
"""

import jax
import jax.numpy as jnp
import optax

from srlm import config as config_lib
from srlm.config import Config
from srlm.errors import ConfigError
from srlm.methods import base
from srlm.methods import sri

# Logged as step_size_00, step_size_01, ...: the schedule drawn per epoch (schedule.png).
SCHEDULE_PREFIX = "step_size"


def step_sizes_part(step_sizes_K) -> dict[str, jax.Array]:
  """The params part holding the step sizes s_k (stored as log s_k)."""
  return {"log_step_sizes": jnp.log(jnp.asarray(step_sizes_K, jnp.float32))}


def make_train_step(config: Config, method: base.Method) -> base.TrainStepFn:
  """SRI's decoder step, preceded every learn_every steps by one step-size update."""
  lcfg = config.langevin
  decoder_step = method.train_step
  elbo_fn = method.step_size_elbo

  def update_step_sizes(state, batch, rng):
    sub_batch = {k: v[:lcfg.learn_batch] for k, v in batch.items() if k != "epoch"}

    def loss_fn(step_sizes_params):
      return -base.sentence_mean(
          elbo_fn({**state.params, base.STEP_SIZES_PART: step_sizes_params}, sub_batch, rng),
          sub_batch)

    loss, grad = jax.value_and_grad(loss_fn)(state.params[base.STEP_SIZES_PART])
    return state.apply_gradients({base.STEP_SIZES_PART: grad}, count_step=False), -loss

  def train_step(state, batch, rng):
    update_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), 1 << 20)
    updates = state.step % lcfg.learn_every == 0
    state, elbo = jax.lax.cond(updates, update_step_sizes,
                               lambda state, batch, rng: (state, jnp.float32(0.0)),
                               state, batch, update_rng)
    state, metrics = decoder_step(state, batch, rng)
    step_sizes_K = jnp.exp(state.params[base.STEP_SIZES_PART]["log_step_sizes"])
    return state, {**metrics,
                   "step_size_elbo_sum": elbo, "step_size_updates": updates.astype(jnp.float32),
                   **{f"{SCHEDULE_PREFIX}_{k:02d}": s for k, s in enumerate(step_sizes_K)}}

  return train_step


def _progress(summary: dict[str, float]) -> str:
  sizes = [summary[k] for k in base.schedule_keys(SCHEDULE_PREFIX, summary)]
  elbo = summary.get("step_size_elbo")
  return (f"{sri.progress(summary)} | s_0 {sizes[0]:.3f} s_K-1 {sizes[-1]:.3f}"
          + (f" | ELBO(s) {elbo:.2f}" if elbo is not None else ""))


def make(config: Config, vocab_size: int, steps_per_epoch: int = 1) -> base.Method:
  lcfg = config.langevin
  if lcfg.learn_batch > config.data.batch_size:
    raise ConfigError(f"--config.langevin.learn_batch: must be at most --config.data.batch_size "
                      f"({config.data.batch_size}), got {lcfg.learn_batch}")
  method = sri.make(config, vocab_size, steps_per_epoch)
  initial_K = config_lib.step_sizes(lcfg)

  def init_params(rng):
    return {**method.init_params(rng), base.STEP_SIZES_PART: step_sizes_part(initial_K)}

  return method._replace(
      name="sri_learned",
      init_params=init_params,
      train_step=make_train_step(config, method),
      optimizers={base.STEP_SIZES_PART: optax.adam(lcfg.learn_rate)},
      train_metrics={
          **method.train_metrics,
          # The mean ELBO over the window's step-size updates.
          "step_size_elbo": ("step_size_elbo_sum", base.per("step_size_updates")),
          "step_size_updates": ("step_size_updates", base.PER_STEP),
          **{f"{SCHEDULE_PREFIX}_{k:02d}": (f"{SCHEDULE_PREFIX}_{k:02d}", base.LAST)
             for k in range(len(initial_K))}},
      progress=_progress,
      schedule=(SCHEDULE_PREFIX, "step size s_k"),
      estimator=method.estimator + " The chains' step sizes are the learned ones.",
  )
