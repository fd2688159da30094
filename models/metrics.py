"""Losses and metrics: the masked loss the steps minimize, ROC-AUC and RMSE.

:data:`METRICS` names each metric's function and direction (``"max"`` or
``"min"``); :func:`metrics_of` computes the loss and a task's metric of a
part's predictions (RMSE in the original units of the targets).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
from sklearn import metrics as sk_metrics

from models import input_pipeline


def masked_loss(logits, labels, mask, task_type: str):
  """Masked BCE-with-logits (classification) or RMSE (regression).

  Only entries with ``mask`` True count (missing labels and padding graphs
  are False); a batch without any gives 0 with zero gradient.
  """
  mask = mask.astype(logits.dtype)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  if task_type == "classification":
    losses = optax.sigmoid_binary_cross_entropy(logits, labels)
    return jnp.sum(losses * mask) / count
  if task_type == "regression":
    mse = jnp.sum(jnp.square(logits - labels) * mask) / count
    # sqrt has an infinite slope at 0: keep the gradient finite there (and
    # let a NaN through, so that a diverging run is seen).
    safe = jnp.where(mse == 0, 1.0, mse)
    return jnp.where(mse == 0, 0.0, jnp.sqrt(safe))
  raise ValueError(
    f"task_type must be classification or regression: {task_type}"
  )


def _numpy_loss(logits, labels, mask, task_type: str) -> float:
  """``masked_loss`` on the host, for evaluation (no compilation per size)."""
  count = max(int(mask.sum()), 1)
  if task_type == "classification":
    bce = (
      np.maximum(logits, 0)
      - logits * labels
      + np.log1p(np.exp(-np.abs(logits)))
    )
    return float((bce * mask).sum() / count)
  return float(np.sqrt((np.square(logits - labels) * mask).sum() / count))


def roc_auc(labels, mask, scores) -> float:
  """Mean ROC-AUC over tasks; tasks with one class in ``labels`` skipped.

  Returns NaN when no task has both classes.

  Examples:
    >>> y = np.array([[0, 1], [1, 1], [0, 1]], np.float32)
    >>> m = np.ones_like(y, bool)
    >>> roc_auc(y, m, np.array([[0.1, 0], [0.9, 0], [0.2, 0]]))
    1.0
  """
  aucs = []
  for t in range(labels.shape[1]):
    y, s = labels[mask[:, t], t], scores[mask[:, t], t]
    if len(np.unique(y)) == 2:
      aucs.append(sk_metrics.roc_auc_score(y, s))
  return float(np.mean(aucs)) if aucs else math.nan


def rmse(labels, mask, predictions) -> float:
  """Root mean squared error over the present labels (all tasks)."""
  return float(
    np.sqrt(sk_metrics.mean_squared_error(labels[mask], predictions[mask]))
  )


METRICS = {"roc_auc": (roc_auc, "max"), "rmse": (rmse, "min")}


def improves(metric: str, value: float, best: float) -> bool:
  """Whether ``value`` of ``metric`` beats ``best`` (NaN: nothing yet).

  Examples:
    >>> improves("rmse", 0.5, 0.6), improves("roc_auc", 0.5, 0.6)
    (True, False)
    >>> improves("rmse", 0.5, float("nan"))
    True
  """
  if math.isnan(best):
    return True
  return value > best if METRICS[metric][1] == "max" else value < best


def metrics_of(
  logits: np.ndarray,
  labels: np.ndarray,
  masks: np.ndarray,
  task_type: str,
  scaler: input_pipeline.TargetScaler | None,
) -> dict[str, float]:
  """Loss and the task's metric of :func:`predict_batches`' outputs."""
  loss = _numpy_loss(logits.astype(np.float64), labels, masks, task_type)
  if task_type == "classification":
    return {"loss": loss, "roc_auc": roc_auc(labels, masks, logits)}
  if scaler is not None:
    logits = scaler.inverse_transform(logits)
    labels = scaler.inverse_transform(labels)
  return {"loss": loss, "rmse": rmse(labels, masks, logits)}
