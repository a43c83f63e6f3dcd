"""The methods side by side, on one budget: LSTM-LM, VAE, VAE with KL annealing, VAE with free
bits, SA-VAE, SRI with the hand-set step sizes (and with step sizes fitted after training),
SRI with learned step sizes. Every run trains from its launch/ptb_*.flags for the same number
of epochs on the same sentences, then is evaluated on the same test sentences with the same M:
ELBO, importance-sampled NLL, PPL, KL, MI, AU, REC.

    launch/study.sh --scale=small   # a PTB slice and smaller models: ~1 hour on a 2-core CPU
    launch/study.sh --scale=paper   # the flagfiles as they are: full PTB, for a GPU

Each run is `python -m srlm.main` in WORKDIR/<run> (default workdirs/study_<scale>); a run
already trained there is resumed (or just re-evaluated). Writes
benchmarks/results/study_<scale>_<backend>.json and prints a Markdown table. ELBO is
-(REC + KL) as --mode=eval estimates them (for SRI, under the short-run density with its exact
log-det); for the LM, which has no latent, that is its exact log-likelihood.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

_SCALE = flags.DEFINE_enum("scale", "small", ["small", "paper"], "Study size (see above).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the runs go; default workdirs/study_<scale>.")
_ONLY = flags.DEFINE_list("only", [], "Run only these runs (names below; --only=none: just "
                          "the table); the table reads all.")

# name -> (flagfile, extra flags, what it is). Each VAE variant is its launch flagfile.
RUNS = {
    "lm": ("launch/ptb_lm.flags", [], "LSTM-LM (no latent)"),
    "vae": ("launch/ptb_vae.flags",
            ["--config.vae.kl_start=1.0", "--config.vae.kl_warmup_epochs=0"],
            "VAE"),
    "vae_anneal": ("launch/ptb_vae.flags", [], "VAE + KL annealing"),
    "vae_fb": ("launch/ptb_vae_fb.flags", [], "VAE + KL annealing + free bits"),
    "savae": ("launch/ptb_savae.flags", [], "SA-VAE"),
    "sri": ("launch/ptb.flags", [], "SRI, hand-set step sizes"),
    "sri_learned": ("launch/ptb_sri_learned.flags", [], "SRI, learned step sizes"),
}

# The same for every run. small: a 3,200-sentence slice of PTB's training split (100 batches
# of 32 per epoch; sentences of up to 30 words), E = H = 128, D = 16, 3 epochs; the first 200
# sentences of valid and test; annealing over 1 epoch; step sizes learned every 10 decoder
# steps, and fitted post hoc with 20 updates. paper: the flagfiles' own values (60 epochs on
# all of PTB), evaluated on the whole test split.
SCALES = {
    "small": ["--config.data.max_train_sentences=3200", "--config.data.max_eval_sentences=200",
              "--config.data.buckets=(12,22,32)", "--config.model.embed_dim=128",
              "--config.model.hidden_dim=128", "--config.model.latent_dim=16",
              "--config.train.num_epochs=3", "--config.train.log_every_steps=25",
              "--config.train.checkpoint_every_steps=100", "--config.vae.kl_warmup_epochs=1",
              "--config.langevin.learn_every=10", "--config.langevin.fit_steps=20"],
    "paper": [],
}
# Evaluation: the same M (importance samples, i.e. chains or draws of q) and S for every run.
EVAL = {"small": ["--config.eval.num_samples=10", "--config.eval.num_posterior_chains=10"],
        "paper": ["--config.eval.num_samples=100", "--config.eval.num_posterior_chains=10"]}


def _srlm(args: list[str], log_path: str) -> float:
  """Runs python -m srlm.main with args, its output appended to log_path; returns seconds."""
  start = time.time()
  with open(log_path, "a") as log:
    log.write(f"$ python -m srlm.main {' '.join(args)}\n")
    log.flush()
    process = subprocess.run([sys.executable, "-m", "srlm.main", *args], stdout=log,
                             stderr=subprocess.STDOUT, check=False)
  if process.returncode:
    raise SystemExit(f"study: python -m srlm.main {' '.join(args)} failed (exit "
                     f"{process.returncode}); see {log_path}")
  return time.time() - start


def _read(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _row(name: str, label: str, workdir: str, eval_file: str, seconds: dict) -> dict:
  result = _read(os.path.join(workdir, eval_file))
  elbo = -(result["rec"] + result["kl"])  # the LM's REC is its NLL, its KL 0
  return {"run": name, "method": label, "kind": result["model_kind"], "elbo": elbo,
          "nll": result["nll"], "ppl": result["ppl"], "kl": result["kl"], "mi": result["mi"],
          "au": result["au"], "rec": result["rec"], "num_sentences": result["num_sentences"],
          "num_samples": result["num_samples"], "checkpoint_step": result["checkpoint_step"],
          "step_sizes": result.get("step_sizes"), **seconds}


def main(argv):
  del argv
  scale = _SCALE.value
  root = _WORKDIR.value or os.path.join("workdirs", f"study_{scale}")
  os.makedirs(root, exist_ok=True)
  times_path = os.path.join(root, "seconds.json")
  times = _read(times_path) if os.path.exists(times_path) else {}
  for name, (flagfile, extra, label) in RUNS.items():
    if _ONLY.value and name not in _ONLY.value:
      continue
    workdir = os.path.join(root, name)
    log = os.path.join(root, f"{name}.log")
    print(f"study: {label}: training in {workdir} (log {log})", flush=True)
    train_args = [f"--flagfile={flagfile}", *extra, *SCALES[scale], f"--workdir={workdir}"]
    # Summed over invocations: a resumed run's seconds add to its first ones.
    times[name] = {"train_s": times.get(name, {}).get("train_s", 0.0) + _srlm(train_args, log)}
    eval_args = ["--mode=eval", f"--workdir={workdir}", "--config.eval.split=test",
                 *EVAL[scale]]
    times[name]["eval_s"] = _srlm(eval_args, log)
    if name == "sri":  # the hand-set run's step sizes, fitted after training
      times["sri_fitted"] = {
          "fit_s": _srlm(["--mode=fit_step_sizes", f"--workdir={workdir}"], log),
          "eval_s": _srlm([*eval_args, "--config.eval.step_sizes=fitted"], log)}
    with open(times_path, "w") as f:
      json.dump(times, f, indent=2)
    print(f"study: {label}: done ({times[name]})", flush=True)

  rows = []
  for name, (_, _, label) in RUNS.items():
    workdir = os.path.join(root, name)
    if os.path.exists(os.path.join(workdir, "eval_test.json")):
      rows.append(_row(name, label, workdir, "eval_test.json", times.get(name, {})))
    if name == "sri" and os.path.exists(os.path.join(workdir, "eval_test_fitted.json")):
      fitted = _row("sri_fitted", "SRI, hand-set, step sizes fitted after training", workdir,
                    "eval_test_fitted.json", times.get("sri_fitted", {}))
      step = fitted["checkpoint_step"]
      fit = _read(os.path.join(workdir, "step_sizes", f"fitted_{step}.json"))
      fitted.update(valid_elbo_before=fit["valid_elbo_before"],
                    valid_elbo_after=fit["valid_elbo_after"])
      rows.append(fitted)
  flags_used = {name: [RUNS[name][0], *RUNS[name][1]] for name in RUNS}
  path = common.write_result(f"study_{scale}", {
      "command": f"launch/study.sh --scale={scale}", "scale_flags": SCALES[scale],
      "eval_flags": EVAL[scale], "runs": flags_used, "workdir": root, "rows": rows})
  print("| method | ELBO | IS-NLL | PPL | KL | MI | AU | REC | train min | eval min |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    minutes = (f"{r['train_s'] / 60:.1f}" if "train_s" in r else
               f"(fit {r['fit_s'] / 60:.1f})" if "fit_s" in r else "")
    eval_minutes = f"{r['eval_s'] / 60:.1f}" if "eval_s" in r else ""
    print(f"| {r['method']} | {r['elbo']:.2f} | {r['nll']:.2f} | {r['ppl']:.1f} | "
          f"{r['kl']:.2f} | {r['mi']:.2f} | {r['au']} | {r['rec']:.2f} | {minutes} | "
          f"{eval_minutes} |")
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
