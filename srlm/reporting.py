"""Where results go and how progress reads: metrics.jsonl, atomic JSON files, durations."""

import json
import os
from typing import Any


class MetricWriter:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def write_json_atomic(path: str, value: Any) -> None:
  """Writes JSON to a temporary file and renames it: readers never see half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def format_seconds(seconds: float) -> str:
  """H:MM:SS, for progress lines and ETAs."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
