"""The one typed config of srlm, with the paper's PTB settings as defaults.

Every field can be set from the command line as `--config.<section>.<field>=value` (see
`srlm.cli`, which also builds configs from flags for notebooks: `cli.config_from_flags`);
library code receives a `Config` and never reads flags. `validate` checks ranges
and names the offending flag in its message.
"""

import dataclasses
import inspect
import json
import os
import re
import textwrap
from typing import Any, Sequence

from srlm.errors import ConfigError

# docs/method.md §2: the authors' step sizes, 9 hand-set values then 0.05 for the remaining steps.
PAPER_STEP_SIZES = (0.8, 0.7, 0.6, 0.5, 0.2, 0.2, 0.1, 0.1, 0.05) + (0.05,) * 11


@dataclasses.dataclass
class DataConfig:
  """Corpus, vocabulary and batching."""
  corpus: str = "ptb"
  # TFDS data dir where the corpus is prepared as ArrayRecord; "" means $TFDS_DATA_DIR or
  # ~/tensorflow_datasets.
  dir: str = ""
  # Directory holding the raw split files (ptb.train.txt, ...); "" means the copy embedded in
  # the package (PTB only).
  source_dir: str = ""
  # Renamed or extra splits, "split=file[+file...]" (files in source_dir, joined in order),
  # e.g. ("train=short_yelp.train.10000.txt+short_yelp.valid.txt",).
  split_files: tuple[str, ...] = ()
  batch_size: int = 32
  # Padded sequence lengths, counting <s> and </s>. A sentence goes to the smallest bucket that
  # holds it; jit compiles once per bucket. The last bucket is the maximum length.
  buckets: tuple[int, ...] = (12, 22, 32, 48, 84)
  # What to do with a sentence longer than the last bucket: "drop" it or "truncate" it (keep
  # the first words and end it with </s>). Either way it is counted and logged.
  overlong: str = "drop"
  # 0 keeps every word type of the training split (PTB: 9,999 incl. <unk>, + <pad> <s> </s>).
  # Ignored for corpora that ship a fixed vocabulary (short_yelp).
  vocab_size: int = 0
  # Limits for quick runs; 0 means the whole split.
  max_train_sentences: int = 0
  max_eval_sentences: int = 0


@dataclasses.dataclass
class ModelConfig:
  """The LSTM decoder p(x | z) of docs/method.md §1, and which model is trained with it."""
  # The method (srlm/methods/): "sri": z inferred by the short-run chain (the paper).
  # "sri_learned": the same with the chain's step sizes learned (docs/method.md §7). "lm": the
  # same decoder without z (LSTM language model). "vae": a Gaussian VAE with an LSTM encoder
  # (see VaeConfig). "savae": the semi-amortized VAE (see SaVaeConfig).
  kind: str = "sri"
  embed_dim: int = 256
  hidden_dim: int = 256
  latent_dim: int = 32
  dropout: float = 0.5
  init_scale: float = 0.1  # every parameter ~ U(-init_scale, init_scale)
  # "bfloat16": the decoder's and encoder's matmuls take bf16 inputs and accumulate in f32;
  # parameters, chain states, softmax and losses stay f32 (for GPU/TPU; see benchmarks/).
  compute_dtype: str = "float32"
  # The LSTM recurrence's lax.scan unroll factor (the same numbers at any value, another
  # speed): 0 takes the backend's (srlm.models.SCAN_UNROLL: rolled on the CPU, where that is
  # fastest), >= 1 that factor.
  scan_unroll: int = 0


@dataclasses.dataclass
class LangevinConfig:
  """The short-run chain of docs/method.md §2."""
  num_steps: int = 20
  # One step size per step; when num_steps is longer, the last value is repeated.
  step_sizes: tuple[float, ...] = PAPER_STEP_SIZES
  # Training noise multiplier T as a function of the 1-based epoch: piecewise linear through
  # (temperature_epochs[i], temperature_values[i]), constant outside. Paper: 0.05 up to epoch
  # 15, +0.05 per epoch, 0.2 from epoch 18 on.
  temperature_epochs: tuple[float, ...] = (15.0, 18.0)
  temperature_values: tuple[float, ...] = (0.05, 0.2)
  eval_temperature: float = 0.2
  # The prior's weight beta in the training chain's target, log p(x | z) + beta log p(z)
  # (docs/method.md §2): beta = min(1, prior_weight_start + n / (prior_weight_warmup_epochs *
  # batches per epoch)) at the n-th training batch (n = 1, 2, ...), as the authors' short-Yelp
  # code raises it before each batch. Warm-up 0 (the default): beta = 1 throughout, the
  # paper's chain. Evaluation and feature chains always use beta = 1.
  prior_weight_start: float = 1.0
  prior_weight_warmup_epochs: float = 0.0
  # Learned step sizes (--config.model.kind=sri_learned, docs/method.md §7): every learn_every
  # decoder steps, one Adam step (rate learn_rate) on the K log step sizes, maximising the
  # short-run ELBO (at eval_temperature, dropout off) of the batch's first learn_batch
  # sentences. The step sizes above are the starting point.
  learn_every: int = 100
  learn_batch: int = 4
  learn_rate: float = 0.01
  # --mode=fit_step_sizes: the decoder fixed, this many such updates on random sub-batches of
  # learn_batch validation sentences (any SRI run; the result is saved beside the checkpoint).
  fit_steps: int = 200


