"""What latent features are good for (docs/method.md §6): a linear classifier trained on few
labels, and unsupervised clustering. Pure functions of (features, labels) arrays, built on
scikit-learn's logistic regression, PCA and Gaussian mixture."""

from typing import NamedTuple

import numpy as np
from scipy import optimize
from sklearn import decomposition
from sklearn import linear_model
from sklearn import mixture
from sklearn import pipeline as sk_pipeline
from sklearn import preprocessing

from srlm.errors import UserError

# Inverse L2 strengths tried for the linear classifier; the one with the best accuracy on the
# selection split is kept.
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 13))


class Labelled(NamedTuple):
  """Features (N, D) and integer labels (N,) of one split."""
  name: str
  features: np.ndarray
  labels: np.ndarray


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(predicted == labels))


def _check_labelled(data: Labelled, min_classes: int = 1) -> None:
  if len(data.labels) == 0:
    raise UserError(f"split {data.name!r} has no sentences.")
  if np.any(data.labels < 0):
    raise UserError(f"split {data.name!r} has no labels; classification and clustering need a "
                    "labelled corpus (--config.data.corpus=short_yelp).")
  if len(np.unique(data.labels)) < min_classes:
    raise UserError(f"split {data.name!r} holds only label {data.labels[0]}; a classifier "
                    "needs at least two classes to train on.")


def linear_classifier(train: Labelled, select: Labelled, test: Labelled,
                      c_grid: tuple[float, ...] = C_GRID) -> dict:
  """Logistic regression on standardised features (the paper's 32 -> 2 linear layer), its L2
  strength chosen by accuracy on `select`; returns the accuracies and the chosen C."""
  _check_labelled(train, min_classes=2)
  _check_labelled(select)
  _check_labelled(test)
  best = None
  for c in c_grid:
    model = sk_pipeline.make_pipeline(
        preprocessing.StandardScaler(), linear_model.LogisticRegression(C=c, max_iter=2000))
    model.fit(train.features, train.labels)
    accuracy = _accuracy(model.predict(select.features), select.labels)
    if best is None or accuracy > best[0]:
      best = (accuracy, c, model)
  select_accuracy, c, model = best
  return {"train_split": train.name, "num_labels": len(train.labels), "c": c,
          "train_accuracy": _accuracy(model.predict(train.features), train.labels),
          "select_accuracy": select_accuracy,
          "test_accuracy": _accuracy(model.predict(test.features), test.labels)}


def majority_accuracy(train: Labelled, test: Labelled) -> float:
  """Accuracy on `test` of always answering `train`'s most frequent label."""
  values, counts = np.unique(train.labels, return_counts=True)
  return _accuracy(np.full_like(test.labels, values[np.argmax(counts)]), test.labels)


def best_mapping_accuracy(clusters: np.ndarray, labels: np.ndarray) -> float:
  """Accuracy of cluster ids as labels under the one-to-one mapping that maximises it."""
  cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
  label_ids, label_index = np.unique(labels, return_inverse=True)
  counts = np.zeros((len(cluster_ids), len(label_ids)), np.int64)
  np.add.at(counts, (cluster_index, label_index), 1)
  rows, cols = optimize.linear_sum_assignment(counts, maximize=True)
  return float(counts[rows, cols].sum() / len(labels))


def principal_components(features_NxD: np.ndarray, num_dims: int, seed: int = 0) -> np.ndarray:
  """The features projected on their first min(num_dims, D) principal components (N, <=d)."""
  num_dims = min(num_dims, features_NxD.shape[1])
  return decomposition.PCA(num_dims, random_state=seed).fit_transform(features_NxD)


def cluster(data: Labelled, num_dims: int = 4, seed: int = 0) -> dict:
  """PCA to num_dims dimensions, then a Gaussian mixture with one component per label;
  accuracy of the components as labels under the best mapping."""
  _check_labelled(data)
  projected = principal_components(data.features, num_dims, seed)
  num_clusters = len(np.unique(data.labels))
  gmm = mixture.GaussianMixture(num_clusters, n_init=5, random_state=seed).fit(projected)
  return {"split": data.name, "num_sentences": len(data.labels), "pca_dims": projected.shape[1],
          "num_clusters": num_clusters,
          "accuracy": best_mapping_accuracy(gmm.predict(projected), data.labels)}
