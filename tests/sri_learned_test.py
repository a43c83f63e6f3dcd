"""Learned short-run step sizes (srlm/methods/sri_learned.py, srlm/fit.py): the gradient
of the short-run ELBO matches central finite differences (float64), a run learns, logs and
draws its schedule, and any SRI workdir can have step sizes fitted and evaluated with them."""

import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm import cli
from srlm import config as config_lib
from srlm import evaluate
from srlm import methods
from srlm import runs
from srlm import fit
from srlm import train
from srlm.errors import UserError
from srlm.methods import base
from srlm.methods import sri

from helpers import assert_one_message, copy_workdir, run_cli


def test_step_size_gradient_matches_finite_differences(tiny_decoder):
  model, params, batch = tiny_decoder
  initial_K = np.array([0.5, 0.4, 0.3, 0.2])
  with jax.enable_x64():
    params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    chain_weights = sri.make_chain_weights(model, temperature=0.2)

    @jax.jit
    def mean_elbo(log_step_sizes):
      values = chain_weights({"decoder": params64}, jnp.exp(log_step_sizes), batch,
                             jax.random.key(3))["log_w"]
      return base.sentence_mean(values, batch)

    log_K = jnp.log(jnp.asarray(initial_K))
    grad = jax.grad(mean_elbo)(log_K)
    h = 1e-5
    finite_difference = [(mean_elbo(log_K.at[k].add(h)) - mean_elbo(log_K.at[k].add(-h)))
                         / (2 * h) for k in range(len(initial_K))]
  np.testing.assert_allclose(np.asarray(grad), np.asarray(finite_difference), rtol=1e-6)
  assert np.all(np.abs(np.asarray(grad)) > 1e-3)  # every step size matters


@pytest.fixture(scope="module")
def learned_workdir(tfds_dir, tmp_path_factory):
  """A one-epoch sri_learned run from its tiny flagfile (2 decoder steps, 2 step-size
  updates)."""
  workdir = str(tmp_path_factory.mktemp("sri_learned"))
  config = cli.config_from_flags([
      "--flagfile=launch/ptb_sri_learned_tiny.flags", f"--config.data.dir={tfds_dir}",
      "--config.data.max_train_sentences=16", "--config.data.max_eval_sentences=8",
      "--config.data.batch_size=8", "--config.data.buckets=(24,)",
      "--config.train.num_epochs=1", "--config.train.log_every_steps=1",
      "--config.langevin.learn_every=1", "--config.langevin.fit_steps=3"])
  train.train_and_evaluate(config, workdir)
  return workdir


