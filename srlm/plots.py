"""PNG figures written into the workdir: training curves and 2-D projections of features.

Uses matplotlib's object API (Figure, no pyplot), so no display or global backend is needed.
"""

import json
import os

import numpy as np

from srlm import reporting
from srlm.methods import base


def _read_metrics(path: str) -> list[dict]:
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:  # a line cut short by a crash; the rest is still worth plotting
        continue
  return records


def training_curves(workdir: str, curve: base.Curve | None = None) -> str | None:
  """WORKDIR/training_curves.png from metrics.jsonl: training NLL per token and validation
  reconstruction per token against the step, and beside them a method's own curve
  (`Report.curve`: the VAE's KL, SRI's chain travel), when given. Returns the path, or None
  when there are no metrics yet."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if not reporting.is_writer() or not os.path.exists(metrics_path):
    return None
  records = _read_metrics(metrics_path)
  train = [r for r in records if r.get("split") == "train"]
  valid = [r for r in records if r.get("split") == "valid"]
  if not train:
    return None
  second = curve
  figure = Figure(figsize=(10 if second else 5.5, 4), layout="constrained")
  axes = figure.subplots(1, 2 if second else 1, squeeze=False)[0]
  axes[0].plot([r["step"] for r in train], [r["nll_per_token"] for r in train],
               label="train NLL/token (at the chain's end)")
  if valid:
    axes[0].plot([r["step"] for r in valid], [r["rec_per_token"] for r in valid], "o-",
                 label="valid REC/token")
  axes[0].set(xlabel="step", ylabel="nats per token")
  axes[0].legend()
  if second:
    key, label = second.metric, second.label
    axes[1].plot([r["step"] for r in train], [r[key] for r in train], label=f"train {label}")
    if valid and second.in_valid:
      axes[1].plot([r["step"] for r in valid], [r[key] for r in valid], "o-",
                   label=f"valid {label}")
    axes[1].set(xlabel="step", ylabel=label)
    axes[1].legend()
  return reporting.save_figure(figure, os.path.join(workdir, "training_curves.png"))


def schedule(workdir: str, vector: base.Schedule) -> str | None:
  """WORKDIR/schedule.png from metrics.jsonl: a method's vector metric (`Report.schedule`: the
  learned step sizes s_k) against its index k, one line per epoch (its last training record).
  Returns the path, or None without data."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if not reporting.is_writer() or not os.path.exists(metrics_path):
    return None
  last_of_epoch = {}
  for r in _read_metrics(metrics_path):
    if r.get("split") == "train":
      last_of_epoch[r["epoch"]] = r
  if not last_of_epoch:
    return None
  figure = Figure(figsize=(6, 4), layout="constrained")
  axes = figure.subplots()
  colours = _epoch_colours(len(last_of_epoch))
  for colour, (epoch, record) in zip(colours, sorted(last_of_epoch.items())):
    axes.plot(range(len(vector.metrics)), [record[k] for k in vector.metrics], "o-", ms=3,
              color=colour, label=f"epoch {epoch} (step {record['step']})")
  axes.set(xlabel="chain step k", ylabel=vector.label, yscale="log")
  axes.legend(fontsize="small", ncol=2 if len(last_of_epoch) > 8 else 1)
  return reporting.save_figure(figure, os.path.join(workdir, "schedule.png"))


def _epoch_colours(count: int) -> list:
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  return [colormaps["viridis"](i / max(count - 1, 1)) for i in range(count)]


def feature_projection(features_NxD: np.ndarray, labels_N: np.ndarray, path: str,
                       title: str) -> str:
  """A scatter plot of the features' first two principal components, coloured by label
  (grey when unlabelled)."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  # Here, not at the top: scikit-learn takes seconds to import, and training imports plots.
  from srlm import probes  # pylint: disable=import-outside-toplevel
  projected = probes.principal_components(features_NxD, 2)
  if projected.shape[1] == 1:  # a 1-D code is plotted against zero
    projected = np.concatenate([projected, np.zeros_like(projected)], axis=1)
  figure = Figure(figsize=(5.5, 5), layout="constrained")
  axes = figure.subplots()
  if np.all(labels_N < 0):
    axes.scatter(projected[:, 0], projected[:, 1], s=4, c="grey", alpha=0.5)
  else:
    for label in np.unique(labels_N):
      rows = labels_N == label
      axes.scatter(projected[rows, 0], projected[rows, 1], s=4, alpha=0.5,
                   label=f"label {label}")
    axes.legend(markerscale=3)
  axes.set(xlabel="principal component 1", ylabel="principal component 2", title=title)
  return reporting.save_figure(figure, path)
