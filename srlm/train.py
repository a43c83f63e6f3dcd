"""Training any method (srlm/methods/): the jitted step, the loop, validation, checkpoints.

The loop knows nothing of the method it trains: the method's train_step (or its host-level
loop_step) updates the state, its train_metrics say how the logged numbers reduce, and its
valid_step gives the per-epoch reconstruction. Metrics leave the jitted step as sums with
their denominators (`nll_sum`, `num_tokens`, ...) and reach the host only at log steps.
"""

import contextlib
import os
import signal
import threading
import time
from typing import Any, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import tqdm.auto

from srlm import checkpointing
from srlm import config as config_lib
from srlm import evaluate
from srlm import methods
from srlm import parallel
from srlm import plots
from srlm import reporting
from srlm import runtime
from srlm import workdir as workdir_lib
from srlm.checkpointing import Checkpointer
from srlm.config import Config
from srlm.data import pipeline
from srlm.errors import ConfigError, DivergenceError
from srlm.methods import base
from srlm.state import TrainState, create_replicated_train_state


def make_train_step(method: methods.Method, mesh: jax.sharding.Mesh | None = None,
                    donate: bool = True):
  """The method's train step, jitted: it compiles once per length bucket. With a mesh, the
  state and metrics it returns are replicated on it (batches come sharded, see
  srlm.parallel). With donate, the state passed in is consumed (its buffers hold the new one):
  use only the returned state."""
  return parallel.jit_replicated(method.train_step, mesh,
                                 donate_argnames="state" if donate else ())


def summarize_train(metrics: list[dict[str, np.ndarray]],
                    reductions: Mapping[str, tuple[str, str]]) -> dict[str, float]:
  """A log window's per-step metric sums as nll_per_token, ppl and the method's metrics:
  reductions maps each logged name to (step metric, base.PER_SENTENCE | PER_STEP | LAST)."""
  total = {k: float(np.sum([m[k] for m in metrics])) for k in metrics[0]}
  sentences = max(total["num_sentences"], 1.0)
  nll_per_token = total["nll_sum"] / max(total["num_tokens"], 1.0)
  summary = {"nll_per_token": nll_per_token, "ppl": reporting.safe_exp(nll_per_token)}
  for name, (key, reduction) in reductions.items():
    if reduction == base.PER_SENTENCE:
      summary[name] = total[key] / sentences
    elif reduction == base.PER_STEP:
      summary[name] = total[key] / len(metrics)
    elif reduction == base.LAST:
      summary[name] = float(metrics[-1][key])
    elif reduction.startswith(base.per("")):
      count = total[reduction[len(base.per("")):]]
      if count:
        summary[name] = total[key] / count
    else:
      raise ValueError(f"metric {name}: unknown reduction {reduction!r}")
  return summary


