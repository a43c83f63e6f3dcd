"""The methods side by side, on one budget: LSTM-LM, VAE, VAE with KL annealing, VAE with free
bits, SA-VAE, SRI with the hand-set step sizes (and with step sizes fitted after training),
SRI with the decoder's gradient accumulated over the chain (the authors' code), SRI with
learned step sizes. Every run trains from its launch/ptb_*.flags for the same number of epochs
on the same sentences, then is evaluated on the same test sentences twice:
  * with each method's own estimator at the same M: ELBO, importance-sampled NLL, PPL, KL, MI,
    AU, REC (--mode=eval);
  * with AIS from the prior, the same N, C, L for every latent method (docs/method.md §9;
    --mode=eval --config.eval.estimator=ais); the LM's NLL is exact;
and BDMC bounds the AIS error at that N on both SRI conventions and the free-bits VAE
(--mode=bdmc). Methods are compared by paired per-sentence differences of their AIS NLLs
(the same sentences for all) with standard errors.

    launch/study.sh --scale=small              # a PTB slice, smaller models: the CPU study
    launch/study.sh --scale=small --budget=4   # 4x the training sentences (LM, VAE + free
                                               # bits, both SRI conventions), same epochs
    launch/study.sh --scale=paper              # the flagfiles as they are: full PTB, a GPU

Each run is `python -m srlm.main` in WORKDIR/<run> (default workdirs/study_<scale>, with
_x<budget> for a larger budget); a run already trained or evaluated there is resumed or
skipped, so the study can span sessions. Writes
benchmarks/results/study_<scale>[_x<budget>]_<backend>.json and prints Markdown tables. ELBO
is -(REC + KL) as --mode=eval estimates them (for SRI, under the short-run density with its
exact log-det); for the LM, which has no latent, that is its exact log-likelihood.
"""

import json
import math
import os
import shutil
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

_SCALE = flags.DEFINE_enum("scale", "small", ["small", "full_data", "paper"],
                           "Study size (see above).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the runs go; default workdirs/study_<scale>.")
_ONLY = flags.DEFINE_list("only", [], "Run only these runs (names below; --only=none: just "
                          "the table); the table reads all.")
_FITTED = flags.DEFINE_bool("fitted", True, "Also fit the hand-set SRI run's step sizes after "
                            "training and evaluate with them (the fitted row).")
_SECOND_PASS = flags.DEFINE_bool("second_pass", True, "After every run is trained and scored "
                                 "with AIS, run BDMC, each method's own estimate and the fitted "
                                 "row; --nosecond_pass stops after the AIS pass (the table still "
                                 "has every AIS score).")
_BUDGET = flags.DEFINE_integer("budget", 1, "Training sentences as a multiple of the scale's "
                               "(same epochs); above 1 only BUDGET_RUNS are trained.")
_SEED = flags.DEFINE_integer("seed", 0, "--config.train.seed of every run (initialisation, "
                             "data order, chains); not 0: workdirs and results get _seed<N>.")
_ARCHIVE = flags.DEFINE_string(
    "archive", None, "A folder that keeps each run's result files (ARCHIVED) as they land and "
    "puts them back into an empty workdir, so that a study spans machines (commit it); default "
    "benchmarks/results/study_<scale>_runs for the scales of SPANS_MACHINES, none for the others; "
    "--archive= for none.")

