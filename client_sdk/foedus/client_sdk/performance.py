"""Model performance from additive counts: exact metrics, the CBPE estimate, fairness.

Agents join each prediction with its delayed label and send counts, never raw inputs: per version,
minute of prediction time and segment of the sensitive feature, the confusion cells (true class,
predicted class, count), per class the distinct predicted probabilities with how many labelled
predictions of (positives) and not of (negatives) that class had them, and for regression the sums
of |e|, e^2 and e. Counts of agents and intervals add up, and the metrics computed from the sums
equal scikit-learn's on the same predictions:

- accuracy; precision, recall and F1 per class and their macro average over the classes seen as
  true or predicted (`average="macro"`, zero where a ratio is 0/0);
- ROC-AUC from the merged score counts (ties count one half, as the trapezoidal ROC does): binary
  for two classes (the greater label is positive), one-vs-rest macro for more;
- MAE, RMSE, and the bias (mean of prediction - label).

CBPE (confidence-based performance estimation, as in NannyML) estimates the metrics of predictions
whose labels have not arrived: with calibrated probabilities p, a prediction of class k is expected
to be right with probability p_k, so its expected confusion row adds p_c to the cell (c, k) for each
class c. The estimate holds only as far as the probabilities are calibrated.

Fairness compares segments of a declared sensitive feature: the selection rate (share predicted as
the positive class) and the true positive rate per segment; the demographic parity difference is
max - min selection rate, the equal opportunity difference max - min TPR (segments with positives).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Cell = tuple[str, str]
"""(true label, predicted label)."""

CLASSIFICATION = "classification"
REGRESSION = "regression"


def label_key(label: str) -> tuple[int, float, str]:
    """Sort key of class labels: numbers by value before other labels by text."""
    try:
        value = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (0, value, label) if math.isfinite(value) else (1, 0.0, label)


@dataclass
class PerformanceTotals:
    """The sum of counts of one version (and window, and segment)."""

    task: str = ""
    predictions: int = 0
    labelled: int = 0
    confusion: dict[Cell, float] = field(default_factory=dict)
    scores: dict[str, dict[float, list[int]]] = field(default_factory=dict)
    """class -> score -> [positives, negatives]."""
    expected: dict[Cell, float] = field(default_factory=dict)
    sum_abs_error: float = 0.0
    sum_squared_error: float = 0.0
    sum_error: float = 0.0

    def add_cells(self, target: dict[Cell, float], cells: Iterable[tuple[str, str, float]]) -> None:
        for true, predicted, weight in cells:
            target[(true, predicted)] = target.get((true, predicted), 0.0) + weight

    def add_scores(self, label: str, scores: Sequence[float], pos: Sequence[int], neg: Sequence[int]) -> None:
        by_score = self.scores.setdefault(label, {})
        for s, p, n in zip(scores, pos, neg, strict=True):
            slot = by_score.setdefault(float(s), [0, 0])
            slot[0] += int(p)
            slot[1] += int(n)

    def merge(self, other: PerformanceTotals) -> None:
        self.task = self.task or other.task
        self.predictions += other.predictions
        self.labelled += other.labelled
        self.add_cells(self.confusion, ((t, p, w) for (t, p), w in other.confusion.items()))
        self.add_cells(self.expected, ((t, p, w) for (t, p), w in other.expected.items()))
        for label, by_score in other.scores.items():
            items = sorted(by_score.items())
            self.add_scores(label, [s for s, _ in items], [c[0] for _, c in items], [c[1] for _, c in items])
        self.sum_abs_error += other.sum_abs_error
        self.sum_squared_error += other.sum_squared_error
        self.sum_error += other.sum_error


@dataclass(frozen=True, slots=True)
class ClassResult:
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    roc_auc: float


@dataclass(frozen=True, slots=True)
class ClassificationResult:
    accuracy: float
    precision: float
    recall: float
    f1: float
    classes: list[ClassResult]
    count: float


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def classification_metrics(
    confusion: Mapping[Cell, float], scores: Mapping[str, Mapping[float, Sequence[int]]] | None = None
) -> ClassificationResult:
    """Accuracy, macro precision/recall/F1 and per-class results of a confusion (counts or expected)."""
    labels = sorted({t for t, _ in confusion} | {p for _, p in confusion}, key=label_key)
    total = sum(confusion.values())
    correct = sum(w for (t, p), w in confusion.items() if t == p)
    classes = []
    for label in labels:
        tp = confusion.get((label, label), 0.0)
        predicted = sum(w for (_, p), w in confusion.items() if p == label)
        actual = sum(w for (t, _), w in confusion.items() if t == label)
        classes.append(
            ClassResult(
                label=label,
                precision=_ratio(tp, predicted),
                recall=_ratio(tp, actual),
                f1=_ratio(2 * tp, predicted + actual),
                support=round(actual),
                roc_auc=roc_auc(scores[label]) if scores and label in scores else math.nan,
            )
        )
    n = len(classes)
    return ClassificationResult(
        accuracy=_ratio(correct, total) if total > 0 else math.nan,
        precision=sum(c.precision for c in classes) / n if n else math.nan,
        recall=sum(c.recall for c in classes) / n if n else math.nan,
        f1=sum(c.f1 for c in classes) / n if n else math.nan,
        classes=classes,
        count=total,
    )


def roc_auc(by_score: Mapping[float, Sequence[int]]) -> float:
    """Exact ROC-AUC of score -> (positives, negatives) counts; NaN without both kinds."""
    items = sorted(by_score.items())
    positives = sum(c[0] for _, c in items)
    negatives = sum(c[1] for _, c in items)
    if positives == 0 or negatives == 0:
        return math.nan
    below = 0  # negatives with a lower score
    area = 0.0
    for _, (pos, neg) in items:
        area += pos * (below + 0.5 * neg)
        below += neg
    return area / (positives * negatives)


def overall_roc_auc(classes: Sequence[ClassResult]) -> float:
    """Binary AUC of the greater label for two classes, one-vs-rest macro average for more."""
    if len(classes) == 2:
        return classes[1].roc_auc
    values = [c.roc_auc for c in classes if not math.isnan(c.roc_auc)]
    return sum(values) / len(values) if values and len(values) == len(classes) else math.nan


def expected_confusion(
    probabilities: np.ndarray, predicted: Sequence[str], classes: Sequence[str]
) -> dict[Cell, float]:
    """CBPE: the confusion expected from calibrated probabilities (rows: predictions, columns:
    `classes`). Each row is scaled to add up to 1 (float32 model outputs add up to 1 only nearly)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    sums = probs.sum(axis=1, keepdims=True)
    probs = np.divide(probs, sums, out=np.zeros_like(probs), where=sums > 0)
    out: dict[Cell, float] = {}
    for k, label in enumerate(predicted):
        for c, true in enumerate(classes):
            p = float(probs[k, c])
            if p != 0.0:
                out[(true, label)] = out.get((true, label), 0.0) + p
    return out


