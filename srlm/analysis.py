"""The latent space as a product (docs/method.md §6): prior samples, reconstructions,
interpolations, features, semi-supervised classification and clustering.

Each function takes a restored run (`runs.restore_trained`) and returns text; each mode
(`sample_mode`, ..., the functions srlm.cli's mode table calls) writes it into the workdir and
returns what to print. Inferred codes are the posterior means
of the run's method (`Latent.posterior_step`: the mean of S = config.eval.num_posterior_chains
short-run chains for SRI, the encoder's mean for the VAE), features its `feature_step`. A
method without a latent (the LSTM-LM) has no latent space.
"""

import json
import os

from absl import logging
import jax
import numpy as np

from srlm import methods
from srlm import parallel
from srlm import plots
from srlm import probes
from srlm import reporting
from srlm import runtime
from srlm import runs
from srlm import sampling
from srlm.config import Config
from srlm.data import pipeline
from srlm.errors import ConfigError, UserError
from srlm.journal import Journal, run_settings


# One jitted decoder for every call: it compiles once per (model, shapes, decoding settings).
_decode_jit = jax.jit(sampling.decode, static_argnames=(
    "model", "max_length", "temperature", "top_k", "min_length"))


def _decode(config: Config, run: runs.TrainedRun, z, rng) -> list[str]:
  a = config.analysis
  tokens = _decode_jit(run.method.decoder, run.params["decoder"], z, rng,
                       max_length=a.max_length, temperature=a.temperature, top_k=a.top_k,
                       min_length=a.min_length)
  return sampling.to_text(run.corpus.vocab, tokens)


def _method(config: Config, run: runs.TrainedRun) -> methods.Method:
  """The run's method under `config`: the one it was restored with when the config is that
  one (a command's), else built anew (a caller's other analysis or eval settings: the feature
  chains, S; the parameters' shapes cannot differ)."""
  return run.method if config == run.config else methods.get(config, len(run.corpus.vocab))


def _require_latent(run: runs.TrainedRun, mode: str) -> None:
  if run.method.latent is None:
    raise UserError(f"--mode={mode} needs a latent space; this run's method "
                    f"(--config.model.kind={run.method.name}) has none.")


def sample_prior(config: Config, run: runs.TrainedRun) -> list[str]:
  """config.analysis.num_samples sentences decoded from z ~ N(0, I)."""
  _require_latent(run, "sample")
  z_rng, decode_rng = jax.random.split(jax.random.key(config.analysis.seed))
  z = jax.random.normal(z_rng, (config.analysis.num_samples, run.method.latent_dim))
  return _decode(config, run, z, decode_rng)


def split_posterior_means(config: Config, run: runs.TrainedRun, split: pipeline.Split,
                          features: bool = False, journal: Journal | None = None
                          ) -> np.ndarray:
  """The posterior mean code (N, D) of each sentence of `split`, in order: the method's
  posterior_step, or its feature_step if `features`; config.analysis.batch_size sentences per
  call. Deterministic given config.analysis.seed. journal: finished batches kept and reused."""
  mesh = run.mesh
  batch_size = config.analysis.batch_size
  parallel.check_batch_size(batch_size, mesh, "analysis.batch_size")
  latent = _method(config, run).latent
  step = parallel.jit_replicated(latent.feature_step if features else latent.posterior_step,
                                 mesh)
  means = np.zeros((len(split), run.method.latent_dim), np.float32)
  for indices, out in parallel.map_split(
      lambda batch, key: {"mean": step(run.params, batch, key)[0]}, split, config.data.buckets,
      batch_size, mesh, jax.random.key(config.analysis.seed),
      label=f"{'features' if features else 'posterior means'} of {split.name}",
      journal=journal):
    means[indices] = out["mean"]
  return means