# name -> (flagfile, extra flags, what it is). Each VAE variant is its launch flagfile.
RUNS = {
    "lm": ("launch/ptb_lm.flags", [], "LSTM-LM (no latent)"),
    "vae": ("launch/ptb_vae.flags",
            ["--config.vae.kl_start=1.0", "--config.vae.kl_warmup_epochs=0"],
            "VAE"),
    "vae_anneal": ("launch/ptb_vae.flags", [], "VAE + KL annealing"),
    "vae_fb": ("launch/ptb_vae_fb.flags", [], "VAE + KL annealing + free bits"),
    "savae": ("launch/ptb_savae.flags", [], "SA-VAE"),
    "sri": ("launch/ptb.flags", ["--config.train.gradient=final"],
            "SRI, hand-set step sizes (the method as written)"),
    "sri_accumulated": ("launch/ptb.flags", ["--config.train.gradient=accumulated"],
                        "SRI, hand-set, gradient accumulated over the chain (authors' code)"),
    "sri_learned": ("launch/ptb_sri_learned.flags", [],
                    "SRI, learned step sizes, gradient accumulated (launch/ptb.flags)"),
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
    # All of PTB's training split at the flagfiles' sizes (E = H = 256, D = 32, V = 10,002, the
    # paper's buckets) for 2 epochs: about 27 CPU-minutes an SRI epoch on 2 cores, so the
    # study fits about 5 CPU-hours. A checkpoint every 200 steps (about 4 SRI minutes), as the
    # study spans sessions; the VAE's KL annealing over the first of the 2 epochs (the small
    # study's 1 of 3; the flagfile's 10 of 60 would end the run at a KL weight of 0.28).
    "full_data": ["--config.train.num_epochs=2", "--config.train.log_every_steps=50",
                  "--config.train.checkpoint_every_steps=200",
                  "--config.vae.kl_warmup_epochs=1"],
    "paper": [],
}
# Evaluation: the same M (importance samples, i.e. chains or draws of q) and S for every run.
EVAL = {"small": ["--config.eval.num_samples=10", "--config.eval.num_posterior_chains=10"],
        # full_data: each method's own estimate on the first 100 test sentences (a subset of
        # AIS's 500: SRI's log-det estimate costs about 0.8 s per sentence and chain here).
        "full_data": ["--config.eval.num_samples=10", "--config.eval.num_posterior_chains=10",
                      "--config.eval.max_sentences=100"],
        "paper": ["--config.eval.num_samples=100", "--config.eval.num_posterior_chains=10"]}
# AIS: the same for every latent run. small: N = 500 (BDMC's gap at N = 500 on both SRI
# conventions and the free-bits VAE is in the table; README says why this N), C = 4, L = 1, on
# the first 100 of EVAL's 200 test sentences (about 3 CPU minutes a run); paper: the whole
# test split.
AIS = {"small": ["--config.eval.ais_steps=500", "--config.eval.ais_chains=4",
                 "--config.eval.ais_leapfrog=1", "--config.eval.max_sentences=100"],
       # full_data: the first 500 test sentences, N = 500 as in the small study, checked
       # again by BDMC at this scale (N = 1,000 in BDMC says what a larger N would change).
       "full_data": ["--config.eval.ais_steps=500", "--config.eval.ais_chains=4",
                     "--config.eval.ais_leapfrog=1", "--config.eval.max_sentences=500"],
       "paper": ["--config.eval.ais_steps=1000", "--config.eval.ais_chains=4",
                 "--config.eval.ais_leapfrog=1"]}
BDMC = {"small": ["--config.eval.bdmc_steps=(100,500)", "--config.eval.bdmc_sentences=32"],
        "full_data": ["--config.eval.bdmc_steps=(100,500,1000)",
                      "--config.eval.bdmc_sentences=32"],
        "paper": ["--config.eval.bdmc_steps=(100,1000,5000)",
                  "--config.eval.bdmc_sentences=64"]}
BDMC_RUNS = ("sri", "vae_fb", "sri_accumulated")
# The order runs are trained in (the table keeps RUNS' order): the comparisons that matter most
# first, so a study stopped early has them.
ORDER = ("lm", "sri", "vae_fb", "sri_accumulated", "vae", "vae_anneal", "sri_learned", "savae")
# The runs of a larger budget: the LM, the VAE that keeps a latent, both SRI conventions.
BUDGET_RUNS = ("lm", "vae_fb", "sri", "sri_accumulated")
# Scales that train only some runs, in their own order (--only adds the others, such as
# full_data's optional sri_learned): the headline convention (launch/ptb.flags) first.
SCALE_RUNS = {"full_data": ("lm", "sri_accumulated", "sri", "vae_fb")}


# The scales whose runs span sessions and machines: their result files are archived.
SPANS_MACHINES = ("full_data", "paper")
# What a run's archive keeps: its scores, its config and training records (minutes per epoch),
# not its checkpoints. A run restored from it has its AIS score, so it is not trained again;
# the passes that need its checkpoint (BDMC, the own estimate) are skipped and said so.
ARCHIVED = ("eval_test_ais.json", "eval_test.json", "bdmc.json", "config.json",
            "metrics.jsonl")


def restore_archive(archive: str, root: str, names: list[str]) -> None:
  """Copies the archived files of `names` (and seconds.json) that root lacks into it: only of
  scored runs (an AIS score archived); a run without one trains afresh on this machine."""
  for name in [*names, None]:
    if name and not os.path.exists(os.path.join(archive, name, "eval_test_ais.json")):
      continue
    for file_name in ARCHIVED if name else ("seconds.json",):
      source = os.path.join(archive, *([name] if name else []), file_name)
      target = os.path.join(root, *([name] if name else []), file_name)
      if os.path.exists(source) and not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
        print(f"study: {target} restored from {archive}", flush=True)