@dataclass(frozen=True, slots=True)
class SegmentResult:
    segment: str
    labelled: int
    selection_rate: float
    true_positive_rate: float
    accuracy: float


@dataclass(frozen=True, slots=True)
class FairnessResult:
    positive: str
    segments: list[SegmentResult]
    demographic_parity_difference: float
    equal_opportunity_difference: float


def fairness(confusions: Mapping[str, Mapping[Cell, float]], positive: str) -> FairnessResult:
    """Selection rate and TPR of `positive` per segment, and their max - min differences."""
    segments = []
    for segment in sorted(confusions):
        confusion = confusions[segment]
        total = sum(confusion.values())
        if total <= 0:
            continue
        selected = sum(w for (_, p), w in confusion.items() if p == positive)
        actual = sum(w for (t, _), w in confusion.items() if t == positive)
        segments.append(
            SegmentResult(
                segment=segment,
                labelled=round(total),
                selection_rate=selected / total,
                true_positive_rate=confusion.get((positive, positive), 0.0) / actual
                if actual > 0
                else math.nan,
                accuracy=sum(w for (t, p), w in confusion.items() if t == p) / total,
            )
        )
    rates = [s.selection_rate for s in segments]
    tprs = [s.true_positive_rate for s in segments if not math.isnan(s.true_positive_rate)]
    return FairnessResult(
        positive=positive,
        segments=segments,
        demographic_parity_difference=max(rates) - min(rates) if rates else math.nan,
        equal_opportunity_difference=max(tprs) - min(tprs) if tprs else math.nan,
    )
