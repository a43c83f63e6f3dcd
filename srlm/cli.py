"""The command line: `python -m srlm.main --flagfile=launch/ptb.flags --workdir=DIR`.

The only reader of flags. `main(argv)` defines srlm's flags on a FlagValues of its own (never
absl's global FLAGS, so it can be called again, in-process, by tests and notebooks), builds
the typed Config from `--config.<section>.<field>` flags (flagfiles may include flagfiles),
makes the run's devices (the mesh) once, runs the mode from MODES, and returns the exit code;
only `run()`, the console entry point, exits. Re-running the same command resumes from the
workdir's latest checkpoint.

Exit codes (README's table): 0 done; 2 a user error (bad flags, flagfiles, files, configs or
checkpoints); 3 training diverged; 4 the disk is full; 128 + N stopped by signal N (a
checkpoint saved; a second signal stops without saving). Every error ends in one line
`srlm: error: ...`, never a traceback, whichever stage finds it: while flags are defined
(ml_collections reads --config.* overrides then), parsed, or while the mode runs.
"""

import dataclasses
import errno
import logging as logging_std
import os
import re
import signal
import sys
import textwrap
import traceback as traceback_lib
from typing import Any, Callable, NamedTuple, Sequence

from absl import flags
from absl import logging
from ml_collections import config_flags

from srlm import config as config_lib
from srlm.errors import ConfigError, DivergenceError, StorageError, UserError

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_STORAGE = 4


# What absl and ml_collections raise for a bad flag, flag value, --config field or flagfile.
FLAG_ERRORS = (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError)


def describe_flag_error(error: Exception) -> str:
  """One line for a FLAG_ERRORS exception, naming the flag or file (and, for an unknown
  --config field, the fields its section has)."""
  if isinstance(error, OSError):
    return f"cannot read flagfile {error.filename}: {error.strerror}"
  if isinstance(error, flags.Error):
    return str(error)
  text = str(error.args[0] if error.args else error)
  section = re.search(r"Attribute <class '[\w.]*\.Config'>\.(\w+) does not exist", text)
  if section:
    names = ", ".join(f.name for f in dataclasses.fields(config_lib.Config))
    return f"unknown config section --config.{section.group(1)}; the sections are: {names}"
  unknown = re.search(r"Field (\w+) not found on dataclass <class '[\w.]*\.(\w+)'>", text)
  sections = {config_lib.section_type(f).__name__: (f.name, config_lib.section_type(f))
              for f in dataclasses.fields(config_lib.Config)}
  if unknown and unknown.group(2) in sections:
    section, section_type = sections[unknown.group(2)]
    known = ", ".join(f.name for f in dataclasses.fields(section_type))
    return (f"unknown config field --config.{section}.{unknown.group(1)}; "
            f"--config.{section} has: {known}")
  return f"bad --config flag: {text}"


def define_config_flag(flag_values: flags.FlagValues, argv: Sequence[str]):
  """Defines --config (and its --config.x.y overrides, read off argv) on flag_values.

  A later occurrence of a flag replaces an earlier one, whatever its type: ml_collections
  defines tuple fields as absl multi-flags, which would append a command-line value to a
  flagfile's (--config.data.buckets=(12,17) after a flagfile's (22,84) gave (22,84,12,17)).
  """
  check_flagfiles(argv)
  holder = config_flags.DEFINE_config_dataclass(
      "config", config_lib.Config(), "The run's config; set fields as --config.train.seed=1.",
      flag_values=flag_values, sys_argv=list(argv))
  for name in list(flag_values):
    flag = flag_values[name]
    if name.startswith("config.") and isinstance(flag, flags.MultiFlag):
      flag.parse = _replacing_parse(flag)
  return holder


def _replacing_parse(flag: flags.MultiFlag):
  parse = flag.parse

  def replacing_parse(arguments):
    present = flag.present
    flag.present = 0  # MultiFlag.parse extends the value when present; start afresh
    parse(arguments)
    flag.present = max(flag.present, present, 1)  # an empty tuple is still given
  return replacing_parse


