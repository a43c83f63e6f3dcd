"""Command line: `python -m srlm.main --flagfile=launch/ptb.flags --workdir=DIR`.

The only reader of absl flags. Builds the typed Config from `--config.<section>.<field>`
flags (flagfiles may include flagfiles) and calls the library. Re-running the same command
resumes from the workdir's latest checkpoint. User errors (bad flags, files, checkpoints) end
with a one-paragraph message and exit code 2; a run stopped by SIGTERM/SIGINT saves a
checkpoint and exits with 128 + the signal number.
"""

import errno
import logging as logging_std
import os
import signal
import sys
import textwrap
import traceback as traceback_lib

from absl import app
from absl import flags
from absl import logging

from srlm import config as config_lib
from srlm.errors import DivergenceError, StorageError, UserError

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl and checkpoints; an existing "
    "run there is resumed.")
_MODE = flags.DEFINE_enum(
    "mode", "train",
    ["train", "eval", "fit_step_sizes", "sample", "reconstruct", "interpolate", "features",
     "classify", "cluster"],
    "train: train or resume the run in --workdir (training_curves.png is redrawn each epoch). "
    "The others restore its latest checkpoint with the run's config.json and any --config.* "
    "flags given on top: eval writes eval_<split>.json (importance-sampled NLL/PPL, KL, MI, "
    "AU, REC; with --config.eval.step_sizes=fitted, eval_<split>_fitted.json); "
    "fit_step_sizes (SRI runs) fits the chain's step sizes to the validation split with the "
    "decoder fixed and writes step_sizes/fitted_<step>.json; sample writes samples.txt "
    "(prior samples); reconstruct writes "
    "reconstructions.tsv; interpolate writes interpolations.txt; features writes "
    "features_<split>.npy, labels_<split>.npy and features_<split>.png; classify writes "
    "classification.json; cluster writes cluster_<split>.json (see --config.analysis.*).")

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start JAX's multi-process runtime (jax.distributed.initialize()) "
    "before anything else: one process per host (or per GPU), all running the same command. "
    "The launchers in launch/ set SRLM_DISTRIBUTED=1, which does the same.")

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_STORAGE = 4


def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
  """Prints the one message and exits. Everything that writes has been closed by then (the
  library closes its checkpointer on every path), so the process exits at once: at
  interpreter teardown, I/O futures abandoned by a failed checkpoint restore would otherwise
  be collected and logged, at length."""
  print(f"srlm: error: {message}", file=sys.stderr)
  logging_std.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def _fail_on_flag_error(error: Exception) -> None:
  _fail(f"{config_lib.describe_flag_error(error)}. `python -m srlm.main --help` lists every "
        "flag and config field, with types and defaults.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with flag and flagfile errors as one message instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except config_lib.FLAG_ERRORS as e:
    _fail_on_flag_error(e)


class _QuietLibraries(logging_std.Filter):
  """Keeps the libraries' chatter out of the log: Orbax's and TFDS's INFO lines, and the
  warnings that every run would show and no user can act on. Their other warnings show."""

  # (path part, message part) of records that inform no one.
  NOISE = (
      ("/jax/_src/xla_bridge", "Unable to initialize backend"),  # no TPU on this machine
      ("/tensorflow_datasets/", "has no dataset_info.json"),  # before the first preparation
      ("/orbax/", "read_only=True"),  # evaluation opens checkpoints read-only on purpose
      ("/orbax/", "Given directory is read only"),
      ("/asyncio/", "exception was never retrieved"),  # a failed restore's abandoned reads
  )

  def filter(self, record: logging_std.LogRecord) -> bool:
    message = record.getMessage()
    if any(path in record.pathname and text in message for path, text in self.NOISE):
      return False
    return record.levelno >= logging_std.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))


def _from_orbax_io(exc_type, value, tb) -> bool:
  """Whether an exception comes from Orbax's or asyncio's I/O machinery."""
  files = [frame.filename for frame in traceback_lib.extract_tb(tb)] if tb else []
  return (any("/orbax/" in f or "/asyncio/" in f for f in files)
          or (issubclass(exc_type, RuntimeError) and str(value) == "Event loop is closed"))


