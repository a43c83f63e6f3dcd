"""The latent space as a product (SRI_SPEC §6): prior samples, reconstructions, interpolations.

Each function takes a restored run (`evaluate.restore_trained`) and returns text; `run_mode`
writes it into the workdir and returns what to print. Inferred codes are posterior means:
the mean of S = config.eval.num_posterior_chains short-run chains (SRI), or the encoder's
mean (VAE). The LSTM-LM has no latent space.
"""

import os

import jax
import numpy as np

from srlm import evaluate
from srlm import sampling
from srlm.config import Config
from srlm.data import pipeline
from srlm.errors import ConfigError, UserError


# One jitted decoder for every call: it compiles once per (model, shapes, decoding settings).
_decode_jit = jax.jit(sampling.decode, static_argnums=(0, 4, 5, 6))


def _decode(config: Config, run: evaluate.TrainedRun, z, rng) -> list[str]:
  a = config.analysis
  tokens = _decode_jit(run.model, run.params["decoder"], z, rng, a.max_length,
                       a.temperature, a.top_k)
  return sampling.to_text(run.corpus.vocab, tokens)


def _require_latent(config: Config, mode: str) -> None:
  if config.model.kind == "lm":
    raise UserError(f"--mode={mode} needs a latent space; this run is an LSTM-LM "
                    "(--config.model.kind=lm).")


def sample_prior(config: Config, run: evaluate.TrainedRun) -> list[str]:
  """config.analysis.num_samples sentences decoded from z ~ N(0, I)."""
  _require_latent(config, "sample")
  z_rng, decode_rng = jax.random.split(jax.random.key(config.analysis.seed))
  z = jax.random.normal(z_rng, (config.analysis.num_samples, run.model.latent_dim))
  return _decode(config, run, z, decode_rng)


def posterior_means(config: Config, run: evaluate.TrainedRun, texts: list[str]) -> np.ndarray:
  """The posterior mean code (N, D) of each sentence, in order."""
  split = pipeline.encode_split("input", list(enumerate(texts, 1)), run.corpus.vocab,
                                config.data, max_sentences=0)
  if len(split) != len(texts):
    raise UserError(f"{len(texts) - len(split)} input sentence(s) are longer than the last "
                    f"bucket ({config.data.buckets[-1]} tokens); shorten them or set "
                    "--config.data.overlong=truncate.")
  step = evaluate.make_posterior_step(config, run.model, run.encoder)
  batch_size = config.eval.batch_size
  plan = pipeline.plan_batches(split, config.data.buckets, batch_size)
  means = np.zeros((len(split), run.model.latent_dim), np.float32)
  rng = jax.random.key(config.analysis.seed)
  for i, (indices, batch) in enumerate(zip(plan.indices, pipeline.iterate(split, plan,
                                                                          batch_size))):
    mean, _ = step(run.params, batch, jax.random.fold_in(rng, i))
    means[indices] = np.asarray(mean)[:len(indices)]
  return means


def reconstruct(config: Config, run: evaluate.TrainedRun, texts: list[str]) -> list[str]:
  """Greedy (or configured) decoding of each sentence's posterior mean code."""
  _require_latent(config, "reconstruct")
  z = posterior_means(config, run, texts)
  return _decode(config, run, z, jax.random.key(config.analysis.seed))


def interpolate(config: Config, run: evaluate.TrainedRun,
                pairs: list[tuple[str, str]]) -> list[list[str]]:
  """For each pair, decodings of num_points codes on the segment between the two sentences'
  codes. The codes of all pairs are inferred in one pass."""
  _require_latent(config, "interpolate")
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


def run_mode(mode: str, config: Config, workdir: str) -> tuple[str, str]:
  """Runs an analysis mode on a trained workdir; returns (what to print, the file written)."""
  run = evaluate.restore_trained(config, workdir)
  a = config.analysis
  if mode == "sample":
    lines = sample_prior(config, run)
    path = os.path.join(workdir, "samples.txt")
  elif mode == "reconstruct":
    if a.input_file:
      texts = _read_lines(a.input_file, "--config.analysis.input_file")
    else:
      if a.split not in run.corpus.splits:
        raise ConfigError(f"--config.analysis.split: unknown split {a.split!r}; "
                          f"{config.data.corpus} has {sorted(run.corpus.splits)}.")
      split = run.corpus.splits[a.split]
      texts = [run.corpus.vocab.decode(s) for s in split.sentences[:a.max_sentences]]
    outputs = reconstruct(config, run, texts)
    lines = [f"{x}\t{y}" for x, y in zip(texts, outputs)]
    path = os.path.join(workdir, "reconstructions.tsv")
  elif mode == "interpolate":
    pairs = _pairs(config)
    lines = []
    for (first, second), decoded in zip(pairs, interpolate(config, run, pairs)):
      lines += [f"# {first} | {second}"] + decoded + [""]
    path = os.path.join(workdir, "interpolations.txt")
  else:
    raise ValueError(mode)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return "\n".join(lines), path