class StopOnSignal:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step (save, then stop).

  A second signal while the final checkpoint is being written is acknowledged and ignored
  (the save takes seconds; SIGKILL still ends the process); a second signal at any other time
  stops at once (KeyboardInterrupt, which srlm.main reports in one line)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self.saving = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      if self.saving:
        logging.warning("Received signal %d again: the checkpoint is being written and the "
                        "run stops right after it (SIGKILL aborts, losing this save).", signum)
        return
      raise KeyboardInterrupt
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.signum = signum

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _agreed_stop(stop: StopOnSignal, at_log_step: bool, in_flight: Any) -> int | None:
  """The signal that stops the run, agreed by every process: a signal reaches the processes
  of a job at different steps, and the checkpoint save is collective, so at each log step
  every process learns whether any of them was signalled (one tiny all-gather; at every step
  it would cost a host round trip per step). Single process: the local signal, every step.

  The all-gather waits for `in_flight` (the step just dispatched) first: two collectives in
  flight at once may run in a different order on each process (Gloo on CPU aborts the job).
  That drain, once per log step, is the multi-process loop's only one."""
  if jax.process_count() == 1:
    return stop.signum
  if not at_log_step:
    return None
  jax.block_until_ready(in_flight)
  signals = multihost_utils.process_allgather(np.int32(stop.signum or 0))
  received = [int(s) for s in np.ravel(signals) if s]
  return stop.signum or (received[0] if received else None)


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite(window: list[dict[str, np.ndarray]], first_step: int, last_step: int,
                  checkpointer: Checkpointer, state: TrainState | None = None) -> None:
  """Raises DivergenceError if a metric of the steps first_step..last_step (a chain state's
  travel and gradient, the loss, the gradient norm, ...) or, given the state, a parameter or
  optimiser moment is not finite."""
  bad = sorted({name for m in window for name, value in m.items()
                if not np.all(np.isfinite(value))})
  if not bad and (state is None or bool(_all_finite((state.params, state.opt_state)))):
    return
  latest = checkpointer.latest_step()
  raise DivergenceError(
      f"training diverged between steps {first_step} and {last_step}: "
      f"{', '.join(bad) if bad else 'the parameters'} became non-finite (NaN or inf). Nothing "
      "non-finite was saved; "
      + (f"the last checkpoint, step {latest} in {checkpointer.directory}, is finite and "
         "resumes" if latest is not None else "no checkpoint was written yet")
      + ". Lower --config.train.learning_rate or --config.train.grad_clip_norm and resume, "
      "or start a new --workdir.")