def test_a_run_learns_logs_and_draws_its_step_sizes(learned_workdir):
  config = config_lib.load_run_config(learned_workdir)
  with open(os.path.join(learned_workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if '"train"' in line]
  initial = config_lib.step_sizes(config.langevin)
  logged = [[r[f"step_size_{k:02d}"] for k in range(len(initial))] for r in records]
  assert len(logged) == 2 and all(r["step_size_updates"] == 1.0 for r in records)
  assert np.all(np.isfinite(logged))
  # Their own Adam: its first step moves every log s_k by learn_rate (0.05 here), not by the
  # decoder's learning rate.
  np.testing.assert_allclose(np.abs(np.log(np.asarray(logged[0]) / initial)),
                             config.langevin.learn_rate, rtol=1e-3)
  assert not np.allclose(logged[0], logged[1])  # every step moved them
  assert all(np.isfinite(r["step_size_elbo"]) for r in records)
  assert os.path.getsize(os.path.join(learned_workdir, "schedule.png")) > 0
  run = runs.restore_trained(config, learned_workdir)
  np.testing.assert_allclose(np.asarray(run.method.chain.step_sizes(run.params)), logged[-1],
                             rtol=1e-6)


def test_fitted_step_sizes_are_saved_and_evaluated(learned_workdir):
  config = config_lib.load_run_config(learned_workdir, {
      "eval.max_sentences": 4, "eval.num_samples": 2, "eval.num_posterior_chains": 2,
      "eval.step_sizes": "fitted"})
  with pytest.raises(UserError, match="fit_step_sizes"):  # nothing fitted yet
    evaluate.evaluate_workdir(config, learned_workdir)
  fitted = fit.fit_workdir(config, learned_workdir)
  assert fitted["path"] == fit.fitted_path(learned_workdir, 2)
  assert len(fitted["sub_batch_elbos"]) == 3
  assert np.isfinite(fitted["valid_elbo_before"]) and np.isfinite(fitted["valid_elbo_after"])
  assert fitted["step_sizes"] != fitted["initial_step_sizes"]
  result = evaluate.evaluate_workdir(config, learned_workdir)
  assert result["path"].endswith("eval_test_fitted.json")
  np.testing.assert_allclose(result["step_sizes"], fitted["step_sizes"], rtol=1e-6)
  baseline = evaluate.evaluate_workdir(
      config_lib.load_run_config(learned_workdir, {"eval.max_sentences": 4,
                                                   "eval.num_samples": 2,
                                                   "eval.num_posterior_chains": 2}),
      learned_workdir)
  np.testing.assert_allclose(baseline["step_sizes"], fitted["initial_step_sizes"], rtol=1e-6)
  assert baseline["nll"] != result["nll"] and np.isfinite(result["nll"])
  run = runs.restore_trained(config, learned_workdir)
  with open(fitted["path"], "w") as f:
    json.dump({"step_sizes": [0.1, 0.2]}, f)
  with pytest.raises(UserError, match="holds 2 step sizes; the run's chain has 5"):
    fit.with_fitted(learned_workdir, run)
  with open(fitted["path"], "w") as f:
    f.write("{not json")
  with pytest.raises(UserError, match="cannot read the fitted step sizes"):
    fit.with_fitted(learned_workdir, run)


def test_a_stopped_fit_resumes_to_the_uninterrupted_result(learned_workdir, tmp_path, caplog):
  """A fit stopped after some updates (its journal cut there) resumes from the last journaled
  update's step sizes and Adam state, and ends bit for bit where the uninterrupted fit did."""
  workdir = copy_workdir(learned_workdir, tmp_path)
  config = config_lib.load_run_config(workdir, {"eval.max_sentences": 4, "langevin.fit_steps": 5,
                                                "eval.keep_journal": True})
  whole = fit.fit_workdir(config, workdir)
  (path,) = glob.glob(os.path.join(workdir, "journals", "fitted_2.*.jsonl"))
  with open(path) as f:
    settings, *records = f.read().splitlines()
  stopped = [r for r in records if json.loads(r)["batch"] in ("before/0", "update/0", "update/1")]
  with open(path, "w") as f:  # as a run stopped during update 2 left it
    f.write("\n".join([settings, *stopped]) + "\n")
  os.remove(whole["path"])
  with caplog.at_level(logging.INFO):
    resumed = fit.fit_workdir(config, workdir)
  assert "3 of 7 batches reused" in caplog.text  # 1 + 2 of (1 before, 5 updates, 1 after)
  timings = ("fit_seconds", "path")
  assert ({k: v for k, v in resumed.items() if k not in timings}
          == {k: v for k, v in whole.items() if k not in timings})


def test_another_chain_length_is_refused_as_another_shape(learned_workdir, capfd):
  """sri_learned's K step sizes are parameters: the run scored under another K is refused
  naming the flag, not reported as a damaged checkpoint."""
  assert_one_message(run_cli(capfd, "--mode=eval", f"--workdir={learned_workdir}",
                             "--config.langevin.num_steps=7", "--config.eval.max_sentences=4"),
                     2, "was written under another config",
                     "--config.langevin.num_steps: checkpoint 5, now 7")


def test_a_method_without_a_chain_has_no_step_sizes_to_fit(tmp_path):
  config = config_lib.tiny()
  config.model.kind = "vae"
  run = runs.TrainedRun(corpus=None, method=methods.get(config, 40), params={}, step=0,
                       mesh=None, config=config)
  with pytest.raises(config_lib.ConfigError, match="'vae' has no short-run chain"):
    fit.with_fitted(str(tmp_path), run)
