"""Where the short-run ELBO of fitted step sizes changes: per sentence, not on the mean.

    python benchmarks/fitted_elbo_spread.py --workdir=workdirs/study_small/sri

For the first 200 sentences of valid and test, one chain per sentence (key 0), the short-run
ELBO under the run's own step sizes and under those --mode=fit_step_sizes saved, and the
per-sentence difference: mean, median, 5% / 95% quantiles, extremes, and the share of the
mean difference that its 10 largest entries make. Writes
benchmarks/results/fitted_elbo_spread_<backend>.json.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import config as config_lib  # pylint: disable=wrong-import-position
from srlm import runs  # pylint: disable=wrong-import-position
from srlm import fit  # pylint: disable=wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/study_small/sri", "A fitted SRI run.")
_SENTENCES = flags.DEFINE_integer("sentences", 200, "First N sentences of each split.")


def main(argv):
  del argv
  config = config_lib.load_run_config(_WORKDIR.value)
  run = runs.restore_trained(config, _WORKDIR.value)
  fitted = fit.with_fitted(_WORKDIR.value, run)
  schedules = {name: np.log(np.asarray(r.method.chain.step_sizes(r.params)))
               for name, r in (("run", run), ("fitted", fitted))}
  rows = []
  for split in ("valid", "test"):
    sentences = run.corpus.splits[split].head(_SENTENCES.value)
    values = {name: fit.split_elbos(config, run, log_step_sizes, sentences,
                                           jax.random.key(0))
              for name, log_step_sizes in schedules.items()}
    gain = values["fitted"] - values["run"]
    row = {"split": split, "sentences": len(sentences),
           "mean_run": float(values["run"].mean()), "mean_fitted": float(values["fitted"].mean()),
           "gain_mean": float(gain.mean()), "gain_median": float(np.median(gain)),
           "gain_p05": float(np.percentile(gain, 5)), "gain_p95": float(np.percentile(gain, 95)),
           "gain_min": float(gain.min()), "gain_max": float(gain.max()),
           "top10_share_of_gain": float(np.sort(gain)[::-1][:10].sum() / gain.sum())}
    rows.append(row)
    print(row, flush=True)
  print("wrote", common.write_result("fitted_elbo_spread",
                                     {"workdir": _WORKDIR.value, "rows": rows}))


if __name__ == "__main__":
  app.run(main)