@runtime.at_training_precision
def train_and_evaluate(config: Config, workdir: str, progress_bar: bool = False,
                       mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns its status and last metrics.

  status is "completed", "max_steps" (stopped at --config.train.max_steps), or "preempted"
  (a signal arrived; a checkpoint was saved and `signal` holds its number). loop_seconds: the
  wall time from the first step's dispatch to the end (compiles, validation, saving
  included). "curves" is the path of training_curves.png. `progress_bar` shows a tqdm bar
  over the run's steps (in notebooks, beside the log lines). `mesh`: the run's devices (srlm.cli makes it once);
  None builds it from config.parallel.

  Before anything in the workdir changes: the config is validated, the workdir must be
  writable, no other trainer may hold it (UserError naming the holder), and its latest
  checkpoint must be resumable under this config. A run whose loss, gradients, chain or
  parameters become non-finite stops with DivergenceError, never saving a non-finite state.
  """
  methods.validate(config)
  mesh = parallel.make_mesh(config.parallel.num_devices) if mesh is None else mesh
  parallel.check_batch_size(config.data.batch_size, mesh, "data.batch_size")
  workdir_lib.check_writable(workdir)
  with contextlib.ExitStack() as stack:
    if reporting.is_writer():
      stack.enter_context(workdir_lib.TrainerLock(workdir))
    checkpointer = Checkpointer(workdir, config)
    # Also on errors: Orbax's background threads must not outlive the interpreter's exit.
    stack.callback(checkpointer.close)
    corpus = parallel.load_corpus(config.data)
    train_split = corpus.splits["train"]
    if not len(train_split):
      raise ConfigError(
          f"--config.data: no training sentence is left after the length limit "
          f"(last bucket {config.data.buckets[-1]}, rule {config.data.overlong!r}): "
          f"{train_split.counts}.")
    steps_per_epoch = len(pipeline.plan_batches(train_split, config.data.buckets,
                                                config.data.batch_size))
    method = methods.get(config, len(corpus.vocab), steps_per_epoch)
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.train.seed), 3)
    state = create_replicated_train_state(method, config.train, init_rng, mesh)
    checkpointer.check_resumable(checkpointing.abstract(state))
    reporting.write_json_atomic(os.path.join(workdir, "config.json"),
                                config_lib.to_dict(config))
    writer = stack.enter_context(contextlib.closing(reporting.MetricWriter(workdir)))
    result = _train_loop(config, workdir, corpus, method, state, eval_rng, train_rng,
                         checkpointer, writer, mesh, steps_per_epoch, progress_bar)
    return {**result, "curves": plots.training_curves(workdir, method.report.curve)}


def _loop_step(method: methods.Method, config: Config, train_split: pipeline.Split,
               mesh: jax.sharding.Mesh, train_rng: jax.Array) -> base.LoopStep:
  """One training step as the loop calls it: the method's schedule (one jitted train_step per
  batch, or its own host-level one), given what it may use."""
  seed = config.train.seed

  def random_batches(entropy):
    for batch in parallel.random_batches(train_split, config.data.buckets,
                                         config.data.batch_size, mesh, (seed, *entropy)):
      yield {**batch, "epoch": np.int32(0)}

  return method.make_loop_step(base.LoopContext(
      jit=lambda fn: parallel.jit_replicated(fn, mesh, donate_argnames="state"),
      random_batches=random_batches, rng=train_rng))


def _train_loop(config: Config, workdir: str, corpus: pipeline.Corpus, method: methods.Method,
                state: TrainState, eval_rng: jax.Array, train_rng: jax.Array,
                checkpointer: Checkpointer, writer: reporting.MetricWriter,
                mesh: jax.sharding.Mesh, steps_per_epoch: int,
                progress_bar: bool = False) -> dict[str, Any]:
  train_split, valid_split = corpus.splits["train"], corpus.splits["valid"]
  restored = checkpointer.restore(checkpointing.abstract(state))
  position = {"epoch": 0, "batch": 0}
  if restored is not None:
    state, position = restored
    logging.info("Resumed from %s at step %d (epoch %d, batch %d).", checkpointer.directory,
                 int(state.step), position["epoch"] + 1, position["batch"])
  # Records written after this checkpoint, by a run that was killed before its next save, are
  # about to be written again: drop them (and the epoch's validation if it is still to come).
  writer.resume_at(int(state.step), keep_valid=position["batch"] == 0)
  tcfg, batch_size = config.train, config.data.batch_size
  train_step = _loop_step(method, config, train_split, mesh, train_rng)
  step = int(state.step)
  result: dict[str, Any] = {"status": "completed"}
  total_steps = steps_per_epoch * tcfg.num_epochs
  if tcfg.max_steps:
    total_steps = min(total_steps, tcfg.max_steps)
  logging.info("Training %s, %d parameters, on %d sentences (%d batches per epoch), %d epochs; "
               "matmul precision %s%s.", method.name,
               sum(x.size for x in jax.tree.leaves(state.params)), len(train_split),
               steps_per_epoch, tcfg.num_epochs, runtime.precision_in_force(),
               ", deterministic ops" if runtime.deterministic_in_force() else "")

  # The loop keeps the device busy without running ahead of it: after dispatching step s it
  # waits for step s - 1 (so at most one step is queued behind the running one: a signal is
  # answered within about two steps, and the rate logged is that of finished work), and a log
  # window closed at step s is fetched and reported after step s + 1 is dispatched (one step
  # late, so the device never idles while the host writes metrics). benchmarks/epoch.py
  # measures the loop against the isolated step.
  pending: list[dict[str, jax.Array]] = []  # the open window's metrics, on the device
  closed: dict[str, Any] | None = None  # the window closed at the last log step, not reported
  previous: dict[str, jax.Array] | None = None  # the last step's metrics
  precision = runtime.precision_in_force()
  run_start = time.time()
  clock = {"time": run_start, "step": step}  # when the last reported window's results arrived
  window_first = step + 1

  def report() -> None:
    """Fetches the closed window's metrics, checks, writes and logs them."""
    nonlocal closed
    if closed is None:
      return
    w, closed = closed, None
    window = parallel.to_host(w["metrics"])
    now = time.time()  # the window's results are here: the rate of finished work
    _check_finite(window, w["first"], w["step"], checkpointer)
    summary = summarize_train(window, method.report.train_metrics)
    rate = (w["step"] - clock["step"]) / max(now - clock["time"], 1e-9)
    clock.update(time=now, step=w["step"])
    summary.update(steps_per_sec=rate, sentences_per_sec=rate * batch_size)
    writer.write({"step": w["step"], "epoch": w["epoch"] + 1, "split": "train", **summary,
                  "matmul_precision": precision})
    logging.info(
        "epoch %d/%d batch %d/%d step %d | nll/token %.3f ppl %.4g | %s | %.2f steps/s "
        "| ETA epoch %s, run %s", w["epoch"] + 1, tcfg.num_epochs, w["index"] + 1,
        w["batches"], w["step"], summary["nll_per_token"], summary["ppl"],
        method.report.progress(summary), rate,
        reporting.format_seconds((w["batches"] - w["index"] - 1) / rate),
        reporting.format_seconds((total_steps - w["step"]) / rate))
    bar.set_postfix(epoch=w["epoch"] + 1, nll_per_token=f"{summary['nll_per_token']:.3f}")

  def save(position: dict[str, int]) -> None:
    """Saves, after reporting the closed window and checking that nothing since it (metrics,
    parameters, optimiser moments) is non-finite."""
    report()
    _check_finite(parallel.to_host(pending), window_first, step, checkpointer, state)
    checkpointer.save(step, state, position)

  bar = tqdm.auto.tqdm(total=total_steps, initial=step, unit="step", disable=not progress_bar)
  with StopOnSignal() as stop, bar:
    for epoch in range(position["epoch"], tcfg.num_epochs):
      plan = pipeline.epoch_plan(train_split, config.data, tcfg.seed, epoch)
      start = position["batch"] if epoch == position["epoch"] else 0
      for index, batch in enumerate(parallel.batches(train_split, plan, batch_size, mesh,
                                                     start), start):
        batch["epoch"] = np.int32(epoch)
        state, metrics = train_step(state, batch, epoch, step)
        if previous is not None:
          jax.block_until_ready(previous)
        pending.append(metrics)
        previous = metrics
        step += 1
        bar.update(1)
        report()  # the window closed one step ago: its results are in, this step is queued
        next_position = {"epoch": epoch, "batch": index + 1, "epoch_batches": len(plan)}
        done_with_run = tcfg.max_steps and step >= tcfg.max_steps
        signum = _agreed_stop(stop, step % tcfg.log_every_steps == 0 or done_with_run,
                              metrics)
        if step % tcfg.log_every_steps == 0 or done_with_run or signum is not None:
          closed = {"metrics": pending, "first": window_first, "step": step, "epoch": epoch,
                    "index": index, "batches": len(plan)}
          pending, window_first = [], step + 1
        if step % tcfg.checkpoint_every_steps == 0:
          save(next_position)
        if done_with_run or signum is not None:
          stop.saving = True
          save(next_position)
          checkpointer.wait()
          status = "preempted" if signum is not None else "max_steps"
          return {"status": status, "signal": signum, "step": step,
                  "loop_seconds": time.time() - run_start}
      report()  # the epoch's last window, before its validation record
      valid, others = evaluate.reconstruction(config, method, state.params, valid_split,
                                              eval_rng, mesh)
      text = "".join(f" | {name} {value:.2f}" for name, value in others.items())
      if tcfg.epoch_latent_metrics:
        latent = evaluate.latent_statistics(config, method, state.params, valid_split,
                                            eval_rng, config.eval.batch_size, mesh)
        valid.update(au=latent["au"], mi=latent["mi"])
        text += f" | AU {latent['au']} MI {latent['mi']:.3f}"
      valid.update(others)
      writer.write({"step": step, "epoch": epoch + 1, "split": "valid", **valid})
      logging.info("epoch %d/%d validation | REC/token %.3f (exp: %.4g) | REC/sentence %.2f%s",
                   epoch + 1, tcfg.num_epochs, valid["rec_per_token"], valid["rec_ppl"],
                   valid["rec_per_sentence"], text)
      result["valid"] = valid
      save({"epoch": epoch + 1, "batch": 0})
      plots.training_curves(workdir, method.report.curve)
      if method.report.schedule is not None:
        plots.schedule(workdir, method.report.schedule)
  checkpointer.wait()
  logging.info("Finished %d steps in %s.", step, reporting.format_seconds(time.time() - run_start))
  return {**result, "step": step, "loop_seconds": time.time() - run_start}
