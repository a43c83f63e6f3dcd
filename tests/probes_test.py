"""The linear classifier and the clustering of latent features, on synthetic features."""

import numpy as np
import pytest

from srlm import probes
from srlm.errors import UserError


def _two_classes(rng, n, dim=32, separation=3.0):
  """Two Gaussian classes whose means differ by `separation` along one random direction."""
  labels = rng.integers(0, 2, n)
  direction = np.ones(dim) / np.sqrt(dim)
  features = rng.normal(size=(n, dim)) + separation * np.outer(labels - 0.5, direction) * 2
  return features.astype(np.float32), labels


def test_classifier_separates_separable_features():
  rng = np.random.default_rng(0)
  train, select, test = (probes.Labelled(name, *_two_classes(rng, n))
                         for name, n in (("train", 100), ("valid", 1000), ("test", 2000)))
  result = probes.linear_classifier(train, select, test)
  assert result["test_accuracy"] > 0.95
  assert result["num_labels"] == 100 and result["c"] in probes.C_GRID


def test_classifier_is_at_chance_on_shuffled_labels():
  rng = np.random.default_rng(1)
  features, labels = _two_classes(rng, 5000)
  shuffled = rng.permutation(labels)
  train = probes.Labelled("train", features[:1000], shuffled[:1000])
  select = probes.Labelled("valid", features[1000:2000], shuffled[1000:2000])
  test = probes.Labelled("test", features[2000:], shuffled[2000:])
  result = probes.linear_classifier(train, select, test)
  # 3000 test sentences: the standard error of an accuracy near 0.5 is about 0.009.
  assert abs(result["test_accuracy"] - 0.5) < 0.04


def test_classifier_rejects_unlabelled_and_one_class_splits():
  features = np.zeros((4, 2), np.float32)
  good = probes.Labelled("valid", features, np.array([0, 1, 0, 1]))
  with pytest.raises(UserError, match="'train' has no labels"):
    probes.linear_classifier(probes.Labelled("train", features, -np.ones(4, int)), good, good)
  with pytest.raises(UserError, match="'train' holds only label 1"):
    probes.linear_classifier(probes.Labelled("train", features, np.ones(4, int)), good, good)


def test_best_mapping_accuracy_ignores_cluster_names():
  labels = np.array([0, 0, 0, 1, 1, 2])
  assert probes.best_mapping_accuracy(np.array([5, 5, 5, 7, 7, 9]), labels) == 1.0
  assert probes.best_mapping_accuracy(np.array([1, 1, 1, 0, 0, 2]), labels) == 1.0
  # One-to-one: two label groups cannot both map to cluster 0.
  assert probes.best_mapping_accuracy(np.array([0, 0, 0, 0, 0, 1]), labels) == pytest.approx(
      4 / 6)


def test_clustering_recovers_two_separated_groups():
  rng = np.random.default_rng(2)
  features, labels = _two_classes(rng, 600, separation=4.0)
  result = probes.cluster(probes.Labelled("test", features, labels))
  assert result["accuracy"] > 0.95 and result["pca_dims"] == 4 and result["num_clusters"] == 2
  swapped = probes.cluster(probes.Labelled("test", features, 1 - labels))
  assert swapped["accuracy"] == result["accuracy"]
  noise = probes.cluster(probes.Labelled("test", features, rng.permutation(labels)))
  assert noise["accuracy"] < 0.6