def check_flagfiles(argv: Sequence[str]) -> None:
  """Reads every --flagfile in argv (and the ones they include) line by line before absl does,
  so that a file that is not UTF-8 or a line that is not a flag is named with its file and
  line number. A missing file is left to absl's message."""
  pending = [a.split("=", 1)[1] for a in argv if a.startswith("--flagfile=")]
  seen = set()
  while pending:
    path = pending.pop()
    if path in seen or not os.path.isfile(path):
      continue
    seen.add(path)
    with open(path, "rb") as f:
      raw_lines = f.read().splitlines()
    for number, raw in enumerate(raw_lines, 1):
      try:
        line = raw.decode("utf-8").strip()
      except UnicodeDecodeError as e:
        raise ConfigError(f"flagfile {path}, line {number}: not UTF-8 ({e.reason} at byte "
                          f"{e.start})") from None
      if not line or line.startswith(("#", "//")):
        continue
      if not line.startswith("-"):
        raise ConfigError(f"flagfile {path}, line {number}: {line[:80]!r} is not a flag "
                          "(flags are written --name=value; comments start with #)")
      if line.startswith("--flagfile="):
        pending.append(line.split("=", 1)[1])


class FlagError(ConfigError):
  """A flag, flag value, --config field or flagfile that absl or ml_collections rejected."""


def _parse(flag_values: flags.FlagValues, argv: Sequence[str]):
  """Defines --config on flag_values and parses argv; returns (the config holder, the
  arguments left over). Raises ConfigError, with one line naming the flag or file, for
  anything wrong with the flags."""
  try:
    holder = define_config_flag(flag_values, argv)
    rest = flag_values(list(argv))
  except FLAG_ERRORS as e:
    raise FlagError(describe_flag_error(e)) from None
  return holder, rest


def config_from_flags(argv: Sequence[str]) -> config_lib.Config:
  """A Config from command-line style flags, e.g. ["--flagfile=launch/ptb_tiny.flags",
  "--config.train.max_steps=10"], parsed exactly as the command line parses them, so that
  notebooks and tests build configs as `srlm.main` does. Raises ConfigError."""
  return _parse(flags.FlagValues(), ["srlm", *argv])[0].value


# --- the modes -----------------------------------------------------------------------------------

class Mode(NamedTuple):
  """(config, workdir, mesh) -> (exit code, what to print); `help` for --help."""
  run: Callable[[config_lib.Config, str, Any], tuple[int, str]]
  help: str


def _train(config, workdir, mesh) -> tuple[int, str]:
  from srlm import train  # pylint: disable=import-outside-toplevel  (keeps --help fast)
  result = train.train_and_evaluate(config, workdir, mesh=mesh)
  logging.info("Run %s at step %d; workdir %s", result["status"], result["step"], workdir)
  if result["status"] == "preempted":
    return 128 + result["signal"], ""
  return EXIT_OK, ""


def _rounded(values: list[float]) -> str:
  return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _eval(config, workdir, mesh) -> tuple[int, str]:
  from srlm import evaluate  # pylint: disable=import-outside-toplevel
  result = evaluate.evaluate_workdir(config, workdir, mesh)
  return EXIT_OK, (
      f"eval {result['split']}: checkpoint step {result['checkpoint_step']}, "
      f"{result['num_sentences']} sentences, {result['num_tokens']} tokens, "
      f"{result['model_kind']}, {result['nll_samples']}\n"
      f"  NLL {result['nll']:.2f}  PPL {result['ppl']:.2f}  KL {result['kl']:.2f}  "
      f"MI {'-' if result['mi'] is None else format(result['mi'], '.3f')}  AU {result['au']}  "
      f"REC {result['rec']:.2f}\n"
      + (f"  AIS: acceptance rate {result['ais_acceptance_rate']:.2f}, effective sample size "
         f"{result['ais_ess']:.2f} of {result['ais_chains']} chains\n"
         if result.get("ais_acceptance_rate") is not None
         else "")
      + (f"  non-finite NLL for {result['non_finite_nll_sentences']} sentence(s), source "
         f"lines {result['non_finite_nll_lines'][:10]} (all in the JSON)\n"
         if result["non_finite_nll_sentences"] else "")
      + (f"  {result['method_note']}\n" if result["method_note"] else "")
      + f"  written to {result['path']}")


