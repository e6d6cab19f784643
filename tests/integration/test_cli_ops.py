"""`foedus ops train | score | evaluate` on a labelled multivariate series, and `foedus federation`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from testkit import run_cli as run

from foedus.client_sdk.cli import exit_codes

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def series(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n)
    base = np.sin(t / 20.0)
    return np.column_stack([base, 0.5 * base + 0.1, np.cos(t / 20.0), 0.2 * base]) + rng.normal(
        0, 0.05, (n, 4)
    )


def test_train_score_and_evaluate_an_anomaly_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    train = series(rng, 3000)
    test = series(rng, 1500)
    label = np.zeros(len(test), dtype=np.uint8)
    for start in (400, 900):  # two faults: one metric breaks away from the others
        test[start : start + 30, 1] += 3.0
        label[start : start + 30] = 1
    data = tmp_path / "machine.npz"
    np.savez(data, train=train.astype(np.float32), test=test.astype(np.float32), test_label=label)
    model = tmp_path / "anomaly.onnx"

    code, out, err = run(
        capsys,
        "-o",
        "json",
        "ops",
        "train",
        "anomaly",
        "--data",
        str(data),
        "--out",
        str(model),
        "--no-search",
    )
    assert code == 0, err
    trained = json.loads(out)
    assert trained["kind"] == "anomaly" and trained["window"] >= 1 and float(trained["threshold"]) > 0
    assert "threshold" in err  # progress on stderr

    code, out, err = run(capsys, "-o", "json", "ops", "score", "--model", str(model), "--data", str(data))
    assert code == 0, err
    scored = json.loads(out)
    assert scored["rows"] == len(test)
    flagged = [(a["first_row"], a["last_row"]) for a in scored["anomalies"]]
    assert any(a <= 430 and b >= 400 for a, b in flagged), flagged
    assert any(a <= 930 and b >= 900 for a, b in flagged), flagged

    code, out, err = run(capsys, "-o", "json", "ops", "evaluate", "--model", str(model), "--data", str(data))
    assert code == 0, err
    figures = json.loads(out)
    assert figures["f1_pa"] > 0.8
    assert 0.0 <= figures["f1"] <= figures["f1_pa"]
    assert figures["auc_pr"] > 0.5

    code, _, err = run(capsys, "ops", "score", "--model", str(model), "--data", str(tmp_path / "nope.csv"))
    assert code == exit_codes.USAGE and "does not exist" in err
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n3,4\n")
    code, _, err = run(capsys, "ops", "score", "--model", str(model), "--data", str(wrong))
    assert code == exit_codes.INVALID and "metrics per row" in err
