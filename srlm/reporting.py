"""Where results go and how progress reads: metrics.jsonl, atomic JSON files, durations.

In a multi-process run only process 0 writes; the others' writes are no-ops.
"""

import json
import os
from typing import Any

import jax


class MetricWriter:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, record: dict[str, Any]) -> None:
    if jax.process_index() != 0:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def write_json_atomic(path: str, value: Any) -> None:
  """Writes JSON to a temporary file and renames it: readers never see half a file."""
  if jax.process_index() != 0:
    return
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def format_seconds(seconds: float) -> str:
  """H:MM:SS, for progress lines and ETAs."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