def _bdmc(config, workdir, mesh) -> tuple[int, str]:
  from srlm import evaluate  # pylint: disable=import-outside-toplevel
  result = evaluate.bdmc_workdir(config, workdir, mesh)
  return EXIT_OK, (f"{evaluate.bdmc_table(result)}\n  (checkpoint step "
                   f"{result['checkpoint_step']}; written to {result['path']})")


def _fit_step_sizes(config, workdir, mesh) -> tuple[int, str]:
  from srlm import fit  # pylint: disable=import-outside-toplevel
  result = fit.fit_workdir(config, workdir, mesh)
  return EXIT_OK, (
      f"fitted step sizes for checkpoint step {result['checkpoint_step']} on "
      f"{result['valid_sentences']} validation sentences ({result['fit_steps']} updates): "
      f"valid short-run ELBO mean {result['valid_elbo_before']:.2f} -> "
      f"{result['valid_elbo_after']:.2f}, median {result['valid_elbo_median_before']:.2f} -> "
      f"{result['valid_elbo_median_after']:.2f}\n"
      f"  before {_rounded(result['initial_step_sizes'])}\n"
      f"  after  {_rounded(result['step_sizes'])}\n"
      f"  written to {result['path']}; evaluate with --mode=eval "
      "--config.eval.step_sizes=fitted")


def _latent_mode(body):
  """A latent-space mode: the workdir's run restored, at evaluation precision, and
  body(analysis)(config, run, workdir) -> (text, the file written). (srlm.analysis, which
  uses matplotlib and scikit-learn, is imported when the mode runs: --help stays fast.)"""
  def run_mode(config, workdir, mesh) -> tuple[int, str]:
    from srlm import analysis  # pylint: disable=import-outside-toplevel
    from srlm import runs  # pylint: disable=import-outside-toplevel
    from srlm import runtime  # pylint: disable=import-outside-toplevel
    with runtime.evaluation_precision(config):
      text, path = body(analysis)(config, runs.restore_trained(config, workdir, mesh),
                                  workdir)
    return EXIT_OK, f"{text}\n(written to {path})"
  return run_mode


MODES = {
    "train": Mode(_train, "train or resume the run in --workdir (training_curves.png is "
                  "redrawn each epoch)"),
    "eval": Mode(_eval, "writes eval_<split>.json (importance-sampled NLL/PPL, KL, MI, AU, "
                 "REC; with --config.eval.step_sizes=fitted, eval_<split>_fitted.json; with "
                 "--config.eval.estimator=ais, the AIS estimate, the same for every latent "
                 "method, in eval_<split>_ais.json)"),
    "bdmc": Mode(_bdmc, "(latent models) bounds the AIS error from both sides on sentences "
                 "sampled from the model, for each N of --config.eval.bdmc_steps, and writes "
                 "bdmc.json"),
    "fit_step_sizes": Mode(_fit_step_sizes, "(SRI runs) fits the chain's step sizes to the "
                           "validation split with the decoder fixed and writes "
                           "step_sizes/fitted_<step>.json"),
    "sample": Mode(_latent_mode(lambda a: a.sample_mode), "writes samples.txt (prior samples)"),
    "reconstruct": Mode(_latent_mode(lambda a: a.reconstruct_mode), "writes reconstructions.tsv"),
    "interpolate": Mode(_latent_mode(lambda a: a.interpolate_mode), "writes interpolations.txt"),
    "features": Mode(_latent_mode(lambda a: a.features_mode), "writes features_<split>.npy, labels_<split>.npy "
                     "and features_<split>.png"),
    "classify": Mode(_latent_mode(lambda a: a.classify_mode), "writes classification.json"),
    "cluster": Mode(_latent_mode(lambda a: a.cluster_mode), "writes cluster_<split>.json"),
}
MODE_HELP = ("train trains; the others restore the workdir's latest checkpoint with the run's "
             "config.json and any --config.* flags given on top (see --config.analysis.*). "
             + "; ".join(f"{name}: {mode.help}" for name, mode in MODES.items()) + ".")


