"""Whether tests/ais_test.py's convergence test holds for any seed, not just the suite's: its
run over --seeds seeds, each claim's statistic as mean, standard deviation, min and max, and
its margin to the test's bound in standard deviations (the test's bounds are at least 4 away).
Writes benchmarks/results/ais_sandwich_seeds_<backend>.json.

    python benchmarks/ais_sandwich_seeds.py --seeds=20
"""

import os
import statistics
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import common  # pylint: disable=wrong-import-position
import ais_test  # pylint: disable=wrong-import-position

_SEEDS = flags.DEFINE_integer("seeds", 20, "Seeds to run (0 is the suite's).")


def main(argv):
  del argv
  runs, sandwich_failures = [], []
  for seed in range(_SEEDS.value):
    stats, failures = ais_test.sandwich_statistics(seed)
    runs.append(stats)
    sandwich_failures += [f"seed {seed}: {f}" for f in failures]
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()), flush=True)
  claims = {}
  for name, (op, bound) in ais_test.CONVERGENCE_CLAIMS.items():
    values = [r[name] for r in runs]
    mean, sd = statistics.mean(values), statistics.stdev(values)
    margin = (mean - bound if op == ">" else bound - mean) / sd if sd else float("inf")
    held = sum(v > bound if op == ">" else v < bound for v in values)
    claims[name] = {"claim": f"{op} {bound}", "mean": mean, "sd": sd, "min": min(values),
                    "max": max(values), "margin_sd": margin, "held": held}
    print(f"{name} {op} {bound}: {mean:.3f} +- {sd:.3f} [{min(values):.3f}, {max(values):.3f}]"
          f", {margin:.1f} SD from the bound, held in {held}/{len(values)}")
  print(f"sandwich (within 4 standard errors): {len(sandwich_failures)} failures "
        f"{sandwich_failures}")
  path = common.write_result("ais_sandwich_seeds", {
      "seeds": _SEEDS.value, "claims": claims, "sandwich_failures": sandwich_failures,
      "runs": runs})
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