@dataclasses.dataclass
class TrainConfig:
  """Optimisation, logging and checkpoints (docs/method.md §3)."""
  num_epochs: int = 60
  learning_rate: float = 1e-3
  grad_clip_norm: float = 5.0
  # "final": the method as written, gradient at z_K only. "accumulated": the authors' code,
  # which also sums the batch-summed NLL gradient at every chain state z_0 .. z_{K-1}.
  gradient: str = "final"
  seed: int = 0
  log_every_steps: int = 50
  checkpoint_every_steps: int = 1000
  max_checkpoints: int = 3
  # Stop after this many optimiser steps in total (0: no limit); for smoke runs.
  max_steps: int = 0
  # At every epoch end, also compute AU and MI on the validation split (S chains per
  # sentence, see EvalConfig); the log-det NLL is left to --mode=eval.
  epoch_latent_metrics: bool = False
  # Float32 matmul precision of training and its per-epoch validation (srlm/runtime.py):
  # "default" (the backend's fast path: reduced precision, TF32, on GPUs; full float32 on
  # the CPU), "high" or "highest" (full float32 everywhere).
  matmul_precision: str = "default"
  # Ask XLA for deterministic ops (set before the backend starts), so that a GPU run repeats
  # bit for bit and a resumed run equals the uninterrupted one; the CPU is deterministic anyway.
  deterministic: bool = False


@dataclasses.dataclass
class VaeConfig:
  """The Gaussian VAE baseline (docs/method.md §5): ELBO with KL annealing, free bits, and the
  aggressive inference-network schedule of He et al. 2019."""
  # KL weight beta rises linearly from kl_start to 1 over kl_warmup_epochs (0: always 1).
  kl_start: float = 1.0
  kl_warmup_epochs: float = 0.0
  # Free bits: each latent dimension's batch-mean KL is floored at this many nats (0: off).
  free_bits: float = 0.0
  # Aggressive schedule for the first aggressive_epochs epochs (0: off): before each decoder
  # step, update the encoder alone on fresh batches until its summed loss over a window of
  # aggressive_window steps stops decreasing, or aggressive_max_steps steps.
  aggressive_epochs: int = 0
  aggressive_window: int = 15
  aggressive_max_steps: int = 100


@dataclasses.dataclass
class SaVaeConfig:
  """The semi-amortized VAE (--config.model.kind=savae, docs/method.md §8; Kim et al. 2018):
  the encoder's (mean, log variance) refined per sentence by refine_steps steps of gradient
  descent with momentum on the sentence's negative ELBO (beta-weighted KL, as in training),
  each step's gradient clipped to refine_max_grad_norm. KL annealing and free bits: VaeConfig.
  """
  refine_steps: int = 20
  refine_learning_rate: float = 0.03125
  refine_momentum: float = 0.5
  refine_max_grad_norm: float = 28.28