def _define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string(
      "workdir", None, "Directory for config.json, metrics.jsonl and checkpoints; an existing "
      "run there is resumed.", flag_values=flag_values)
  flags.DEFINE_enum("mode", "train", list(MODES), MODE_HELP, flag_values=flag_values)
  flags.DEFINE_bool(
      "distributed", False, "Start JAX's multi-process runtime (jax.distributed.initialize()) "
      "before anything else: one process per host (or per GPU), all running the same "
      "command. The launchers in launch/ set SRLM_DISTRIBUTED=1, which does the same.",
      flag_values=flag_values)
  flags.DEFINE_string(
      "compilation_cache", "default", "JAX's persistent compilation cache, so that a resumed "
      "or repeated run compiles nothing it compiled before: 'default' ($SRLM_CACHE_DIR, else "
      "$XDG_CACHE_HOME/srlm/xla or ~/.cache/srlm/xla), a directory, or 'off'.",
      flag_values=flag_values)


HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")
USAGE = """srlm: latent-variable text generators trained with short-run inference.

  python -m srlm.main --flagfile=launch/ptb.flags --workdir=DIR [--config.<section>.<field>=V]
  python -m srlm.main --mode=eval --workdir=DIR [--config.eval.split=valid ...]

Re-running the same training command resumes from the workdir's latest checkpoint. Exit codes:
0 done; 2 a user error (bad flags, flagfiles, files, configs or checkpoints: one line, no
traceback); 3 training diverged; 4 the disk is full; 128 + N stopped by signal N after saving
a checkpoint."""


def help_text() -> str:
  """The srlm flags and every config field, readably (absl's help shows --config as a repr)."""
  flag_values = flags.FlagValues()
  _define_flags(flag_values)
  lines = [USAGE, "", "Flags:", "  --flagfile=FILE: flags from FILE, one per line; a flagfile may "
           "include others."]
  for name in ("workdir", "mode", "distributed", "compilation_cache"):
    flag = flag_values[name]
    lines.append(f"  --{name} (default {flag.default!r})")
    lines += textwrap.wrap(flag.help, 92, initial_indent="      ", subsequent_indent="      ")
  lines += ["", "Config fields, each a flag (--config.train.seed=1; tuples as "
            "--config.data.buckets=(12,22)); a later value replaces an earlier one:",
            config_lib.describe_fields()]
  return "\n".join(lines)


# --- logging -------------------------------------------------------------------------------------

class _QuietLibraries(logging_std.Filter):
  """Keeps the libraries' chatter out of the log: Orbax's and TFDS's INFO lines, and the
  warnings that every run would show and no user can act on. Their other warnings show."""

  # (path part, message part) of records that inform no one.
  NOISE = (
      ("/jax/_src/xla_bridge", "Unable to initialize backend"),  # no TPU on this machine
      ("/tensorflow_datasets/", "has no dataset_info.json"),  # before the first preparation
      ("/asyncio/", "exception was never retrieved"),  # a failed restore's abandoned reads
  )

  def filter(self, record: logging_std.LogRecord) -> bool:
    message = record.getMessage()
    if any(path in record.pathname and text in message for path, text in self.NOISE):
      return False
    return record.levelno >= logging_std.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))


