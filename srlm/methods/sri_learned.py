"""Short-run inference with learned step sizes (docs/method.md §7; Nijkamp, Pang, Han, Zhou,
Zhu, Wu, arXiv 1912.01909): the SRI of methods/sri.py whose K chain step sizes are parameters.

The step sizes live in their own params part, {"log_step_sizes": (K,)} (log, so they stay
positive), starting at the config's hand-set schedule, with their own Adam (langevin.
learn_rate). Every langevin.learn_every decoder steps, before the decoder's step, they take
one ascent step on the short-run ELBO
    L(s) = E_{z_0, eps} [log p(x, z_K) - log N(z_0; 0, I) + log|det dz_K/dz_0|]
of the batch's first langevin.learn_batch sentences (dropout off, the evaluation noise T): the
density --mode=eval scores, so maximising L(s) minimises KL(q_s(z|x) || p(z|x)) for the
proposal of the importance-sampled NLL. The update is `base.step_size_ascent`, the one
--mode=fit_step_sizes takes; its gradient is exact autodiff through the log-det chain.
Everything else, the decoder's update included, is SRI's, with the current step sizes in every
chain (training, validation, NLL, posterior moments).
"""

import jax
import jax.numpy as jnp
import optax

from srlm import config as config_lib
from srlm.config import Config
from srlm.errors import ConfigError
from srlm.methods import base
from srlm.methods import sri

# The params part of the step sizes (in checkpoints: keep the name).
PART = "step_sizes"
# Logged as step_size_00, step_size_01, ...: the schedule drawn per epoch (schedule.png).
SCHEDULE_PREFIX = "step_size"


def step_sizes_part(step_sizes_K) -> base.StepSizesPart:
  """The params part holding the step sizes s_k (stored as log s_k)."""
  return {"log_step_sizes": jnp.log(jnp.asarray(step_sizes_K, jnp.float32))}


def learned_step_sizes(params) -> jax.Array:
  return jnp.exp(params[PART]["log_step_sizes"])


def make_train_step(config: Config, method: base.Method) -> base.TrainStepFn:
  """SRI's decoder step, preceded every learn_every steps by one step-size update."""
  lcfg = config.langevin
  decoder_step = method.train_step
  ascent = base.step_size_ascent(method.chain.elbo, optax.adam(lcfg.learn_rate),
                                clip_norm=config.train.grad_clip_norm)
  names = schedule_metrics(lcfg.num_steps)

  def update_step_sizes(state, batch, rng):
    sub_batch = {k: v[:lcfg.learn_batch] for k, v in batch.items() if k != "epoch"}
    part, opt_state, elbo = ascent(state.params, state.params[PART], state.opt_state[PART],
                                   sub_batch, rng)
    return state.replace(params={**state.params, PART: part},
                         opt_state={**state.opt_state, PART: opt_state}), elbo

  def train_step(state, batch, rng):
    update_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), 1 << 20)
    updates = state.step % lcfg.learn_every == 0
    state, elbo = jax.lax.cond(updates, update_step_sizes,
                               lambda state, batch, rng: (state, jnp.float32(0.0)),
                               state, batch, update_rng)
    state, metrics = decoder_step(state, batch, rng)
    step_sizes_K = learned_step_sizes(state.params)
    return state, {**metrics,
                   "step_size_elbo_sum": elbo, "step_size_updates": updates.astype(jnp.float32),
                   **{name: step_sizes_K[k] for k, name in enumerate(names)}}

  return train_step


def schedule_metrics(num_steps: int) -> tuple[str, ...]:
  return tuple(f"{SCHEDULE_PREFIX}_{k:02d}" for k in range(num_steps))


def make(config: Config, vocab_size: int, steps_per_epoch: int = 1) -> base.Method:
  lcfg = config.langevin
  if lcfg.learn_batch > config.data.batch_size:
    raise ConfigError(f"--config.langevin.learn_batch: must be at most --config.data.batch_size "
                      f"({config.data.batch_size}), got {lcfg.learn_batch}")
  method = sri.build(config, vocab_size, learned_step_sizes, "the run's (learned)",
                     name="sri_learned", steps_per_epoch=steps_per_epoch)
  initial_K = config_lib.step_sizes(lcfg)
  names = schedule_metrics(len(initial_K))

  def init_params(rng):
    return {**method.init_params(rng), PART: step_sizes_part(initial_K)}

  def progress(summary: dict[str, float]) -> str:
    elbo = summary.get("step_size_elbo")  # absent from a window without an update
    return (f"{sri.progress(summary)} | s_0 {summary[names[0]]:.3f} s_K-1 "
            f"{summary[names[-1]]:.3f}" + (f" | ELBO(s) {elbo:.2f}" if elbo is not None else ""))

  report = method.report
  return method._replace(
      init_params=init_params,
      train_step=make_train_step(config, method),
      optimizers={PART: optax.adam(lcfg.learn_rate)},
      report=report._replace(
          train_metrics={
              **report.train_metrics,
              # The mean ELBO over the window's step-size updates.
              "step_size_elbo": ("step_size_elbo_sum", base.per("step_size_updates")),
              "step_size_updates": ("step_size_updates", base.PER_STEP),
              **{name: (name, base.LAST) for name in names}},
          progress=progress,
          schedule=base.Schedule(names, "step size s_k")),
  )