@dataclasses.dataclass
class EvalConfig:
  """`--mode=eval` (docs/method.md §4): importance-sampled NLL/PPL, KL, REC, AU, MI."""
  split: str = "test"
  # M: short-run chains per sentence for the importance-sampled NLL.
  num_samples: int = 10
  # Sentences per jitted call; memory grows with it (L * D * V floats per sentence).
  batch_size: int = 8
  # S: chains per sentence for the posterior mean and variance (AU, MI).
  num_posterior_chains: int = 10
  # 0: the whole split (the authors used 80 random batches); else its first N sentences.
  max_sentences: int = 0
  seed: int = 0
  # Which chain step sizes an SRI run is evaluated with: "run" (the config's, or the ones it
  # learned), or "fitted" (those --mode=fit_step_sizes saved for the checkpoint; the result
  # goes to eval_<split>_fitted.json).
  step_sizes: str = "run"
  # The NLL estimator: "is", each method's own importance sampling (eval_<split>.json); or
  # "ais", annealed importance sampling from the prior, the same for every latent method
  # (docs/method.md §9; eval_<split>_ais.json). The LM's NLL is exact under either.
  estimator: str = "is"
  # AIS: N intermediate distributions (a sigmoid schedule), C chains per sentence, L leapfrog
  # steps per HMC transition (1: MALA), the transitions' initial step size (each chain then
  # adapts its own towards 0.65 acceptance).
  ais_steps: int = 500
  ais_chains: int = 4
  ais_leapfrog: int = 1
  ais_step_size: float = 0.05
  # --mode=bdmc: sentences sampled from the model (z ~ p(z), x ~ p(x | z)), bounded from both
  # sides by forward and reverse AIS at each N of bdmc_steps (C, L as for AIS).
  bdmc_sentences: int = 32
  bdmc_steps: tuple[int, ...] = (10, 100, 500)
  bdmc_seed: int = 0
  # Float32 matmul precision of evaluation (eval, bdmc, fit_step_sizes) and the analyses:
  # "highest" computes every figure in full float32 on every backend (srlm/runtime.py).
  matmul_precision: str = "highest"
  # The long modes (eval, bdmc, features, fit_step_sizes) journal each finished batch in
  # WORKDIR/journals/, so a stopped run resumes (srlm/journal.py); the journal is removed once
  # the result is written, or kept with keep_journal.
  keep_journal: bool = False


@dataclasses.dataclass
class AnalysisConfig:
  """`--mode=sample|reconstruct|interpolate|features|classify|cluster` (docs/method.md §6)."""
  # Decoding: temperature 0 is greedy; top_k > 0 samples among the k likeliest words.
  temperature: float = 0.0
  top_k: int = 0
  max_length: int = 40
  # No </s> before this many words (0: no constraint).
  min_length: int = 0
  # sample: sentences drawn from the prior.
  num_samples: int = 10
  # reconstruct: a text file (one sentence per line), else the first max_sentences of split.
  input_file: str = ""
  split: str = "test"
  max_sentences: int = 10
  # interpolate: "sentence a|sentence b", or a file of such lines; points on the segment.
  pair: str = ""
  pairs_file: str = ""
  num_points: int = 7
  # Sentences per jitted posterior call (reconstruct, interpolate, features).
  batch_size: int = 64
  # features, classify, cluster: a sentence's features are the mean of feature_chains
  # noiseless (T = 0) chains of feature_steps steps of size feature_step_size (the paper's
  # protocol: 200, 40, 0.4); a VAE's are its encoder means. features and cluster use `split`.
  feature_chains: int = 200
  feature_steps: int = 40
  feature_step_size: float = 0.4
  # Whether the feature chains run the decoder with dropout on (a fresh mask per step and
  # chain), as the authors' semi_sup_classification.py does (the model in training mode); off,
  # noiseless chains differ only in their starting points.
  feature_dropout: bool = False
  # classify: a linear classifier is trained on each of label_splits, its L2 strength chosen
  # on select_split, and its accuracy reported on test_split (the labelled splits of
  # launch/short_yelp.flags).
  label_splits: tuple[str, ...] = ("train_100", "train_500", "train_1000", "train_2000",
                                   "train_10000")
  select_split: str = "valid"
  test_split: str = "test"
  seed: int = 0


@dataclasses.dataclass
class ParallelConfig:
  """Data parallelism (srlm.parallel): batches are split across the devices of a 1-D mesh."""
  # 0: every device of every process; else the first N devices (one process only). The batch
  # sizes (data, eval, analysis) must be multiples of it.
  num_devices: int = 0


