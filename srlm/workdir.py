"""A run's workdir as a resource that several processes and users share: checked before any
work, and held by one trainer at a time.

`check_writable` turns a workdir that is a file, or one that cannot be written, into one
message before anything is computed. `TrainerLock` is an exclusive advisory lock (flock) on
WORKDIR/.trainer.lock, held by a training run for its whole life and released by the kernel on
any exit, kill -9 included; the file records the holder (host, pid, start time) so that a
second trainer can name it. A lock file left by a process that is gone is simply taken over,
with a log line. Read-only modes (eval, the analyses) take no lock: they read the latest
complete checkpoint, which a trainer never modifies.
"""

import datetime
import errno
import fcntl
import json
import os
import socket

from absl import logging

from srlm.errors import UserError

LOCK_NAME = ".trainer.lock"


def check_writable(workdir: str, create: bool = True, flag: str = "--workdir") -> None:
  """Checks that files can be created in workdir (creating it if `create`; a missing workdir
  is left to the caller otherwise); raises UserError naming it if not."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"{flag}={workdir} is a file, not a directory: choose another path.")
  if not create and not os.path.exists(workdir):
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"{flag}={workdir} cannot be written ({e.strerror}): fix its permissions "
                    "or choose another directory.") from None


class TrainerLock:
  """`with TrainerLock(workdir):` holds the workdir's trainer lock, or raises UserError naming
  the process that holds it."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._file = None

  def __enter__(self) -> "TrainerLock":
    self._file = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(self._file)
      self._file.close()
      self._file = None
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise UserError(f"cannot lock {self.path}: {e.strerror}") from None
      raise UserError(
          f"another trainer is running in this workdir ({_describe(holder)}; lock "
          f"{self.path}). Wait for it to finish or stop it; evaluation and the analyses may run "
          "beside it.") from None
    previous = _read_holder(self._file)
    if previous:
      logging.info("Took over the workdir lock of %s, which is no longer running.",
                   _describe(previous))
    self._file.seek(0)
    self._file.truncate()
    json.dump({"host": socket.gethostname(), "pid": os.getpid(),
               "started": datetime.datetime.now().isoformat(timespec="seconds")}, self._file)
    self._file.flush()
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      # Emptied first, so that a later trainer does not report a stale holder as taken over.
      self._file.seek(0)
      self._file.truncate()
      self._file.flush()
      fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def _read_holder(file) -> dict:
  try:
    file.seek(0)
    text = file.read()
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return "holder unknown"
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{holder.get('started')}")
