"""Where results go and how progress reads: metrics.jsonl, atomic files, figures, durations.

The one "only process 0 writes" rule lives here: every writer below is a no-op on the other
processes of a multi-process run, so callers never check.
"""

import json
import os
from typing import Any

import jax
import numpy as np


def is_writer() -> bool:
  """Whether this process writes files (metrics, results, plots): process 0 only."""
  return jax.process_index() == 0


class MetricWriter:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, record: dict[str, Any]) -> None:
    if not is_writer():
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def _replace_atomically(path: str, write, mode: str) -> None:
  """Writes through write(file) to a temporary file, then renames it: readers never see half a
  file, and a crash leaves the previous version."""
  tmp = f"{path}.tmp"
  with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
    write(f)
  os.replace(tmp, path)


def write_json_atomic(path: str, value: Any) -> None:
  if is_writer():
    _replace_atomically(path, lambda f: json.dump(value, f, indent=2, sort_keys=True), "w")


def write_lines(path: str, lines: list[str]) -> None:
  """A UTF-8 text file, one line each."""
  if is_writer():
    _replace_atomically(path, lambda f: f.write("\n".join(lines) + "\n"), "w")


def write_npy(path: str, array: np.ndarray) -> None:
  if is_writer():
    _replace_atomically(path, lambda f: np.save(f, array), "wb")


def make_dirs(path: str) -> None:
  if is_writer():
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
  """Deletes a file if it exists."""
  if is_writer() and os.path.exists(path):
    os.remove(path)


def save_figure(figure, path: str) -> str:
  """A matplotlib Figure as a PNG; returns the path."""
  if is_writer():
    _replace_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100), "wb")
  return path


def format_seconds(seconds: float) -> str:
  """H:MM:SS, for progress lines and ETAs."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