def _set_up_logging() -> None:
  """absl's handler on stderr at INFO, with the libraries' noise filtered (once)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl's log handler reads its settings from the global FLAGS
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


# --- main ----------------------------------------------------------------------------------------

def _error(message: str, code: int = EXIT_USER_ERROR) -> int:
  print(f"srlm: error: {message}", file=sys.stderr)
  return code


def _given_config_overrides(flag_values: flags.FlagValues) -> dict[str, object]:
  """The --config.<section>.<field> flags given on the command line or in flagfiles."""
  prefix = "config."
  return {name[len(prefix):]: flag_values[name].value for name in flag_values
          if name.startswith(prefix) and flag_values[name].present}


def _run_mode(flag_values: flags.FlagValues, config: config_lib.Config,
              rest: list[str]) -> int:
  # Imported here to keep --help and flag errors fast (no JAX).
  from srlm import methods  # pylint: disable=import-outside-toplevel
  from srlm import parallel  # pylint: disable=import-outside-toplevel
  from srlm import reporting  # pylint: disable=import-outside-toplevel
  from srlm import runtime  # pylint: disable=import-outside-toplevel
  from srlm import stopping  # pylint: disable=import-outside-toplevel
  from srlm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  if len(rest) > 1:
    raise ConfigError(f"unexpected arguments {rest[1:]}; flags are written --name=value.")
  workdir, mode = flag_values["workdir"].value, flag_values["mode"].value
  if not workdir:
    raise ConfigError("--workdir is required: the directory where the run's checkpoints and "
                      "metrics go.")
  _set_up_logging()
  # Every mode writes into the workdir: find out now, not after the work.
  workdir_lib.check_writable(workdir, create=mode == "train")
  if mode != "train":
    config = config_lib.load_run_config(workdir, _given_config_overrides(flag_values))
  methods.validate(config)
  # Before anything starts JAX's backend (the distributed runtime, the devices): XLA reads its
  # flags once, when the backend starts.
  runtime.set_deterministic(config.train.deterministic)
  if parallel.distributed_requested(flag_values["distributed"].value):
    parallel.initialize_distributed()
    if not reporting.is_writer():
      logging.set_verbosity(logging.WARNING)  # one log per run: process 0's
  # After the distributed start: whether the cache is used depends on the processes' backend.
  cache = runtime.enable_compilation_cache(flag_values["compilation_cache"].value)
  # The run's devices, made once and handed to the mode.
  mesh = parallel.make_mesh(config.parallel.num_devices)
  if mode == "train":  # its loop saves a checkpoint on a signal, then stops
    code, text = MODES[mode].run(config, workdir, mesh)
  else:
    with stopping.exit_on_signal(mode):
      code, text = MODES[mode].run(config, workdir, mesh)
  if cache:
    counts = runtime.cache_counts()
    logging.info("Compilation cache %s: %d programs reused, %d compiled.", cache,
                 counts["hits"], counts["misses"])
  if text and reporting.is_writer():
    print(text)
  return code


def main(argv: Sequence[str]) -> int:
  """Runs the command line argv (argv[0] the program name); returns the exit code. Every error
  a user can cause is printed as one line and becomes its exit code here."""
  argv = list(argv)
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print(help_text())
    return EXIT_OK
  try:
    flag_values = flags.FlagValues()
    _define_flags(flag_values)
    holder, rest = _parse(flag_values, argv)
    return _run_mode(flag_values, holder.value, rest)
  except FlagError as e:
    return _error(f"{e.message}. `python -m srlm.main --help` lists every flag and config "
                  "field, with types and defaults.")
  except DivergenceError as e:
    return _error(e.message, EXIT_DIVERGED)
  except StorageError as e:
    return _error(e.message, EXIT_STORAGE)
  except UserError as e:
    return _error(e.message)
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    return _error(f"cannot write {e.filename or 'a file'}: {e.strerror}. The checkpoints "
                  "already written are intact: free space and re-run the same command to "
                  "resume.", EXIT_STORAGE)
  except KeyboardInterrupt:
    return _error("interrupted (a second signal): stopped without saving; the previous "
                  "checkpoint is intact.", 128 + signal.SIGINT)


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


def run() -> None:
  """The console entry point: main(sys.argv), then exit with its code. The process's own
  concerns live here, not in main: the hooks that drop Orbax's I/O noise, and how to exit.
  A failed run exits at once (os._exit) once its message is out: everything that writes has
  been closed by then (the library closes its checkpointer on every path), and at interpreter
  teardown the I/O futures abandoned by a failed checkpoint restore would be collected and
  logged, at length. A run that succeeded or was preempted exits normally, so JAX's own exit
  handlers (the distributed runtime's shutdown) run."""
  _quiet_checkpoint_io_noise()
  code = main(sys.argv)
  if code == EXIT_OK or code > 128:
    sys.exit(code)
  logging_std.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access