def posterior_means(config: Config, run: runs.TrainedRun, texts: list[str]) -> np.ndarray:
  """The posterior mean code (N, D) of each sentence, in order."""
  _warn_unknown_words(run.corpus.vocab, texts)
  split = pipeline.encode_split("input", list(enumerate(texts, 1)), run.corpus.vocab,
                                config.data, max_sentences=0)
  if len(split) != len(texts):
    raise UserError(f"{len(texts) - len(split)} input sentence(s) are longer than the last "
                    f"bucket ({config.data.buckets[-1]} tokens); shorten them or set "
                    "--config.data.overlong=truncate.")
  return split_posterior_means(config, run, split)


def _warn_unknown_words(vocab, texts: list[str]) -> None:
  """Logs the input words the model has never seen: they are read as <unk>, and a sentence of
  nothing else carries no information for the posterior."""
  known = set(vocab.words)
  unknown = sorted({w for text in texts for w in text.split() if w not in known})
  if unknown:
    logging.warning("%d input word(s) are not in the %d-word vocabulary and are read as <unk>: "
                    "%s%s", len(unknown), len(vocab), ", ".join(unknown[:20]),
                    " ..." if len(unknown) > 20 else "")
  for number, text in enumerate(texts, 1):
    if text.split() and all(w not in known for w in text.split()):
      logging.warning("input sentence %d (%r) has no known word: its code is a guess from "
                      "<unk> alone.", number, text[:60])


def reconstruct(config: Config, run: runs.TrainedRun, texts: list[str]) -> list[str]:
  """Greedy (or configured) decoding of each sentence's posterior mean code."""
  _require_latent(run, "reconstruct")
  z = posterior_means(config, run, texts)
  return _decode(config, run, z, jax.random.key(config.analysis.seed))


def interpolate(config: Config, run: runs.TrainedRun,
                pairs: list[tuple[str, str]]) -> list[list[str]]:
  """For each pair, decodings of num_points codes on the segment between the two sentences'
  codes. The codes of all pairs are inferred in one pass."""
  _require_latent(run, "interpolate")
  codes = posterior_means(config, run, [sentence for pair in pairs for sentence in pair])
  rng = jax.random.key(config.analysis.seed)
  return [_decode(config, run, sampling.interpolate(codes[2 * i], codes[2 * i + 1],
                                                    config.analysis.num_points), rng)
          for i in range(len(pairs))]


def _read_lines(path: str, flag: str) -> list[str]:
  try:
    with open(path, encoding="utf-8") as f:
      lines = [line.strip() for line in f]
  except FileNotFoundError:
    raise UserError(f"{flag}: {path} does not exist.") from None
  except UnicodeDecodeError as e:
    raise UserError(f"{flag}: {path} is not UTF-8 ({e.reason}).") from None
  lines = [line for line in lines if line]
  if not lines:
    raise UserError(f"{flag}: {path} holds no sentence.")
  return lines


def _pairs(config: Config) -> list[tuple[str, str]]:
  a = config.analysis
  if a.pairs_file:
    raw, flag = _read_lines(a.pairs_file, "--config.analysis.pairs_file"), "pairs_file"
  elif a.pair:
    raw, flag = [a.pair], "pair"
  else:
    raise ConfigError("--config.analysis.pair: --mode=interpolate needs two sentences, "
                      "--config.analysis.pair='sentence a|sentence b' (or a pairs_file).")
  pairs = []
  for number, line in enumerate(raw, 1):
    parts = [p.strip() for p in line.split("|")]
    if len(parts) != 2 or not all(parts):
      raise ConfigError(f"--config.analysis.{flag}: line {number} is not 'sentence a|sentence "
                        f"b': {line!r}")
    pairs.append((parts[0], parts[1]))
  return pairs


def _split(config: Config, run: runs.TrainedRun, name: str, flag: str) -> pipeline.Split:
  if name not in run.corpus.splits:
    raise ConfigError(f"--config.analysis.{flag}: unknown split {name!r}; {config.data.corpus} "
                      f"has {sorted(run.corpus.splits)}. Splits are declared with "
                      "--config.data.split_files at training time (see "
                      "launch/short_yelp.flags).")
  return run.corpus.splits[name]


