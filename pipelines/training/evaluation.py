"""Anomaly-detector evaluation without scikit-learn: PR curve, average precision, threshold, plots.

Scores are "higher = more anomalous" (the autoencoder's reconstruction error) and labels are 0/1.
PR-AUC is reported as *average precision* (the step-wise area, as scikit-learn's
``average_precision_score`` computes it; no optimistic trapezoid interpolation).

Usage::

    threshold = pick_threshold(val_labels, val_scores)             # max F1
    metrics = classification_metrics(test_labels, test_scores, threshold)
    plot_pr_curve("pr_curve.png", test_labels, test_scores, threshold)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = [
    "precision_recall_curve",
    "average_precision",
    "pick_threshold",
    "classification_metrics",
    "plot_pr_curve",
    "plot_score_histogram",
]

_LOGGER = logging.getLogger(__name__)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return labels, scores


def precision_recall_curve(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall when flagging ``score >= t`` for every distinct score ``t``.

    Returns ``(precision, recall, thresholds)``, thresholds descending (ties share one point).
    """
    labels, scores = _check(labels, scores)
    positives = labels.sum()
    if positives == 0:
        raise ValueError("no positive labels: precision/recall are undefined")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    true_pos = np.cumsum(labels[order])
    # The last index of each run of equal scores: all tied rows are flagged together.
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], scores.size - 1]
    flagged = last + 1
    precision = true_pos[last] / flagged
    recall = true_pos[last] / positives
    return precision, recall, sorted_scores[last]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the PR curve as ``sum((R_n - R_{n-1}) * P_n)``."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pick_threshold(
    labels: np.ndarray, scores: np.ndarray, *, target_precision: float | None = None
) -> float:
    """The anomaly threshold (flag ``score > threshold``) chosen on labelled validation rows.

    Default: the point of maximum F1. With ``target_precision``: the lowest threshold whose
    precision reaches it (most recall at that precision), falling back to max F1 if none does.
    The threshold is placed halfway to the next lower score so that ``>`` flags exactly the
    chosen rows and unseen scores in the gap fall on the cautious side half the time.
    """
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    index = int(np.argmax(f1))
    if target_precision is not None:
        meets = np.nonzero(precision >= target_precision)[0]
        if meets.size:
            index = int(meets[-1])
        else:
            _LOGGER.warning(
                "no threshold reaches precision %.3f on validation; using max F1", target_precision
            )
    lower = thresholds[index + 1] if index + 1 < thresholds.size else thresholds[index] - 1.0
    return float((thresholds[index] + lower) / 2)


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Precision, recall, F1 at ``threshold``, PR-AUC (average precision) and counts."""
    labels, scores = _check(labels, scores)
    flagged = scores > threshold
    tp = int(np.sum(flagged & (labels == 1)))
    fp = int(np.sum(flagged & (labels == 0)))
    fn = int(np.sum(~flagged & (labels == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pr_auc": average_precision(labels, scores) if labels.any() else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "threshold": float(threshold),
        "rows": int(labels.size),
        "positives": int(labels.sum()),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curve(path: str, labels: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    """Write the precision-recall curve with the chosen operating point marked."""
    plt = _pyplot()
    precision, recall, _ = precision_recall_curve(labels, scores)
    point = classification_metrics(labels, scores, threshold)
    fig, axes = plt.subplots(figsize=(6, 5))
    axes.step(
        recall, precision, where="post", label=f"AP = {average_precision(labels, scores):.3f}"
    )
    axes.plot(point["recall"], point["precision"], "o", label=f"threshold {threshold:.4g}")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    axes.set_title("Precision-recall on the held-out split")
    axes.legend(loc="lower left")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_score_histogram(
    path: str, labels: np.ndarray, scores: np.ndarray, threshold: float
) -> None:
    """Write score histograms of normal and anomalous rows (log counts) and the threshold."""
    plt = _pyplot()
    labels, scores = _check(labels, scores)
    fig, axes = plt.subplots(figsize=(7, 4))
    bins = np.logspace(np.log10(max(scores.min(), 1e-6)), np.log10(scores.max() + 1e-6), 60)
    axes.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal", log=True)
    axes.hist(scores[labels == 1], bins=bins, alpha=0.8, label="anomaly", log=True)
    axes.axvline(threshold, color="k", linestyle="--", label="threshold")
    axes.set(xscale="log", xlabel="reconstruction error", ylabel="rows")
    axes.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
