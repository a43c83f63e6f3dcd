"""SIGTERM and SIGINT in the modes that evaluate or analyse (every mode but train, whose loop
saves a checkpoint first: srlm.train.StopOnSignal): the process ends within moments with exit
code 128 + N and one line, no traceback.

Python runs its signal handlers in the main thread between bytecodes; while that thread waits
for the device (an AIS batch is minutes on a CPU) no handler runs. So the signal's wakeup byte
(signal.set_wakeup_fd) wakes a thread of ours, which waits for any result or journal line being
written (reporting.WRITE_LOCK: no half line, no stray temporary file), says what was kept, and
ends the process. The finished batches are in the mode's journal (srlm.journal): the same
command resumes; the batch running is lost. In a multi-process job the signalled process tells
the others through the distributed runtime's key-value store, and they all exit, process 0
(which hosts that store) last.
"""

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Iterator

import jax

from srlm import reporting

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The modes that journal their finished work (srlm.journal); the others start again.
JOURNALED_MODES = ("eval", "bdmc", "features", "fit_step_sizes")
_STOP_KEY = "srlm_stop_signal"
_LEFT_KEY = "srlm_stopped_process"
_LEAVE_WAIT_S = 10  # process 0 waits at most this long for the other processes to leave
_WRITE_WAIT_S = 30  # at most this long for a write in progress (a result JSON: milliseconds)
# Held by the one thread that ends the process: the signalled process's own key-value watcher
# sees the key it just set, and must not say the signal came from another process.
_ENDING = threading.Lock()


def _distributed_client():
  """The distributed runtime's client in a multi-process job, else None."""
  if jax.process_count() == 1:
    return None
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def _exit(signum: int, mode: str, source: str) -> None:
  with contextlib.ExitStack() as stack:
    if reporting.WRITE_LOCK.acquire(timeout=_WRITE_WAIT_S):  # pylint: disable=consider-using-with
      stack.callback(reporting.WRITE_LOCK.release)
    name = signal.Signals(signum).name
    # One write (print writes the text and its newline separately): the main thread may log a
    # progress line meanwhile, and must not land between them.
    kept = (": the finished batches are journaled in the workdir; run the same command again "
            "to resume" if mode in JOURNALED_MODES else "; run the same command again")
    sys.stderr.write(f"srlm: --mode={mode} stopped by {name}{source}{kept}.\n")
    sys.stderr.flush()
    sys.stdout.flush()
    _leave_job()
    os._exit(128 + signum)  # pylint: disable=protected-access


def _leave_job() -> None:
  """In a multi-process job, process 0 leaves last: it hosts the job's coordination service,
  whose loss ends the other processes with an abort (not 128 + N, and before they say why)."""
  client = _distributed_client()
  if client is None:
    return
  try:
    if jax.process_index() == 0:
      deadline = time.monotonic() + _LEAVE_WAIT_S  # for all of them together
      for index in range(1, jax.process_count()):
        wait_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        client.blocking_key_value_get(f"{_LEFT_KEY}/{index}", max(wait_ms, 1))
    else:
      client.key_value_set(f"{_LEFT_KEY}/{jax.process_index()}", "1")
  except Exception:  # pylint: disable=broad-except  # a process gone already: leave anyway
    pass


def _watch_signals(read_fd: int, mode: str) -> None:
  while True:
    data = os.read(read_fd, 1)
    if not data:  # the mode finished: the write end was closed
      os.close(read_fd)
      return
    if data[0] in STOP_SIGNALS:
      break
  if not _ENDING.acquire(blocking=False):  # pylint: disable=consider-using-with
    return  # another process's signal is already ending this one
  client = _distributed_client()
  if client is not None:
    try:
      client.key_value_set(_STOP_KEY, str(data[0]))
    except Exception:  # pylint: disable=broad-except  # the job is ending already
      pass
  _exit(data[0], mode, "")


def _watch_other_processes(client, mode: str) -> None:
  while True:
    try:
      value = client.blocking_key_value_get(_STOP_KEY, 3_600_000)
    except Exception:  # pylint: disable=broad-except  # a timeout: keep waiting
      continue
    if _ENDING.acquire(blocking=False):  # pylint: disable=consider-using-with
      _exit(int(value), mode, " (sent to another process of the job)")
    return


@contextlib.contextmanager
def exit_on_signal(mode: str) -> Iterator[None]:
  """While in the context, SIGTERM or SIGINT ends the process (see the module's docstring).
  Outside the main thread (where Python cannot take signals) it does nothing."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  previous = {s: signal.signal(s, lambda *_: None) for s in STOP_SIGNALS}
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  threading.Thread(target=_watch_signals, args=(read_fd, mode), daemon=True,
                   name="srlm-signals").start()
  client = _distributed_client()
  if client is not None:
    threading.Thread(target=_watch_other_processes, args=(client, mode), daemon=True,
                     name="srlm-job-signals").start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    for s, handler in previous.items():
      signal.signal(s, handler)
    os.close(write_fd)
