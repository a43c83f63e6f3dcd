"""Semi-supervised short-Yelp, SRI against the VAE baselines' features (docs/method.md §6): each
method trains from its launch/short_yelp*.flags on the same corpus, sizes and budget; a linear
classifier is fitted on each labelled subset's features (100, 500, 1k, 2k, 10k labels), chosen
on valid, scored on test (--mode=classify); and the test features are clustered
(--mode=cluster). SRI's features are the mean of its noiseless feature chains with dropout on
(the authors' protocol); the VAEs' are their encoder means.

    launch/study_short_yelp.sh --scale=small   # a CPU-sized version (SCALES says exactly how)
    launch/study_short_yelp.sh --scale=paper   # the flagfiles as they are, for a GPU

Each run is `python -m srlm.main` in WORKDIR/<run> (default workdirs/short_yelp_<scale>); what
is done there is resumed or skipped. Needs the corpus: --source_dir (default
../shared/data/short_yelp). The 100k unlabelled training file is not available here, so every
decoder trains on the text of the 10k labelled subset plus valid (launch/short_yelp.flags).
Writes benchmarks/results/study_short_yelp_<scale>_<backend>.json and prints a Markdown table.
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

_SCALE = flags.DEFINE_enum("scale", "small", ["smoke", "small", "paper"],
                           "Study size (see SCALES; smoke: a minutes-long check of the script).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the runs go; default "
                               "workdirs/short_yelp_<scale>.")
_SOURCE_DIR = flags.DEFINE_string("source_dir", "../shared/data/short_yelp",
                                  "The short-Yelp files (../shared/data/README.md).")
_ONLY = flags.DEFINE_list("only", [], "Run only these runs; the table reads all.")

RUNS = {
    "sri": ("launch/short_yelp.flags", "SRI (the authors' protocol)"),
    "vae": ("launch/short_yelp_vae.flags", "VAE + KL annealing"),
    "vae_fb": ("launch/short_yelp_vae_fb.flags", "VAE + KL annealing + free bits"),
    "vae_aggressive": ("launch/short_yelp_vae_aggressive.flags", "VAE, aggressive"),
    "savae": ("launch/short_yelp_savae.flags", "SA-VAE"),
}
# How each scale departs from the flagfiles (paper: not at all).
#   small: 3,200 training sentences (100 batches of 32) for 4 epochs instead of 20,000 for 12,
#          the prior weight's warm-up over 2 of them (half the run, as 6 of 12), the VAEs' KL
#          annealing over 3 (10 of 12) and the aggressive VAE's aggressive phase over 2 (5 of
#          12); 2 feature chains instead of 200; every evaluation and labelled split cut to its
#          first 2,000 sentences (valid, test, and the 10k labelled subset). Decoder sizes as
#          the protocol.
#   smoke: the same on a tiny decoder for minutes, to check the script.
SCALES = {
    "small": ["--config.data.max_train_sentences=3200", "--config.data.max_eval_sentences=2000",
              "--config.train.num_epochs=4", "--config.langevin.prior_weight_warmup_epochs=2",
              "--config.vae.kl_warmup_epochs=3", "--config.analysis.feature_chains=2",
              "--config.train.log_every_steps=25", "--config.train.checkpoint_every_steps=100"],
    "smoke": ["--config.data.max_train_sentences=320", "--config.data.max_eval_sentences=200",
              "--config.train.num_epochs=1", "--config.langevin.prior_weight_warmup_epochs=1",
              "--config.vae.kl_warmup_epochs=1", "--config.analysis.feature_chains=2",
              "--config.model.embed_dim=16", "--config.model.hidden_dim=16",
              "--config.model.latent_dim=4", "--config.langevin.num_steps=5",
              "--config.analysis.feature_steps=5", "--config.savae.refine_steps=2",
              "--config.vae.aggressive_max_steps=3", "--config.eval.num_samples=5",
              "--config.train.log_every_steps=5", "--config.train.checkpoint_every_steps=100"],
    "paper": [],
}
# The same, for one run only.
RUN_SCALES = {"small": {"vae_aggressive": ["--config.vae.aggressive_epochs=2"]}}
# --mode=classify: the labelled subsets are nested (each is the first lines of the 10k one), so
# with every split cut to 2,000 sentences the 10k subset is the 2k one: small leaves it out.
CLASSIFY_SCALES = {"small": ['--config.analysis.label_splits=("train_100","train_500",'
                             '"train_1000","train_2000")']}
# The authors' own cached 100-label features (bpucla/sri_text cache/cache_100_labels, their
# semi_sup_classification.py --use_cache 1), as docs/method.md §6 reports them.
AUTHORS = {"labels": 100, "test_accuracy": 0.872, "majority": 0.605}


def train_args(name: str, scale: str, data: list[str], workdir: str) -> list[str]:
  """The training command of one run at one scale: its flagfile, the scale's flags for every
  run, then those for this run only."""
  return [f"--flagfile={RUNS[name][0]}", *data, *SCALES[scale],
          *RUN_SCALES.get(scale, {}).get(name, []), f"--workdir={workdir}"]


def main(argv):
  del argv
  scale = _SCALE.value
  root = _WORKDIR.value or os.path.join("workdirs", f"short_yelp_{scale}")
  os.makedirs(root, exist_ok=True)
  times_path = os.path.join(root, "seconds.json")
  times = common.read_json(times_path) if os.path.exists(times_path) else {}
  data = [f"--config.data.source_dir={_SOURCE_DIR.value}"]
  for name, (_, label) in RUNS.items():
    if _ONLY.value and name not in _ONLY.value:
      continue
    workdir, log = os.path.join(root, name), os.path.join(root, f"{name}.log")
    times.setdefault(name, {})
    print(f"short-Yelp study: {label}: training in {workdir} (log {log})", flush=True)
    times[name]["train_s"] = times[name].get("train_s", 0.0) + common.run_srlm(
        train_args(name, scale, data, workdir), log)
    for mode, output in (("classify", "classification.json"), ("cluster", "cluster_test.json")):
      if not os.path.exists(os.path.join(workdir, output)):
        print(f"short-Yelp study: {label}: {mode}", flush=True)
        times[name][f"{mode}_s"] = common.run_srlm(
            [f"--mode={mode}", f"--workdir={workdir}", *data, "--config.analysis.split=test",
             *(CLASSIFY_SCALES.get(scale, []) if mode == "classify" else [])], log)
    with open(times_path, "w") as f:
      json.dump(times, f, indent=2)

  rows = []
  for name, (flagfile, label) in RUNS.items():
    workdir = os.path.join(root, name)
    path = os.path.join(workdir, "classification.json")
    if not os.path.exists(path):
      continue
    result = common.read_json(path)
    cluster = common.read_json(os.path.join(workdir, "cluster_test.json"))
    rows.append({"run": name, "method": label, "flagfile": flagfile,
                 "features": result["features"], "num_test": result["num_test"],
                 "majority_test_accuracy": result["majority_test_accuracy"],
                 "accuracy": {str(r["num_labels"]): r["test_accuracy"] for r in result["rows"]},
                 "cluster_accuracy": cluster["accuracy"], **times.get(name, {})})
  path = common.write_result(f"study_short_yelp_{scale}", {
      "command": f"launch/study_short_yelp.sh --scale={scale}", "scale_flags": SCALES[scale],
      "run_scale_flags": RUN_SCALES.get(scale, {}),
      "classify_scale_flags": CLASSIFY_SCALES.get(scale, []),
      "runs": {name: flagfile for name, (flagfile, _) in RUNS.items()}, "workdir": root,
      "authors_cached_features": AUTHORS, "rows": rows})
  counts = sorted({n for r in rows for n in r["accuracy"]}, key=int)
  print("| method | " + " | ".join(f"{n} labels" for n in counts)
        + " | clustering | train min | features + classify min |")
  print("|---|" + "---|" * (len(counts) + 3))
  for r in rows:
    print(f"| {r['method']} | " + " | ".join(f"{100 * r['accuracy'][n]:.1f}" for n in counts)
          + f" | {100 * r['cluster_accuracy']:.1f} | {r.get('train_s', 0) / 60:.1f} | "
          f"{(r.get('classify_s', 0) + r.get('cluster_s', 0)) / 60:.1f} |")
  if rows:
    print(f"majority class on test: {100 * rows[0]['majority_test_accuracy']:.1f}%; the "
          f"authors' cached features: {100 * AUTHORS['test_accuracy']:.1f}% with "
          f"{AUTHORS['labels']} labels")
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
