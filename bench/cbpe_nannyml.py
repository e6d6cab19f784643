"""CBPE on real data: NannyML's US Census employment data set (Massachusetts), by year.

The data set holds a binary classifier's predictions and predicted probabilities for 2015
(reference, with labels) and 2016-2018 (analysis, labels in a separate file). For each year this
computes the CBPE estimate exactly as Foedus does (`foedus.client_sdk.performance.expected_confusion`
on the probabilities of the predictions, as if no label had arrived) and the realised metrics from
the labels, and prints the error of the estimate; with `--calibrate`, probabilities are first
calibrated on the reference year with isotonic regression (as NannyML does when scores are not
calibrated). It also prints the fairness of each year across the SEX column, from the same counts.

Needs a parquet engine for pandas, which the project does not depend on: install pyarrow beside
the venv (`pip install --target /tmp/pyarrow-only --no-deps pyarrow`), then
`PYTHONPATH=/tmp/pyarrow-only .venv/bin/python bench/cbpe_nannyml.py [--data DIR] [--calibrate]`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from foedus.client_sdk.performance import Cell, classification_metrics, expected_confusion, fairness


def confusion(y: np.ndarray, pred: np.ndarray) -> dict[Cell, float]:
    out: dict[Cell, float] = {}
    for t, p in zip(y.tolist(), pred.tolist(), strict=True):
        out[(str(t), str(p))] = out.get((str(t), str(p)), 0.0) + 1.0
    return out


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/nannyml"
    )
    parser.add_argument("--calibrate", action="store_true", help="isotonic calibration on the reference year")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    reference = pd.read_parquet(args.data / "employment_MA_reference.pq")
    analysis = pd.read_parquet(args.data / "employment_MA_analysis.pq").merge(
        pd.read_parquet(args.data / "employment_MA_analysis_target.pq"), on="id"
    )
    calibrate = None
    if args.calibrate:
        from sklearn.isotonic import IsotonicRegression

        calibrate = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(
            reference["predicted_probability"], reference["employed"]
        )
    rows = []
    print(
        f"{'year':>6} {'n':>7} {'acc':>7} {'est':>7} {'err':>8} {'f1(1)':>7} {'est':>7} {'err':>8}  dpd(SEX) eod(SEX)"
    )
    for year, chunk in pd.concat([reference, analysis]).groupby("year"):
        p1 = chunk["predicted_probability"].to_numpy(dtype=np.float64)
        if calibrate is not None:
            p1 = calibrate.predict(p1)
        pred = chunk["prediction"].to_numpy()
        y = chunk["employed"].to_numpy()
        estimate = classification_metrics(
            expected_confusion(np.c_[1 - p1, p1], [str(v) for v in pred], ["0", "1"])
        )
        realised = classification_metrics(confusion(y, pred))
        f1_est, f1_real = estimate.classes[1].f1, realised.classes[1].f1
        segments = {
            str(sex): confusion(y[chunk["SEX"].to_numpy() == sex], pred[chunk["SEX"].to_numpy() == sex])
            for sex in sorted(chunk["SEX"].unique())
        }
        fair = fairness(segments, "1")
        row = {
            "year": int(year),
            "n": len(chunk),
            "accuracy": realised.accuracy,
            "accuracy_estimate": estimate.accuracy,
            "accuracy_error": estimate.accuracy - realised.accuracy,
            "f1": f1_real,
            "f1_estimate": f1_est,
            "f1_error": f1_est - f1_real,
            "demographic_parity_difference": fair.demographic_parity_difference,
            "equal_opportunity_difference": fair.equal_opportunity_difference,
        }
        rows.append(row)
        print(
            f"{year:>6} {len(chunk):>7} {realised.accuracy:7.4f} {estimate.accuracy:7.4f} "
            f"{row['accuracy_error']:+8.4f} {f1_real:7.4f} {f1_est:7.4f} {row['f1_error']:+8.4f}  "
            f"{fair.demographic_parity_difference:8.4f} {fair.equal_opportunity_difference:8.4f}"
        )
    mae_acc = float(np.mean([abs(r["accuracy_error"]) for r in rows[1:]]))
    mae_f1 = float(np.mean([abs(r["f1_error"]) for r in rows[1:]]))
    print(f"mean |error| over the analysis years: accuracy {mae_acc:.4f}, F1 {mae_f1:.4f}")
    if args.json:
        args.json.write_text(json.dumps({"years": rows, "mae_accuracy": mae_acc, "mae_f1": mae_f1}, indent=2))


if __name__ == "__main__":
    main()