def _labelled_split(config: Config, run: runs.TrainedRun, name: str,
                    flag: str) -> pipeline.Split:
  split = _split(config, run, name, flag)
  if len(split) and np.any(split.labels < 0):
    raise UserError(f"--config.analysis.{flag}: split {name!r} has no labels; classification "
                    "and clustering need a labelled corpus (--config.data.corpus=short_yelp).")
  return split


def features(config: Config, run: runs.TrainedRun, split_name: str, workdir: str,
             flag: str = "split") -> probes.Labelled:
  """The features (N, D) and labels (N,) of a split (docs/method.md §6).

  Saved as WORKDIR/features_<split>.npy and labels_<split>.npy, with features_<split>.json
  recording the checkpoint and chain settings; a later call with the same record reuses them
  (classify and cluster share the test split's features).
  """
  _require_latent(run, "features")
  split = _split(config, run, split_name, flag)
  method = _method(config, run)
  record = {"split": split_name, "checkpoint_step": run.step, "model_kind": method.name,
            "num_sentences": len(split), "seed": config.analysis.seed,
            "matmul_precision": runtime.precision_in_force(), **method.latent.feature_settings}
  record_path = os.path.join(workdir, f"features_{split_name}.json")
  features_path = os.path.join(workdir, f"features_{split_name}.npy")
  labels_path = os.path.join(workdir, f"labels_{split_name}.npy")
  try:
    with open(record_path) as f:
      if json.load(f) == record:
        return probes.Labelled(split_name, np.load(features_path), np.load(labels_path))
  except (OSError, ValueError):
    pass
  # The record is written last: a crash in between leaves no record, so no stale reuse.
  reporting.make_dirs(workdir)
  reporting.remove(record_path)
  logging.info("features of %s: %d sentences, %s", split_name, len(split), method.latent.features)
  journal = Journal(workdir, f"features_{split_name}", run_settings(
      config, run.step, runtime.precision_in_force(), record=record), config.eval.keep_journal)
  values = split_posterior_means(config, run, split, features=True, journal=journal)
  reporting.write_npy(features_path, values)
  reporting.write_npy(labels_path, split.labels)
  reporting.write_json_atomic(record_path, record)
  journal.close()
  return probes.Labelled(split_name, values, split.labels)


def features_mode(config: Config, run: runs.TrainedRun, workdir: str) -> tuple[str, str]:
  data = features(config, run, config.analysis.split, workdir)
  png = plots.feature_projection(
      data.features, data.labels, os.path.join(workdir, f"features_{data.name}.png"),
      f"{config.data.corpus} {data.name}: posterior means, step {run.step}")
  labels, counts = np.unique(data.labels, return_counts=True)
  label_text = ("unlabelled" if np.all(data.labels < 0) else
                ", ".join(f"label {l}: {c}" for l, c in zip(labels, counts)))
  path = os.path.join(workdir, f"features_{data.name}.npy")
  return (f"features of {data.name}: {data.features.shape[0]} x {data.features.shape[1]} "
          f"({label_text}); labels in labels_{data.name}.npy; projection in {png}", path)


def classify(config: Config, run: runs.TrainedRun, workdir: str) -> dict:
  """A linear classifier on each label split's features, selected on select_split, tested on
  test_split; written to WORKDIR/classification.json."""
  a = config.analysis
  # Every split must exist and carry labels before any feature is computed (hours, at scale).
  named = ([(a.select_split, "select_split"), (a.test_split, "test_split")]
           + [(name, "label_splits") for name in a.label_splits])
  for name, flag in named:
    _split(config, run, name, flag)
  for name, flag in named:
    _labelled_split(config, run, name, flag)
  select = features(config, run, a.select_split, workdir, "select_split")
  test = features(config, run, a.test_split, workdir, "test_split")
  train_sets = [features(config, run, name, workdir, "label_splits") for name in a.label_splits]
  rows = []
  for train in train_sets:
    rows.append(probes.linear_classifier(train, select, test))
    logging.info("classifier on %s: test accuracy %.4f", train.name, rows[-1]["test_accuracy"])
  result = {"checkpoint_step": run.step, "select_split": a.select_split,
            "test_split": a.test_split, "num_test": len(test.labels),
            "majority_test_accuracy": probes.majority_accuracy(train_sets[-1], test),
            "features": _method(config, run).latent.features, "rows": rows,
            "matmul_precision": runtime.precision_in_force()}
  result["path"] = os.path.join(workdir, "classification.json")
  reporting.write_json_atomic(result["path"], result)
  return result


