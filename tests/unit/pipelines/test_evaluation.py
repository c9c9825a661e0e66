"""PR curve, average precision and threshold choice, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.training.evaluation import (
    average_precision,
    classification_metrics,
    pick_threshold,
    plot_pr_curve,
    plot_score_histogram,
    precision_recall_curve,
)


def test_average_precision_matches_the_step_definition() -> None:
    # scikit-learn's documented example: AP = 0.8333.
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    assert average_precision([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
    # Ties are flagged together: one point at precision 1/2, recall 1.
    assert average_precision([0, 1], [0.5, 0.5]) == 0.5


def test_precision_recall_curve_points() -> None:
    precision, recall, thresholds = precision_recall_curve([0, 1, 1, 0], [0.1, 0.9, 0.3, 0.5])
    assert thresholds.tolist() == [0.9, 0.5, 0.3, 0.1]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert recall.tolist() == [0.5, 0.5, 1.0, 1.0]


def test_pick_threshold_max_f1_and_target_precision() -> None:
    labels = np.array([0, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    # F1 by how many top rows are flagged: 1 → .5, 2 → .8, 4 → 6/7 (P 3/4, R 1), 7 → .6.
    threshold = pick_threshold(labels, scores)
    assert 0.3 < threshold < 0.4
    assert classification_metrics(labels, scores, threshold)["f1"] == pytest.approx(6 / 7)
    # Precision 1 at the most recall: the top 2.
    threshold = pick_threshold(labels, scores, target_precision=1.0)
    assert 0.5 < threshold < 0.6
    metrics = classification_metrics(labels, scores, threshold)
    assert (metrics["precision"], metrics["recall"]) == (1.0, pytest.approx(2 / 3))


def test_metrics_counts_and_input_checks() -> None:
    metrics = classification_metrics([0, 1, 1, 0], [0.9, 0.8, 0.1, 0.2], 0.5)
    assert metrics["true_positives"] == 1 and metrics["false_positives"] == 1
    assert metrics["false_negatives"] == 1 and metrics["pr_auc"] == pytest.approx(
        0.5 * 0.5 + 0.5 * 0.5
    )
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        average_precision([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="no positive labels"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        average_precision([0, 1], [0.1, float("nan")])


def test_plots_are_written(tmp_path) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.1).astype(int)
    scores = rng.random(500) + labels
    plot_pr_curve(str(tmp_path / "pr.png"), labels, scores, 1.0)
    plot_score_histogram(str(tmp_path / "hist.png"), labels, scores, 1.0)
    for name in ("pr.png", "hist.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
