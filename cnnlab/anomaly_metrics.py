"""How well a score ranks anomalies above normal samples: AUROC, AUPRC (average precision), the best
F1 over all thresholds with the threshold that reaches it, and precision, recall and F1 at a given
threshold. One implementation, torchmetrics', used by the models' evaluation (lightning_modules/base.py)
and by the benchmarks alike.

torchmetrics reads scores outside [0, 1] as logits and squashes them through a sigmoid, which in
float32 rounds every large score to 1.0 and creates ties that are not in the data. The scores are
therefore replaced by their dense ranks scaled onto [0, 1] first (a min-max map would not do: one far
outlier squeezes every other score into a few float steps), which keeps every order and every tie
exactly as it was, and AUROC, average precision and F1 depend on nothing else."""

import math

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_precision_recall_curve,
    binary_recall,
)

UNDEFINED = float("nan")  # a metric the split cannot define, reported as such rather than left out
RANKING = ("auroc", "auprc", "best_f1", "best_f1_threshold")
AT_THRESHOLD = ("precision", "recall", "f1")


def unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """Each score's dense rank among the distinct scores, scaled onto [0, 1], float64 (order and ties kept)."""
    distinct, rank = torch.unique(scores.detach().double().cpu(), sorted=True, return_inverse=True)
    return rank.double() / max(len(distinct) - 1, 1)


def anomaly_report(scores: torch.Tensor, is_anomaly: torch.Tensor, threshold: float | None = None) -> dict[str, float]:
    """Anomalies are the positive class, larger scores more anomalous; `scores` and `is_anomaly` [N].

    auroc, auprc, best_f1 (the highest F1 of 'score >= t' over every t) and best_f1_threshold (that
    t, in the score's own units); with `threshold`, also precision, recall and f1 of 'score >=
    threshold'. NaN where the split cannot define them (only one kind of sample, or a non-finite
    score): no ranking of normal against anomalous samples exists there, and a 0 would read as a
    result."""
    target = is_anomaly.detach().long().cpu()
    keys = RANKING + (AT_THRESHOLD if threshold is not None else ())
    if len(target) == 0 or target.min() == target.max() or not bool(torch.isfinite(scores).all()):
        return dict.fromkeys(keys, UNDEFINED)
    ranked = unit_interval(scores)
    report = {"auroc": float(binary_auroc(ranked, target)), "auprc": float(binary_average_precision(ranked, target))}
    precision, recall, thresholds = binary_precision_recall_curve(ranked, target)
    precision, recall = precision.double(), recall.double()
    f1 = (2 * precision * recall / (precision + recall).clamp_min(1e-300))[: len(thresholds)]  # 0 where both are
    best = int(f1.argmax())
    # The threshold as the score it is (the curve's thresholds are the mapped scores, possibly rounded
    # to float32): the nearest mapped score's original value, so 'score >= threshold' flags exactly the
    # samples that reached this F1.
    nearest = int((ranked - float(thresholds[best])).abs().argmin())
    report |= {"best_f1": float(f1[best]), "best_f1_threshold": float(scores.detach().double().cpu()[nearest])}
    if threshold is not None:
        flagged = (scores.detach().double().cpu() >= threshold).long()
        report |= {
            "precision": float(binary_precision(flagged, target)),
            "recall": float(binary_recall(flagged, target)),
            "f1": float(binary_f1_score(flagged, target)),
        }
    return report


def brute_force_auroc(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    """P(anomaly's score > normal's score) + half P(tie), over every (normal, anomaly) pair: the
    definition of AUROC, O(N^2), for checking `anomaly_report` on small cases."""
    normal, anomalous = scores[~is_anomaly].double(), scores[is_anomaly].double()
    if not len(normal) or not len(anomalous):
        return math.nan
    above = (anomalous[:, None] > normal[None, :]).double().sum()
    ties = (anomalous[:, None] == normal[None, :]).double().sum()
    return float((above + ties / 2) / (len(normal) * len(anomalous)))
