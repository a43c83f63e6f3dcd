"""Command line: `python -m srlm.main --flagfile=launch/ptb.flags --workdir=DIR`.

The only reader of absl flags. Builds the typed Config from `--config.<section>.<field>`
flags (flagfiles may include flagfiles) and calls the library. Re-running the same command
resumes from the workdir's latest checkpoint. User errors (bad flags, files, checkpoints) end
with a one-paragraph message and exit code 2; a run stopped by SIGTERM/SIGINT saves a
checkpoint and exits with 128 + the signal number.
"""

import logging as logging_std
import sys

from absl import app
from absl import flags
from absl import logging

from srlm import config as config_lib
from srlm.errors import UserError

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl and checkpoints; an existing "
    "run there is resumed.")
_MODE = flags.DEFINE_enum(
    "mode", "train",
    ["train", "eval", "sample", "reconstruct", "interpolate", "features", "classify", "cluster"],
    "train: train or resume the run in --workdir (training_curves.png is redrawn each epoch). "
    "The others restore its latest checkpoint with the run's config.json and any --config.* "
    "flags given on top: eval writes eval_<split>.json (importance-sampled NLL/PPL, KL, MI, "
    "AU, REC); sample writes samples.txt (prior samples); reconstruct writes "
    "reconstructions.tsv; interpolate writes interpolations.txt; features writes "
    "features_<split>.npy, labels_<split>.npy and features_<split>.png; classify writes "
    "classification.json; cluster writes cluster_<split>.json (see --config.analysis.*).")

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start JAX's multi-process runtime (jax.distributed.initialize()) "
    "before anything else: one process per host (or per GPU), all running the same command. "
    "The launchers in launch/ set SRLM_DISTRIBUTED=1, which does the same.")

EXIT_USER_ERROR = 2


def _fail(message: str) -> None:
  print(f"srlm: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _fail_on_flag_error(error: Exception) -> None:
  _fail(f"{config_lib.describe_flag_error(error)}. The config fields, their types and "
        "defaults are in srlm/config.py and README.md; `python -m srlm.main --helpfull` lists "
        "the other flags.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with flag and flagfile errors as one message instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except config_lib.FLAG_ERRORS as e:
    _fail_on_flag_error(e)


class _QuietLibraries(logging_std.Filter):
  """Keeps Orbax's and TFDS's INFO chatter out of the log; their warnings still show."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; flags are written --name=value.")
  if not _WORKDIR.value:
    _fail("--workdir is required: the directory where the run's checkpoints and metrics go.")
  # Imported here to keep `--help` fast.
  from srlm import analysis  # pylint: disable=import-outside-toplevel
  from srlm import evaluate  # pylint: disable=import-outside-toplevel
  from srlm import parallel  # pylint: disable=import-outside-toplevel
  from srlm import reporting  # pylint: disable=import-outside-toplevel
  from srlm import train  # pylint: disable=import-outside-toplevel
  if parallel.distributed_requested(_DISTRIBUTED.value):
    parallel.initialize_distributed()
    if not reporting.is_writer():
      logging.set_verbosity(logging.WARNING)  # one log per run: process 0's
  try:
    if _MODE.value != "train":
      config = config_lib.load_run_config(_WORKDIR.value, _given_config_overrides())
      if _MODE.value == "eval":
        result = evaluate.evaluate_workdir(config, _WORKDIR.value)
        if reporting.is_writer():
          _print_eval(result)
      else:
        text, path = analysis.run_mode(_MODE.value, config, _WORKDIR.value)
        if reporting.is_writer():
          print(f"{text}\n(written to {path})")
      return
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    _fail(str(e))
  logging.info("Run %s at step %d; workdir %s", result["status"], result["step"],
               _WORKDIR.value)
  if result["status"] == "preempted":
    sys.exit(128 + result["signal"])


def _given_config_overrides() -> dict[str, object]:
  """The --config.<section>.<field> flags given on the command line or in flagfiles."""
  prefix = "config."
  return {name[len(prefix):]: flags.FLAGS[name].value for name in flags.FLAGS
          if name.startswith(prefix) and flags.FLAGS[name].present}


def _print_eval(result: dict) -> None:
  print(f"eval {result['split']}: checkpoint step {result['checkpoint_step']}, "
        f"{result['num_sentences']} sentences, {result['num_tokens']} tokens, "
        f"{result['model_kind']}, {result['nll_samples']}\n"
        f"  NLL {result['nll']:.2f}  PPL {result['ppl']:.2f}  KL {result['kl']:.2f}  "
        f"MI {result['mi']:.3f}  AU {result['au']}  REC {result['rec']:.2f}\n"
        f"  written to {result['path']}")


_CONFIG = None


def run() -> None:
  global _CONFIG
  try:
    # ml_collections registers the --config.x.y overrides it finds in argv (and flagfiles)
    # when the flag is defined, and raises there for an unknown field.
    _CONFIG = config_lib.define_config_flag(flags.FLAGS, sys.argv)
  except config_lib.FLAG_ERRORS as e:
    _fail_on_flag_error(e)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