def classification_table(result: dict) -> str:
  lines = [f"linear classifier, features: {result['features']}; C chosen on "
           f"{result['select_split']}, accuracy on {result['test_split']} "
           f"({result['num_test']} sentences)",
           f"{'labels':>8}  {'C':>8}  {'train':>6}  {result['select_split']:>6}  "
           f"{result['test_split']:>6}"]
  for row in result["rows"]:
    lines.append(f"{row['num_labels']:>8}  {row['c']:>8.3g}  {row['train_accuracy']:>6.3f}  "
                 f"{row['select_accuracy']:>6.3f}  {row['test_accuracy']:>6.3f}")
  lines.append(f"majority class on {result['test_split']}: "
               f"{result['majority_test_accuracy']:.3f}")
  return "\n".join(lines)


def cluster(config: Config, run: runs.TrainedRun, workdir: str) -> dict:
  """PCA to 4 dimensions and a Gaussian mixture on config.analysis.split's features; written
  to WORKDIR/cluster_<split>.json."""
  _labelled_split(config, run, config.analysis.split, "split")
  data = features(config, run, config.analysis.split, workdir)
  result = {"checkpoint_step": run.step, "features": _method(config, run).latent.features,
            "matmul_precision": runtime.precision_in_force(),
            **probes.cluster(data, seed=config.analysis.seed)}
  result["path"] = os.path.join(workdir, f"cluster_{data.name}.json")
  reporting.write_json_atomic(result["path"], result)
  return result


def _write_lines(path: str, lines: list[str]) -> tuple[str, str]:
  reporting.write_lines(path, lines)
  return "\n".join(lines), path


# --- the modes: (config, run, workdir) -> (what to print, the file written) -----------------
# srlm.cli's mode table restores the run (at evaluation precision) and calls one of these.

def sample_mode(config: Config, run: runs.TrainedRun, workdir: str) -> tuple[str, str]:
  return _write_lines(os.path.join(workdir, "samples.txt"), sample_prior(config, run))


def reconstruct_mode(config: Config, run: runs.TrainedRun, workdir: str) -> tuple[str, str]:
  a = config.analysis
  if a.input_file:
    texts = _read_lines(a.input_file, "--config.analysis.input_file")
  else:
    split = _split(config, run, a.split, "split")
    texts = [run.corpus.vocab.decode(s) for s in split.sentences[:a.max_sentences]]
  outputs = reconstruct(config, run, texts)
  return _write_lines(os.path.join(workdir, "reconstructions.tsv"),
                      [f"{x}\t{y}" for x, y in zip(texts, outputs)])


def interpolate_mode(config: Config, run: runs.TrainedRun, workdir: str) -> tuple[str, str]:
  pairs = _pairs(config)
  lines = []
  for (first, second), decoded in zip(pairs, interpolate(config, run, pairs)):
    lines += [f"# {first} | {second}"] + decoded + [""]
  return _write_lines(os.path.join(workdir, "interpolations.txt"), lines)


def classify_mode(config: Config, run: runs.TrainedRun, workdir: str) -> tuple[str, str]:
  result = classify(config, run, workdir)
  return classification_table(result), result["path"]


def cluster_mode(config: Config, run: runs.TrainedRun, workdir: str) -> tuple[str, str]:
  result = cluster(config, run, workdir)
  return (f"PCA to {result['pca_dims']} dimensions + {result['num_clusters']}-component "
          f"Gaussian mixture on {result['split']} ({result['num_sentences']} sentences, "
          f"features: {result['features']}): accuracy {result['accuracy']:.4f} under the "
          "best cluster-to-label mapping", result["path"])
