"""Label-free decision rules for the SMD anomaly model, side by side, on the same fitted models.

The anomaly model's point-adjusted F1 on SMD falls short of what the same scores reach with a
threshold chosen on the test labels (`smd_f1_pa_best`, an oracle). This script asks whether
another rule that needs no labels closes the gap. Per machine it fits the model once
(`AnomalyModel.fit`, search included, on the unlabelled `train` series, as bench/ops_eval.py
does), takes its per-metric error terms on train and test, and scores the test series with:

* ``base``: what agents run: the drift-compensated score against the model's threshold (median of
  the training score's daily maxima);
* ``scale_<k>``: that threshold times k;
* ``bmq_<q>``: the q quantile of the training score's daily maxima instead of their median;
* ``pot_<risk>``: Peaks-Over-Threshold on the training scores (level 0.98);
* ``roll_<N>``: recalibrated every day, online: the median of the daily maxima of the last N days
  seen (training, then test days as they complete; 0 = all), never below the training threshold;
* ``spot_<risk>``: streaming POT: refitted every day on the training scores plus the test scores
  seen so far that did not alarm;
* ``nsum``, ``nmax``, ``max``: other aggregations of the per-metric terms (each term divided by
  its training reference level and summed, or the largest of them; the largest raw term), each
  with its own block-maxima threshold;
* ``smooth_<k>``: the score averaged over its last k steps;
* ``ndt``: the non-parametric dynamic threshold of Hundman et al. (KDD 2018, Telemanom), online:
  every 70 steps, epsilon = mean + z * std of the last 2100 scores (training, then test), with z in
  2.5, 3, ... 12 chosen to maximise the relative drop in mean and std of the scores below epsilon
  per (sequences above it squared + points above it), at most 5 sequences (their pruning step is
  left out); ``ndt_or_base``: an alarm when either that or the model's threshold is crossed.

No rule uses a test label; ``*_oracle`` figures do (the best threshold for the rule's score) and
are there to tell a worse score from a worse threshold. The parameters are round values, not
tuned; every rule is evaluated on the same machines as the model's own, so read small
differences as noise.

    .venv/bin/python bench/smd_thresholds.py --json /tmp/smd-thresholds.json   # ~10 min on 2 cores
    .venv/bin/python bench/smd_thresholds.py --machines machine-1-5 machine-2-8
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from foedus.client_sdk.agent.compensation import DriftCompensation, compensated_scores, reference_levels
from foedus.federation.anomaly import AnomalyModel, block_maxima_threshold
from foedus.federation.evaluation.metrics import best_f1_threshold, detection_scores, pot_threshold
from foedus.federation.evaluation.smd import available_machines, default_data_dir, load_machine

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def daily_maxima(scores: FloatArray, block: int) -> FloatArray:
    k = scores.size // block
    out: FloatArray = scores[scores.size - k * block :].reshape(k, block).max(axis=1)
    return out


def rolling(train: FloatArray, test: FloatArray, block: int, days: int) -> BoolArray:
    """Threshold recalibrated after every test day: median of the last `days` daily maxima."""
    history = list(daily_maxima(train, block))
    floor = float(np.median(history))
    pred = np.zeros(test.size, dtype=bool)
    for start in range(0, test.size, block):
        window = history[-days:] if days else history
        threshold = max(float(np.median(window)), floor)
        part = test[start : start + block]
        pred[start : start + block] = part >= threshold
        if part.size == block:
            history.append(float(part.max()))
    return pred


def streaming_pot(train: FloatArray, test: FloatArray, block: int, risk: float) -> BoolArray:
    """POT refitted every day on the training scores and the test scores that did not alarm."""
    pool = [train]
    pred = np.zeros(test.size, dtype=bool)
    for start in range(0, test.size, block):
        threshold = pot_threshold(np.concatenate(pool), risk=risk)
        part = test[start : start + block]
        flags = part >= threshold
        pred[start : start + block] = flags
        pool.append(part[~flags])
    return pred


def ndt_epsilon(scores: FloatArray) -> float:
    """Telemanom's epsilon for one window of scores (no pruning); +inf when no z qualifies."""
    mean, std = float(scores.mean()), float(scores.std())
    best, epsilon = -math.inf, math.inf
    if mean <= 0 or std <= 0:
        return epsilon
    for z in np.arange(2.5, 12.5, 0.5):
        candidate = mean + z * std
        above = np.flatnonzero(scores >= candidate)
        if above.size == 0:
            continue
        below = scores[scores < candidate]
        sequences = int(np.count_nonzero(np.diff(above) > 1)) + 1
        gain = ((mean - below.mean()) / mean + (std - below.std()) / std) / (sequences**2 + above.size)
        if gain >= best and sequences <= 5 and above.size < scores.size / 2:
            best, epsilon = gain, candidate
    return epsilon


def dynamic_threshold(train: FloatArray, test: FloatArray, window: int = 2100, batch: int = 70) -> FloatArray:
    """Each test step's `ndt_epsilon`, refitted every `batch` steps on the `window` scores before."""
    history = np.concatenate([train, test])
    out = np.empty(test.size)
    for start in range(0, test.size, batch):
        end = train.size + start
        out[start : start + batch] = ndt_epsilon(history[max(0, end - window) : end])
    return out