def archive_run(archive: str, root: str, name: str) -> None:
  """Copies run `name`'s result files (and seconds.json) from root into the archive."""
  os.makedirs(os.path.join(archive, name), exist_ok=True)
  for file_name in ARCHIVED:
    source = os.path.join(root, name, file_name)
    if os.path.exists(source):
      shutil.copyfile(source, os.path.join(archive, name, file_name))
  shutil.copyfile(os.path.join(root, "seconds.json"), os.path.join(archive, "seconds.json"))


OWN_COLUMNS = ("elbo", "nll", "ppl", "kl", "mi", "au", "rec", "num_sentences", "num_samples")


def _row(name: str, label: str, workdir: str, eval_file: str, seconds: dict) -> dict:
  """One table row: the method's own estimate (eval_file, blank until it is run) and, for the
  plain evaluation, its AIS score and BDMC bounds."""
  row = {"run": name, "method": label, **seconds, **dict.fromkeys(OWN_COLUMNS)}
  own_path = os.path.join(workdir, eval_file)
  result = common.read_json(own_path) if os.path.exists(own_path) else None
  if result:
    row.update({k: result[k] for k in OWN_COLUMNS if k != "elbo"},
               elbo=-(result["rec"] + result["kl"]),  # the LM's REC is its NLL, its KL 0
               kind=result["model_kind"], checkpoint_step=result["checkpoint_step"],
               step_sizes=result.get("step_sizes"))
  ais_path = os.path.join(workdir, "eval_test_ais.json")
  ais = common.read_json(ais_path) if os.path.exists(ais_path) else None
  if ais and result:
    # The own estimate on AIS's sentences (its first ones), for a paired comparison; also for
    # the fitted row, whose decoder (so whose AIS score) is the plain row's.
    # The own estimate may cover fewer sentences than AIS (full_data): both on the shared ones.
    own = dict(zip(result["sentence_lines"], result["sentence_nll"]))
    by_ais = dict(zip(ais["sentence_lines"], ais["sentence_nll"]))
    shared = [line for line in ais["sentence_lines"] if line in own]
    if shared:
      row["nll_on_ais_sentences"] = sum(own[l] for l in shared) / len(shared)
      row["ais_nll_on_shared_sentences"] = sum(by_ais[l] for l in shared) / len(shared)
      row["shared_sentences"] = len(shared)
  if eval_file == "eval_test.json" and ais:
    if not result:
      row.update(kind=ais["model_kind"], checkpoint_step=ais["checkpoint_step"])
    row.update(ais_num_sentences=ais["num_sentences"], ais_nll=ais["nll"], ais_ppl=ais["ppl"],
               ais_kl=ais["kl"], ais_rec=ais["rec"],
               ais_acceptance_rate=ais["ais_acceptance_rate"], ais_ess=ais["ais_ess"],
               ais_estimator=ais["estimator"], ais_seconds=ais["nll_seconds"],
               ais_sentence_lines=ais["sentence_lines"], ais_sentence_nll=ais["sentence_nll"])
  bdmc_path = os.path.join(workdir, "bdmc.json")
  if eval_file == "eval_test.json" and os.path.exists(bdmc_path):
    row["bdmc"] = common.read_json(bdmc_path)
  epochs = epoch_minutes(os.path.join(workdir, "metrics.jsonl"))
  if eval_file == "eval_test.json" and epochs:
    row["epoch_timing"] = epochs
  return row