@dataclasses.dataclass
class Config:
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  langevin: LangevinConfig = dataclasses.field(default_factory=LangevinConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  vae: VaeConfig = dataclasses.field(default_factory=VaeConfig)
  savae: SaVaeConfig = dataclasses.field(default_factory=SaVaeConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  analysis: AnalysisConfig = dataclasses.field(default_factory=AnalysisConfig)
  parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)


CORPORA = ("ptb", "yahoo", "yelp", "snli", "short_yelp")
GRADIENTS = ("final", "accumulated")
OVERLONG = ("drop", "truncate")
COMPUTE_DTYPES = ("float32", "bfloat16")
EVAL_STEP_SIZES = ("run", "fitted")
ESTIMATORS = ("is", "ais")
PRECISIONS = ("default", "high", "highest")  # srlm.runtime's


def _check(ok: bool, flag: str, message: str):
  if not ok:
    raise ConfigError(f"--config.{flag}: {message}")


def validate(config: Config) -> Config:
  """Raises ConfigError naming the flag for a value out of range; returns the config."""
  d, m, l, t, e = config.data, config.model, config.langevin, config.train, config.eval
  _check(d.corpus in CORPORA, "data.corpus", f"unknown corpus {d.corpus!r}; known: {CORPORA}")
  _check(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
  _check(len(d.buckets) >= 1 and all(b >= 3 for b in d.buckets), "data.buckets",
         f"needs at least one length >= 3 (<s> word </s>), got {d.buckets}")
  _check(list(d.buckets) == sorted(set(d.buckets)), "data.buckets",
         f"must be strictly increasing, got {d.buckets}")
  _check(d.overlong in OVERLONG, "data.overlong", f"must be one of {OVERLONG}, got {d.overlong!r}")
  _check(d.vocab_size == 0 or d.vocab_size >= 5, "data.vocab_size",
         f"must be 0 (all training words) or >= 5, got {d.vocab_size}")
  for name in ("max_train_sentences", "max_eval_sentences"):
    _check(getattr(d, name) >= 0, f"data.{name}", "must be >= 0 (0: whole split)")
  for name in ("embed_dim", "hidden_dim"):
    _check(getattr(m, name) >= 1, f"model.{name}", f"must be >= 1, got {getattr(m, name)}")
  _check(m.latent_dim >= 1, "model.latent_dim", f"must be >= 1, got {m.latent_dim}")
  _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
  _check(m.init_scale > 0, "model.init_scale", f"must be > 0, got {m.init_scale}")
  _check(m.compute_dtype in COMPUTE_DTYPES, "model.compute_dtype",
         f"must be one of {COMPUTE_DTYPES}, got {m.compute_dtype!r}")
  _check(m.scan_unroll >= 0, "model.scan_unroll", f"must be >= 0 (0: the backend's), got "
         f"{m.scan_unroll}")
  _check(l.num_steps >= 1, "langevin.num_steps", f"must be >= 1, got {l.num_steps}")
  _check(len(l.step_sizes) >= 1 and all(s > 0 for s in l.step_sizes), "langevin.step_sizes",
         f"needs at least one positive value, got {l.step_sizes}")
  _check(len(l.temperature_epochs) == len(l.temperature_values) >= 1,
         "langevin.temperature_epochs",
         "and --config.langevin.temperature_values must have the same length (>= 1)")
  _check(list(l.temperature_epochs) == sorted(l.temperature_epochs),
         "langevin.temperature_epochs", f"must be increasing, got {l.temperature_epochs}")
  _check(all(v >= 0 for v in l.temperature_values), "langevin.temperature_values",
         "must be >= 0")
  _check(l.eval_temperature >= 0, "langevin.eval_temperature", "must be >= 0")
  for name in ("learn_every", "learn_batch", "fit_steps"):
    _check(getattr(l, name) >= 1, f"langevin.{name}", f"must be >= 1, got {getattr(l, name)}")
  _check(l.learn_rate > 0, "langevin.learn_rate", f"must be > 0, got {l.learn_rate}")
  _check(t.num_epochs >= 1, "train.num_epochs", f"must be >= 1, got {t.num_epochs}")
  _check(t.learning_rate > 0, "train.learning_rate", f"must be > 0, got {t.learning_rate}")
  _check(t.grad_clip_norm > 0, "train.grad_clip_norm", f"must be > 0, got {t.grad_clip_norm}")
  _check(t.gradient in GRADIENTS, "train.gradient",
         f"must be one of {GRADIENTS}, got {t.gradient!r}")
  for name in ("log_every_steps", "checkpoint_every_steps", "max_checkpoints"):
    _check(getattr(t, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(t, name)}")
  _check(t.max_steps >= 0, "train.max_steps", "must be >= 0 (0: no limit)")
  for flag, value in (("train.matmul_precision", t.matmul_precision),
                      ("eval.matmul_precision", e.matmul_precision)):
    _check(value in PRECISIONS, flag, f"must be one of {PRECISIONS}, got {value!r}")
  v = config.vae
  _check(0.0 <= v.kl_start <= 1.0, "vae.kl_start", f"must be in [0, 1], got {v.kl_start}")
  _check(v.kl_warmup_epochs >= 0, "vae.kl_warmup_epochs", "must be >= 0")
  _check(0 < config.langevin.prior_weight_start <= 1, "langevin.prior_weight_start",
         f"must be in (0, 1], got {config.langevin.prior_weight_start}")
  _check(config.langevin.prior_weight_warmup_epochs >= 0, "langevin.prior_weight_warmup_epochs",
         "must be >= 0 (0: beta = 1 throughout)")
  _check(v.free_bits >= 0, "vae.free_bits", "must be >= 0")
  _check(v.aggressive_epochs >= 0, "vae.aggressive_epochs", "must be >= 0")
  _check(v.aggressive_window >= 1, "vae.aggressive_window", "must be >= 1")
  _check(v.aggressive_max_steps >= 1, "vae.aggressive_max_steps", "must be >= 1")
  sa = config.savae
  _check(sa.refine_steps >= 0, "savae.refine_steps", "must be >= 0 (0: the plain VAE)")
  _check(sa.refine_learning_rate > 0, "savae.refine_learning_rate", "must be > 0")
  _check(0 <= sa.refine_momentum < 1, "savae.refine_momentum", "must be in [0, 1)")
  _check(sa.refine_max_grad_norm > 0, "savae.refine_max_grad_norm", "must be > 0")
  _check(e.step_sizes in EVAL_STEP_SIZES, "eval.step_sizes",
         f"must be one of {EVAL_STEP_SIZES}, got {e.step_sizes!r}")
  _check(e.num_samples >= 1, "eval.num_samples", f"must be >= 1, got {e.num_samples}")
  _check(e.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {e.batch_size}")
  _check(e.num_posterior_chains >= 2, "eval.num_posterior_chains",
         f"must be >= 2 (a variance needs two chains), got {e.num_posterior_chains}")
  _check(e.max_sentences >= 0, "eval.max_sentences", "must be >= 0 (0: whole split)")
  _check(e.estimator in ESTIMATORS, "eval.estimator",
         f"must be one of {ESTIMATORS}, got {e.estimator!r}")
  _check(not (e.estimator == "ais" and e.step_sizes == "fitted"), "eval.step_sizes",
         "fitted step sizes are the method's own chains; AIS (--config.eval.estimator=ais) "
         "uses none of them")
  for name in ("ais_steps", "ais_chains", "ais_leapfrog", "bdmc_sentences"):
    _check(getattr(e, name) >= 1, f"eval.{name}", f"must be >= 1, got {getattr(e, name)}")
  _check(0 < e.ais_step_size <= 0.5, "eval.ais_step_size",
         f"must be in (0, 0.5] (the adapted step size's range), got {e.ais_step_size}")
  _check(len(e.bdmc_steps) >= 1 and all(n >= 1 for n in e.bdmc_steps), "eval.bdmc_steps",
         f"must be one or more AIS step counts >= 1, got {e.bdmc_steps}")
  a = config.analysis
  _check(a.temperature >= 0, "analysis.temperature", "must be >= 0 (0: greedy)")
  _check(0 <= a.top_k, "analysis.top_k", "must be >= 0 (0: no restriction)")
  _check(a.max_length >= 1, "analysis.max_length", "must be >= 1")
  _check(0 <= a.min_length < a.max_length, "analysis.min_length",
         f"must be >= 0 and below max_length ({a.max_length})")
  _check(a.num_samples >= 1, "analysis.num_samples", "must be >= 1")
  _check(a.max_sentences >= 1, "analysis.max_sentences", "must be >= 1")
  _check(2 <= a.num_points, "analysis.num_points", "must be >= 2 (the two ends)")
  _check(a.batch_size >= 1, "analysis.batch_size", "must be >= 1")
  _check(a.feature_chains >= 1, "analysis.feature_chains", "must be >= 1")
  _check(a.feature_steps >= 1, "analysis.feature_steps", "must be >= 1")
  _check(a.feature_step_size > 0, "analysis.feature_step_size", "must be > 0")
  _check(len(a.label_splits) >= 1, "analysis.label_splits", "needs at least one split")
  _check(config.parallel.num_devices >= 0, "parallel.num_devices", "must be >= 0 (0: all)")
  return config


def step_sizes(config: LangevinConfig) -> tuple[float, ...]:
  """The num_steps step sizes of the chain: the configured ones, the last repeated if short."""
  sizes = tuple(config.step_sizes[:config.num_steps])
  return sizes + (sizes[-1],) * (config.num_steps - len(sizes))


def to_dict(config: Config) -> dict[str, Any]:
  return dataclasses.asdict(config)


def section_type(field: dataclasses.Field) -> type:
  return field.type if isinstance(field.type, type) else field.default_factory


def from_dict(values: dict[str, Any]) -> Config:
  """Inverse of to_dict (lists become tuples); unknown keys raise ConfigError."""
  sections = {}
  for field in dataclasses.fields(Config):
    section_class = section_type(field)
    raw = dict(values.get(field.name, {}))
    known = {f.name for f in dataclasses.fields(section_class)}
    unknown = set(raw) - known
    if unknown:
      raise ConfigError(f"unknown config keys {sorted(unknown)} in section {field.name!r}")
    sections[field.name] = section_class(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
  return Config(**sections)


# Fields that say what a checkpoint's parameters mean beyond their shapes (checkpointing checks
# the shapes themselves against what this config's init makes): its corpus and vocabulary, and
# its method. A checkpoint is restored only under a config that agrees on them.
IDENTITY_FIELDS = ("data.corpus", "data.source_dir", "data.split_files", "data.vocab_size",
                   "model.kind")


# Fields that fix the order of the training data: a run stopped mid-epoch can only resume
# under a config that agrees on them, else the saved position (a batch index) would skip or
# repeat sentences of that epoch.
DATA_ORDER_FIELDS = ("data.batch_size", "data.buckets", "data.overlong",
                     "data.max_train_sentences", "train.seed")


def field_values(config: Config, paths: Sequence[str]) -> dict[str, Any]:
  """{"section.field": value} for the given paths (lists as tuples)."""
  values = to_dict(config)
  picked = {path: values[path.split(".")[0]][path.split(".")[1]] for path in paths}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in picked.items()}



def _field_comments(section_type: type) -> dict[str, str]:
  """The comment lines above each field of a config dataclass, from its source."""
  comments, pending = {}, []
  for line in inspect.getsource(section_type).splitlines()[1:]:
    stripped = line.strip()
    if stripped.startswith("#"):
      pending.append(stripped.lstrip("# "))
      continue
    field = re.match(r"(\w+): [^=]+=.*?(?:#\s*(.*))?$", stripped)
    if field:
      comments[field.group(1)] = " ".join(pending + ([field.group(2)] if field.group(2) else []))
    pending = []
  return comments


def describe_fields() -> str:
  """Every --config.<section>.<field> with its type, default and comment, for --help."""
  lines = []
  for section in dataclasses.fields(Config):
    section_class = section_type(section)
    lines.append(f"--config.{section.name}: {inspect.getdoc(section_class).splitlines()[0]}")
    comments = _field_comments(section_class)
    defaults = section_class()
    for field in dataclasses.fields(section_class):
      type_name = field.type.__name__ if isinstance(field.type, type) else str(field.type)
      lines.append(f"  --config.{section.name}.{field.name}: {type_name} = "
                   f"{getattr(defaults, field.name)!r}")
      if comments.get(field.name):
        lines += textwrap.wrap(comments[field.name], 92, initial_indent="      ",
                               subsequent_indent="      ")
    lines.append("")
  return "\n".join(lines)


def load_run_config(workdir: str, overrides: dict[str, Any] | None = None) -> Config:
  """The config a run in `workdir` was trained with (its config.json), with `overrides`
  ({"eval.split": "valid", ...}) applied on top. Raises UserError if there is no run."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      values = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"no training run in {workdir} ({path} is missing): train first with "
                      f"python -m srlm.main --flagfile=... --workdir={workdir}") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path}: {e}") from None
  for key, value in (overrides or {}).items():
    section, _, field = key.partition(".")
    values.setdefault(section, {})[field] = value
  return from_dict(values)


def tiny() -> Config:
  """A config small enough for unit tests: a 300-sentence PTB slice, a small decoder."""
  return Config(
      data=DataConfig(batch_size=8, buckets=(22, 84), max_train_sentences=300,
                      max_eval_sentences=64),
      model=ModelConfig(embed_dim=16, hidden_dim=16, latent_dim=4),
      langevin=LangevinConfig(num_steps=4),
      train=TrainConfig(num_epochs=1, log_every_steps=5, checkpoint_every_steps=20),
      eval=EvalConfig(num_samples=3, batch_size=4, num_posterior_chains=3),
  )
