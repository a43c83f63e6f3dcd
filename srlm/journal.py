"""Journals: the finished batches of a long evaluation, kept in the workdir as they complete,
so that a run stopped part-way (a signal, `kill -9`, a preempted machine) resumes where it
stopped. Used by --mode=eval (either estimator), --mode=bdmc, --mode=features and
--mode=fit_step_sizes (each update, the state it leaves).

A journal is WORKDIR/journals/<result>.<key>.jsonl, where <key> hashes every setting that
changes the result: the checkpoint step, the run's whole config (less eval.keep_journal), the
matmul precision and anything the caller adds (fitted step sizes). Its first line holds those
settings; each further line one batch's outputs (raw bytes, base64: reused values are bit for
bit what was computed). Each batch's randomness is fold_in(key, batch index), never a count of
the batches run so far in this process, so a resumed run computes what an uninterrupted one
does. A line cut short by a crash is skipped (that batch is run again). Runs with other
settings use another file, so concurrent evaluations never mix, and one that finds only
journals of other settings says which settings differ. The journal is removed once the final
result is written, unless --config.eval.keep_journal.
"""

import base64
import glob
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from srlm import config as config_lib
from srlm import reporting
from srlm.config import Config

DIRECTORY = "journals"


def run_settings(config: Config, checkpoint_step: int, precision: str,
                 **extra: Any) -> dict[str, Any]:
  """The settings a journal is keyed by: everything that can change an evaluation's numbers."""
  values = config_lib.to_dict(config)
  values["eval"].pop("keep_journal", None)
  return json.loads(json.dumps({"checkpoint_step": checkpoint_step,
                                "matmul_precision": precision, "config": values, **extra},
                               sort_keys=True, default=str))


def reuse_or_run(journal: "Journal | None", batch: str,
                 run: Callable[[], Any]) -> tuple[Any, bool]:
  """The batch's journaled outputs, or run()'s (with a journal, a dict of arrays), journaled
  with the seconds it took; and whether they were computed now. Without a journal, run()'s
  output, whatever its structure."""
  if journal is not None and batch in journal.done:
    return journal.done[batch], False
  start = time.time()
  values = run()
  if journal is not None:
    journal.record(batch, values, time.time() - start)
  return values, True


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for name, value in settings.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{name}."))
    else:
      out[f"{prefix}{name}"] = value
  return out


def _encode(values: Mapping[str, np.ndarray]) -> dict[str, list]:
  # np.asarray, not np.ascontiguousarray: that makes a 0-d value (a scalar) 1-d.
  return {name: [str(v.dtype), list(v.shape), base64.b64encode(v.tobytes()).decode("ascii")]
          for name, v in ((n, np.asarray(v, order="C")) for n, v in values.items())}


def _decode(values: Mapping[str, list]) -> dict[str, np.ndarray]:
  return {name: np.frombuffer(base64.b64decode(data), dtype).reshape(shape).copy()
          for name, (dtype, shape, data) in values.items()}


class Journal:
  """The finished batches of one result under one set of settings.

  `done` maps a batch's key (a string) to its outputs, a dict of arrays; `record` adds one,
  appended to the file at once (flushed and fsynced: it survives `kill -9`). Only the writing
  process (process 0) writes; every process reads the same file, so all skip the same batches.
  """

  def __init__(self, workdir: str, result: str, settings: dict[str, Any], keep: bool = False):
    text = json.dumps(settings, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    directory = os.path.join(workdir, DIRECTORY)
    self.path = os.path.join(directory, f"{result}.{key}.jsonl")
    self.result, self.keep, self.settings = result, keep, settings
    self.done: dict[str, dict[str, np.ndarray]] = {}
    self.seconds: dict[str, float] = {}  # each batch's compute seconds, in whichever run
    self.computed = 0  # batches this process ran (and journaled)
    self._file = None
    if os.path.exists(self.path):
      self._read()
    else:
      self._say_why_afresh(directory)
    if reporting.is_writer():
      os.makedirs(directory, exist_ok=True)
    if jax.process_count() > 1:  # every process has read the file before process 0 appends
      multihost_utils.sync_global_devices(f"srlm: journal {result} read")

  def _read(self) -> None:
    with open(self.path, encoding="utf-8") as f:
      lines = f.read().split("\n")
    for line in lines[1:]:
      try:
        record = json.loads(line)
        self.done[record["batch"]] = _decode(record["values"])
        self.seconds[record["batch"]] = float(record["seconds"])
      except (ValueError, KeyError, TypeError):  # a line cut short by a crash: run it again
        continue
    if self.done:
      logging.info("%s: resuming from %s: %d finished batch(es) reused.", self.result,
                   self.path, len(self.done))

  def _say_why_afresh(self, directory: str) -> None:
    """Logs which settings differ from those of journals this result already has."""
    mine = _flat(self.settings)
    for path in sorted(glob.glob(os.path.join(directory, f"{self.result}.*.jsonl"))):
      try:
        with open(path, encoding="utf-8") as f:
          theirs = _flat(json.loads(f.readline())["settings"])
      except (ValueError, KeyError, OSError):
        continue
      changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
      logging.info("%s: %s holds another run's batches (%s), not reused; starting afresh.",
                   self.result, path, "; ".join(f"{k}: {theirs.get(k)} -> {mine.get(k)}"
                                                for k in changed[:6]))

  def record(self, batch: str, values: Mapping[str, np.ndarray], seconds: float) -> None:
    """Journals one finished batch's outputs and the seconds it took."""
    self.done[batch] = {name: np.asarray(v) for name, v in values.items()}
    self.seconds[batch] = seconds
    self.computed += 1
    if not reporting.is_writer():
      return
    line = json.dumps({"batch": batch, "seconds": seconds,
                       "values": _encode(self.done[batch])}) + "\n"
    with reporting.WRITE_LOCK:  # a signal's exit waits for the line to be whole
      if self._file is None:
        fresh = not os.path.exists(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if fresh:
          self._file.write(json.dumps({"settings": self.settings}, sort_keys=True) + "\n")
        elif self._file.tell() and not _ends_with_newline(self.path):
          self._file.write("\n")  # ends a line cut short by a crash (skipped when read)
      self._file.write(line)
      self._file.flush()
      os.fsync(self._file.fileno())

  def total_seconds(self, prefix: str = "") -> float:
    """The compute seconds of the batches whose key starts with prefix, over every run."""
    return sum(s for batch, s in self.seconds.items() if batch.startswith(prefix))

  def close(self) -> None:
    """After the final result is written: says how much was reused, and removes the file
    unless asked to keep it."""
    reused = len(self.done) - self.computed
    if reused:
      logging.info("%s: %d of %d batches reused from %s, %d computed now.", self.result,
                   reused, len(self.done), self.path, self.computed)
    if self._file is not None:
      self._file.close()
      self._file = None
    if not self.keep and reporting.is_writer() and os.path.exists(self.path):
      os.remove(self.path)


def _ends_with_newline(path: str) -> bool:
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"