def compensated_terms(state: DriftCompensation | None, train: FloatArray, test: FloatArray) -> FloatArray:
    """The test terms times the compensation's per-metric weights, step by step, so that each step
    gets the weights `compensated_scores` sums it with (blocks count from the start of `train`)."""
    if state is None:
        return test
    state.update(train)
    out = np.empty_like(test)
    for t, row in enumerate(test):
        out[t] = row * state.weights
        state.update(row)
    return out


def rules(
    model: AnomalyModel, train_terms: FloatArray, test_terms: FloatArray
) -> dict[str, tuple[BoolArray, FloatArray]]:
    """Every rule's flags over the test series, with the score it thresholds (for the oracle)."""
    block = model.config.calibration_block
    train = train_terms.sum(axis=1)
    score = compensated_scores(model.compensation(), test_terms, history=train_terms)
    out: dict[str, tuple[BoolArray, FloatArray]] = {"base": (score >= model.threshold, score)}
    for k in (0.8, 1.25, 1.5, 2.0):
        out[f"scale_{k:g}"] = (score >= k * model.threshold, score)
    maxima = daily_maxima(train, block)
    for q in (0.75, 0.9, 1.0):
        out[f"bmq_{q:g}"] = (score >= float(np.quantile(maxima, q)), score)
    for risk in (1e-3, 1e-4):
        out[f"pot_{risk:g}"] = (score >= pot_threshold(train, risk=risk), score)
    for days in (7, 14, 28, 0):
        out[f"roll_{days}"] = (rolling(train, score, block, days), score)
    out["spot_0.001"] = (streaming_pot(train, score, block, 1e-3), score)
    epsilon = dynamic_threshold(train, score)
    out["ndt"] = (score >= epsilon, score)
    out["ndt_or_base"] = (score >= np.minimum(epsilon, model.threshold), score)
    terms = compensated_terms(model.compensation(), train_terms, test_terms)
    reference = np.maximum(reference_levels(train_terms, block), 1e-6)
    aggregations: dict[str, Callable[[FloatArray], FloatArray]] = {
        "nsum": lambda t: (t / reference).sum(axis=1),
        "nmax": lambda t: (t / reference).max(axis=1),
        "max": lambda t: t.max(axis=1),
    }
    for name, aggregate in aggregations.items():
        s = aggregate(terms)
        out[name] = (s >= block_maxima_threshold(aggregate(train_terms), block), s)
    for k in (3, 5, 10):
        kernel = np.ones(k) / k
        s = np.convolve(score, kernel)[: score.size]
        out[f"smooth_{k}"] = (s >= block_maxima_threshold(np.convolve(train, kernel)[: train.size], block), s)
    return out


def machine_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options the SMD bench scripts share: ``--data-dir``, ``--machines``, ``--json``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="data root holding smd/ (FOEDUS_DATA_DIR)"
    )
    parser.add_argument("--machines", nargs="*", default=None, help="machine names (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here as one flat object")
    return parser


def machines_of(args: argparse.Namespace) -> tuple[Path, list[str]] | None:
    """The data root and the machines to run on; None (after saying why) when there is no SMD data."""
    data_dir: Path = args.data_dir or default_data_dir()
    try:
        return data_dir, list(args.machines or available_machines(data_dir))
    except FileNotFoundError as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return None


def write_figures(path: Path | None, figures: dict[str, float]) -> None:
    """`figures` as one flat JSON object at `path` (when given), leaving out those not finite."""
    if path is not None:
        finite = {k: v for k, v in figures.items() if math.isfinite(v)}
        path.write_text(json.dumps(finite, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = machine_parser(
        "bench/smd_thresholds.py",
        "Label-free decision rules for the SMD anomaly model, on the same fitted models.",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    found = machines_of(args)
    if found is None:
        return 2
    data_dir, names = found
    started = time.perf_counter()
    per_rule: dict[str, dict[str, list[float]]] = {}
    for name in names:
        machine = load_machine(data_dir, name)
        model = AnomalyModel.fit(machine.train, feature_names=machine.feature_names, seed=args.seed)
        train_terms = model.feature_scores(machine.train)
        test_terms = model.feature_scores(machine.test)
        for rule, (pred, score) in rules(model, train_terms, test_terms).items():
            figures = per_rule.setdefault(rule, {"f1_pa": [], "f1": [], "f1_pa_oracle": []})
            ds = detection_scores(pred, machine.label)
            figures["f1_pa"].append(ds.f1_pa)
            figures["f1"].append(ds.f1)
            figures["f1_pa_oracle"].append(best_f1_threshold(score, machine.label, point_adjusted=True)[1])
        base = per_rule["base"]["f1_pa"][-1]
        print(
            f"{name}: base f1_pa {base:.3f} ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    out: dict[str, float] = {}
    print(
        f"\n{len(names)} SMD machines, seed {args.seed}; means over machines (oracle: test labels pick the threshold)"
    )
    print(f"{'rule':12} {'F1 (PA)':>8} {'F1':>7} {'oracle F1 (PA)':>15}")
    for rule, figures in per_rule.items():
        means = {k: float(np.mean(v)) for k, v in figures.items()}
        print(f"{rule:12} {means['f1_pa']:8.3f} {means['f1']:7.3f} {means['f1_pa_oracle']:15.3f}")
        for key, value in means.items():
            out[f"{rule}_{key}"] = value
    out["machines"] = float(len(names))
    out["seconds"] = time.perf_counter() - started
    write_figures(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