def epoch_minutes(metrics_path: str) -> dict | None:
  """Minutes per epoch of training from a run's metrics.jsonl: its steps per epoch (the first
  validation record's step) over the median of its log windows' steps/s. The median is robust
  to the few slow windows: each invocation's first (compilation) and those that other work on
  the machine slowed; the rates' spread is kept beside it."""
  if not os.path.exists(metrics_path):
    return None
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  valid = [r for r in records if r["split"] == "valid"]
  rates = [r["steps_per_sec"] for r in records if r["split"] == "train"]
  if not valid or not rates:
    return None
  rates.sort()
  median = rates[len(rates) // 2]
  return {"steps_per_epoch": valid[0]["step"], "median_steps_per_sec": median,
          "minutes_per_epoch": valid[0]["step"] / median / 60,
          "steps_per_sec_p10_p90": [rates[len(rates) // 10], rates[(9 * len(rates)) // 10]]}


def paired_difference(a: dict, b: dict) -> dict | None:
  """Mean and standard error of row a's AIS NLL minus row b's, sentence by sentence."""
  if "ais_sentence_nll" not in a or "ais_sentence_nll" not in b:
    return None
  if a["ais_sentence_lines"] != b["ais_sentence_lines"]:
    raise SystemExit(f"study: {a['run']} and {b['run']} were scored on different sentences")
  d = [x - y for x, y in zip(a["ais_sentence_nll"], b["ais_sentence_nll"])]
  mean = sum(d) / len(d)
  se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
  return {"a": a["run"], "b": b["run"], "mean": mean, "stderr": se, "num_sentences": len(d)}


def _scale_flags(scale: str, budget: int) -> list[str]:
  if budget == 1:
    return SCALES[scale]
  if scale != "small":
    raise SystemExit(f"study: --budget applies to --scale=small ({scale} uses all of PTB)")
  flags_out = []
  for flag in SCALES[scale]:
    if flag.startswith("--config.data.max_train_sentences="):
      flag = f"--config.data.max_train_sentences={int(flag.split('=')[1]) * budget}"
    flags_out.append(flag)
  return flags_out


def run_names(scale: str, budget: int, only: list[str]) -> list[str]:
  """The runs a study trains, in order: --only's (in the scale's order, then ORDER's), else the
  scale's own (SCALE_RUNS), else every run of the budget."""
  order = [*SCALE_RUNS.get(scale, ()), *(n for n in ORDER if n not in SCALE_RUNS.get(scale, ()))]
  if only:
    return [n for n in order if n in only]
  if scale in SCALE_RUNS:
    return list(SCALE_RUNS[scale])
  return [n for n in order if budget == 1 or n in BUDGET_RUNS]


def _run_all(scale: str, budget: int, root: str, seed: int = 0, archive: str = "") -> None:
  """Two passes over the runs, so that a study stopped early has what matters most: first
  every run trained and scored with AIS (the comparison), then (unless --nosecond_pass) BDMC
  on BDMC_RUNS (whether N is enough), each method's own estimate and the fitted row. With an
  archive, every run's result files are kept there as they land, and restored from it first."""
  names = run_names(scale, budget, _ONLY.value)
  if archive:
    restore_archive(archive, root, names)
  times_path = os.path.join(root, "seconds.json")
  times = common.read_json(times_path) if os.path.exists(times_path) else {}

  def save():
    with open(times_path, "w") as f:
      json.dump(times, f, indent=2)

  def run(name: str, key: str, args: list[str]) -> None:
    # Summed over invocations: a resumed run's seconds add to its first ones.
    seconds = common.run_srlm(args, os.path.join(root, f"{name}.log"))
    times.setdefault(name, {})[key] = times.get(name, {}).get(key, 0.0) + seconds
    save()
    if archive and name in RUNS:
      archive_run(archive, root, name)

  def has_checkpoint(name: str, label: str, what: str) -> bool:
    if os.path.isdir(os.path.join(root, name, "checkpoints")):
      return True
    print(f"study: {label}: {what} skipped: no checkpoint in {os.path.join(root, name)} (its "
          "scores came from the archive); retrain it to add it", flush=True)
    return False

  for name in names:
    flagfile, extra, label = RUNS[name]
    workdir = os.path.join(root, name)
    if _done(workdir, "eval_test_ais.json"):
      # Scored, so its training had finished: resuming it would only add start-up seconds to
      # its training minutes.
      continue
    print(f"study: {label}: training in {workdir} (log {workdir}.log)", flush=True)
    run(name, "train_s", [f"--flagfile={flagfile}", *extra, *_scale_flags(scale, budget),
                          *([f"--config.train.seed={seed}"] if seed else []),
                          f"--workdir={workdir}"])
    print(f"study: {label}: AIS", flush=True)
    run(name, "ais_s", [*_eval_args(workdir, scale), "--config.eval.estimator=ais",
                        *AIS[scale]])
  if not _SECOND_PASS.value:
    return
  # BDMC on every run before the own estimates, which are slower (SRI's log-det evals).
  for name in names:
    label, workdir = RUNS[name][2], os.path.join(root, name)
    if (name in BDMC_RUNS and not _done(workdir, "bdmc.json")
        and has_checkpoint(name, label, "BDMC")):
      print(f"study: {label}: BDMC", flush=True)
      run(name, "bdmc_s", ["--mode=bdmc", f"--workdir={workdir}", *AIS[scale], *BDMC[scale]])
  for name in names:
    label, workdir = RUNS[name][2], os.path.join(root, name)
    if not _done(workdir, "eval_test.json") and has_checkpoint(name, label, "its own estimate"):
      print(f"study: {label}: its own estimate", flush=True)
      run(name, "eval_s", _eval_args(workdir, scale))
    if (name == "sri" and budget == 1 and _FITTED.value and scale != "full_data"
        and not _done(workdir, "eval_test_fitted.json")
        and has_checkpoint(name, label, "the fitted row")):
      # the hand-set run's step sizes, fitted after training
      print(f"study: {label}: step sizes fitted after training", flush=True)
      run("sri_fitted", "fit_s", ["--mode=fit_step_sizes", f"--workdir={workdir}"])
      run("sri_fitted", "eval_s",
          [*_eval_args(workdir, scale), "--config.eval.step_sizes=fitted"])
    print(f"study: {label}: done ({times.get(name, {})})", flush=True)


def _done(workdir: str, file_name: str) -> bool:
  return os.path.exists(os.path.join(workdir, file_name))


def _eval_args(workdir: str, scale: str) -> list[str]:
  return ["--mode=eval", f"--workdir={workdir}", "--config.eval.split=test", *EVAL[scale]]


def _print_tables(rows: list[dict], pairs: list[dict]) -> None:
  print("| method | ELBO | IS-NLL | KL | MI | AU | REC | own NLL, AIS's sentences | AIS-NLL | "
        "AIS - LM (paired) | AIS KL | train min | min/epoch | eval min | AIS min |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  versus_lm = {p["a"]: p for p in pairs if p["b"] == "lm"}
  for r in rows:
    minutes = (f"{r['train_s'] / 60:.1f}" if "train_s" in r else
               f"(fit {r['fit_s'] / 60:.1f})" if "fit_s" in r else "")
    eval_minutes = f"{r['eval_s'] / 60:.1f}" if "eval_s" in r else ""
    per_epoch = (f"{r['epoch_timing']['minutes_per_epoch']:.1f}" if "epoch_timing" in r
                 else "")
    ais_minutes = f"{r['ais_seconds'] / 60:.1f}" if "ais_seconds" in r else ""
    ais_nll = f"{r['ais_nll']:.2f}" if "ais_nll" in r else ""
    own = f"{r['nll_on_ais_sentences']:.2f}" if "nll_on_ais_sentences" in r else ""
    ais_kl = f"{r['ais_kl']:.2f}" if "ais_kl" in r else ""
    pair = versus_lm.get(r["run"])
    diff = f"{pair['mean']:+.2f} ± {pair['stderr']:.2f}" if pair else ""
    elbo, nll, kl, mi, au, rec = ("" if r[k] is None else f"{r[k]:.2f}" if k != "au"
                                  else str(r[k]) for k in ("elbo", "nll", "kl", "mi", "au", "rec"))
    print(f"| {r['method']} | {elbo} | {nll} | {kl} | {mi} | {au} | {rec} | {own} | {ais_nll} "
          f"| {diff} | {ais_kl} | {minutes} | {per_epoch} | {eval_minutes} | {ais_minutes} |")
  for r in rows:
    if "bdmc" in r:
      for b in r["bdmc"]["rows"]:
        print(f"BDMC {r['run']} N={b['ais_steps']}: upper {b['upper']:.2f} lower "
              f"{b['lower']:.2f} gap {b['gap']:.2f} ± {b['gap_stderr']:.2f} "
              f"({r['bdmc']['num_sentences']} model sentences)")
  for p in pairs:
    print(f"paired AIS NLL {p['a']} - {p['b']}: {p['mean']:+.2f} ± {p['stderr']:.2f} nats "
          f"({p['num_sentences']} sentences)")


def _rows(root: str, times: dict) -> list[dict]:
  """The table's rows from the runs' files under root (a run with neither eval is left out)."""
  rows = []
  for name, (_, _, label) in RUNS.items():
    workdir = os.path.join(root, name)
    if any(os.path.exists(os.path.join(workdir, f))
           for f in ("eval_test.json", "eval_test_ais.json")):
      rows.append(_row(name, label, workdir, "eval_test.json", times.get(name, {})))
    if name == "sri" and os.path.exists(os.path.join(workdir, "eval_test_fitted.json")):
      fitted = _row("sri_fitted", "SRI, hand-set, step sizes fitted after training", workdir,
                    "eval_test_fitted.json", times.get("sri_fitted", {}))
      step = fitted["checkpoint_step"]
      fit = common.read_json(os.path.join(workdir, "step_sizes", f"fitted_{step}.json"))
      fitted.update(valid_elbo_before=fit["valid_elbo_before"],
                    valid_elbo_after=fit["valid_elbo_after"])
      rows.append(fitted)
  return rows


def main(argv):
  del argv
  scale, budget, seed = _SCALE.value, _BUDGET.value, _SEED.value
  suffix = ("" if budget == 1 else f"_x{budget}") + (f"_seed{seed}" if seed else "")
  root = _WORKDIR.value or os.path.join("workdirs", f"study_{scale}{suffix}")
  os.makedirs(root, exist_ok=True)
  archive = _ARCHIVE.value
  if archive is None:
    archive = (os.path.join(common.RESULTS_DIR, f"study_{scale}{suffix}_runs")
               if scale in SPANS_MACHINES else "")
  _run_all(scale, budget, root, seed, archive)
  rows = _rows(root, common.read_json(os.path.join(root, "seconds.json")))
  by_run = {r["run"]: r for r in rows}
  pairs = [p for p in (
      [paired_difference(r, by_run["lm"]) for r in rows if r["run"] != "lm" and "lm" in by_run]
      + [paired_difference(by_run[a], by_run[b]) for a, b in (
          ("sri", "vae_fb"), ("sri_accumulated", "sri"), ("sri_accumulated", "vae_fb"),
          ("sri_learned", "sri_accumulated")) if a in by_run and b in by_run]) if p]
  # A larger budget or another seed is compared with the reference study (budget 1, seed 0).
  root_1 = os.path.join("workdirs", f"study_{scale}")
  changes = (budget_changes(rows, _rows(root_1, common.read_json(
      os.path.join(root_1, "seconds.json")))) if suffix and not _WORKDIR.value
             and os.path.exists(os.path.join(root_1, "seconds.json")) else [])
  flags_used = {name: [RUNS[name][0], *RUNS[name][1]] for name in RUNS}
  path = common.write_result(f"study_{scale}{suffix}", {
      "command": f"launch/study.sh --scale={scale}" + (f" --budget={budget}" if budget > 1
                                                       else "") + (f" --seed={seed}" if seed
                                                                   else ""),
      "scale_flags": _scale_flags(scale, budget), "eval_flags": EVAL[scale],
      "ais_flags": AIS[scale], "bdmc_flags": BDMC[scale], "runs": flags_used, "workdir": root,
      "rows": rows, "paired_ais_differences": pairs,
      **({"versus_reference": changes, "reference_workdir": root_1} if changes else {})})
  _print_tables(rows, pairs)
  for c in changes:
    print(f"{root} vs {root_1}, {c['run']}: AIS NLL {c['nll_change']['mean']:+.2f} ± "
          f"{c['nll_change']['stderr']:.2f}; minus the LM's "
          + (f"{c['versus_lm_1']['mean']:+.2f} there, {c['versus_lm']['mean']:+.2f} here"
             if c["run"] != "lm" else "0 at both"))
  print(f"wrote {path}")


def budget_changes(rows: list[dict], rows_1: list[dict]) -> list[dict]:
  """For each run in both studies (another budget or seed against the reference; the same AIS
  sentences): how its AIS NLL changed, paired sentence by sentence, and its paired distance to
  the LM in each."""
  by_run_1 = {r["run"]: r for r in rows_1}
  by_run = {r["run"]: r for r in rows}
  out = []
  for r in rows:
    r_1 = by_run_1.get(r["run"])
    if r_1 is None or "ais_sentence_nll" not in r or "ais_sentence_nll" not in r_1:
      continue
    change = {"run": r["run"], "nll_change": paired_difference(r, r_1)}
    if r["run"] != "lm" and "lm" in by_run and "lm" in by_run_1:
      change.update(versus_lm=paired_difference(r, by_run["lm"]),
                    versus_lm_1=paired_difference(r_1, by_run_1["lm"]))
    out.append(change)
  return out


if __name__ == "__main__":
  app.run(main)