def _quiet_checkpoint_io_noise() -> None:
  """When a checkpoint fails to restore (or save), TensorStore's reads and writes still in
  flight fail later in Orbax's coroutines and threads, and Python prints a traceback for each
  (tens to hundreds of lines) around srlm's one-line message, which already says what
  happened. Those are dropped; every other uncaught or unraisable exception still prints."""
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

  def on_exception(exc_type, value, tb):
    if not _from_orbax_io(exc_type, value, tb):
      excepthook(exc_type, value, tb)

  def on_unraisable(unraisable):
    if not _from_orbax_io(unraisable.exc_type, unraisable.exc_value,
                          unraisable.exc_traceback):
      unraisablehook(unraisable)

  sys.excepthook, sys.unraisablehook = on_exception, on_unraisable


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _quiet_checkpoint_io_noise()
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags are written --name=value.")
  if not _WORKDIR.value:
    _fail("--workdir is required: the directory where the run's checkpoints and metrics go.")
  # Imported here to keep `--help` fast.
  from srlm import analysis  # pylint: disable=import-outside-toplevel
  from srlm import evaluate  # pylint: disable=import-outside-toplevel
  from srlm import parallel  # pylint: disable=import-outside-toplevel
  from srlm import reporting  # pylint: disable=import-outside-toplevel
  from srlm import step_sizes  # pylint: disable=import-outside-toplevel
  from srlm import train  # pylint: disable=import-outside-toplevel
  from srlm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  try:
    if parallel.distributed_requested(_DISTRIBUTED.value):
      parallel.initialize_distributed()
      if not reporting.is_writer():
        logging.set_verbosity(logging.WARNING)  # one log per run: process 0's
    # Every mode writes into the workdir: find out now, not after the work.
    workdir_lib.check_writable(_WORKDIR.value, create=_MODE.value == "train")
    if _MODE.value != "train":
      config = config_lib.load_run_config(_WORKDIR.value, _given_config_overrides())
      if _MODE.value == "eval":
        result = evaluate.evaluate_workdir(config, _WORKDIR.value)
        if reporting.is_writer():
          _print_eval(result)
      elif _MODE.value == "fit_step_sizes":
        result = step_sizes.fit_workdir(config, _WORKDIR.value)
        if reporting.is_writer():
          print(f"fitted step sizes for checkpoint step {result['checkpoint_step']} on "
                f"{result['valid_sentences']} validation sentences ({result['fit_steps']} "
                f"updates): valid short-run ELBO mean {result['valid_elbo_before']:.2f} -> "
                f"{result['valid_elbo_after']:.2f}, median "
                f"{result['valid_elbo_median_before']:.2f} -> "
                f"{result['valid_elbo_median_after']:.2f}\n"
                f"  before {_rounded(result['initial_step_sizes'])}\n"
                f"  after  {_rounded(result['step_sizes'])}\n"
                f"  written to {result['path']}; evaluate with --mode=eval "
                "--config.eval.step_sizes=fitted")
      else:
        text, path = analysis.run_mode(_MODE.value, config, _WORKDIR.value)
        if reporting.is_writer():
          print(f"{text}\n(written to {path})")
      return
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except DivergenceError as e:
    _fail(str(e), EXIT_DIVERGED)
  except StorageError as e:
    _fail(str(e), EXIT_STORAGE)
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    _fail(f"cannot write {e.filename or 'a file'}: {e.strerror}. The checkpoints already "
          "written are intact: free space and re-run the same command to resume.", EXIT_STORAGE)
  except UserError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    _fail("interrupted (a second signal): stopped without saving; the previous checkpoint "
          "is intact.", 128 + signal.SIGINT)
  logging.info("Run %s at step %d; workdir %s", result["status"], result["step"],
               _WORKDIR.value)
  if result["status"] == "preempted":
    sys.exit(128 + result["signal"])


def _given_config_overrides() -> dict[str, object]:
  """The --config.<section>.<field> flags given on the command line or in flagfiles."""
  prefix = "config."
  return {name[len(prefix):]: flags.FLAGS[name].value for name in flags.FLAGS
          if name.startswith(prefix) and flags.FLAGS[name].present}


def _rounded(values: list[float]) -> str:
  return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _print_eval(result: dict) -> None:
  print(f"eval {result['split']}: checkpoint step {result['checkpoint_step']}, "
        f"{result['num_sentences']} sentences, {result['num_tokens']} tokens, "
        f"{result['model_kind']}, {result['nll_samples']}\n"
        f"  NLL {result['nll']:.2f}  PPL {result['ppl']:.2f}  KL {result['kl']:.2f}  "
        f"MI {result['mi']:.3f}  AU {result['au']}  REC {result['rec']:.2f}\n"
        + (f"  non-finite NLL for {result['non_finite_nll_sentences']} sentence(s), source "
           f"lines {result['non_finite_nll_lines'][:10]} (all in the JSON)\n"
           if result["non_finite_nll_sentences"] else "")
        + (f"  chain step sizes: {result['step_sizes_source']} "
           f"{_rounded(result['step_sizes'])}\n" if "step_sizes" in result else "") +
        f"  written to {result['path']}")


_CONFIG = None
HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def _print_help() -> None:
  """The srlm flags and every config field, readably (absl's help shows --config as a repr)."""
  lines = [__doc__, "Flags:", "  --flagfile=FILE: flags from FILE, one per line; a flagfile may "
           "include others."]
  for name in ("workdir", "mode", "distributed"):
    flag = flags.FLAGS[name]
    lines.append(f"  --{name} (default {flag.default!r})")
    lines += textwrap.wrap(flag.help, 92, initial_indent="      ", subsequent_indent="      ")
  lines += ["", "Config fields, each a flag (--config.train.seed=1; tuples as "
            "--config.data.buckets=(12,22)); a later value replaces an earlier one:",
            config_lib.describe_fields()]
  print("\n".join(lines))


def run() -> None:
  global _CONFIG
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    _print_help()
    sys.exit(0)
  try:
    # ml_collections registers the --config.x.y overrides it finds in argv (and flagfiles)
    # when the flag is defined, and raises there for an unknown field.
    _CONFIG = config_lib.define_config_flag(flags.FLAGS, sys.argv)
  except config_lib.FLAG_ERRORS as e:
    _fail_on_flag_error(e)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
