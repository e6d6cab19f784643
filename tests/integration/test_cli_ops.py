"""`foedus ops train | score | evaluate` on a labelled multivariate series, and `foedus federation`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def machine(path: Path, seed: int, change: Any = None, **extra: np.ndarray) -> tuple[Path, np.ndarray]:
    """A .npz of 3,000 training rows and 1,500 later test rows of `series` (the later rows changed
    in place by `change` first); its path and the test rows."""
    rng = np.random.default_rng(seed)
    train, test = series(rng, 3000), series(rng, 1500)
    if change is not None:
        change(test)
    np.savez(path, train=train.astype(np.float32), test=test.astype(np.float32), **extra)
    return path, test


def train_anomaly(
    capsys: pytest.CaptureFixture[str], data: Path, model: Path, *extra: str
) -> tuple[dict[str, Any], str]:
    """`foedus -o json ops train anomaly --no-search`: its JSON row and its stderr (progress)."""
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
        *extra,
    )
    assert code == 0, err
    row: dict[str, Any] = json.loads(out)
    return row, err


def test_train_score_and_evaluate_an_anomaly_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    label = np.zeros(1500, dtype=np.uint8)
    label[400:430] = label[900:930] = 1

    def faults(test: np.ndarray) -> None:  # two faults: one metric breaks away from the others
        test[label == 1, 1] += 3.0

    data, test = machine(tmp_path / "machine.npz", 3, faults, test_label=label)
    model = tmp_path / "anomaly.onnx"

    trained, err = train_anomaly(capsys, data, model)
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


def test_drift_compensation_in_training_options_and_scoring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    def drift(later: np.ndarray) -> None:
        later[:, 0] += 3.0  # metric 0 moves for good
        later[1300:1320, 2] += 3.0  # and later a fault on another metric

    data, later = machine(tmp_path / "later.npz", 5, drift)
    model = tmp_path / "anomaly.onnx"
    trained, _ = train_anomaly(capsys, data, model, "--block", "200", "--drift-blocks", "2")
    assert trained["drift_blocks"] == 2
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert (meta["foedus.calibration_block"], meta["foedus.drift_blocks"]) == ("200", "2")

    def flagged(*flags: str) -> list[tuple[int, int]]:
        code, out, err = run(
            capsys, "-o", "json", "ops", "score", "--model", str(model), "--data", str(data), *flags
        )
        assert code == 0, err
        return [(a["first_row"], a["last_row"]) for a in json.loads(out)["anomalies"]]

    plain = flagged("--no-drift-compensation")
    assert sum(b - a + 1 for a, b in plain) > 1200  # the moved metric alarms throughout
    compensated = flagged()
    # two blocks of 200 rows alarm throughout; then few rows do, and the fault
    rows = np.zeros(len(later), dtype=bool)
    for a, b in compensated:
        rows[a : b + 1] = True
    assert rows[:400].mean() > 0.9
    outside = np.ones(len(later), dtype=bool)
    outside[:400] = outside[1300:1330] = False
    assert rows[outside].mean() < 0.1, compensated  # against all but a few rows without it
    assert rows[1300:1320].any()


def test_adapt_an_anomaly_model_to_a_new_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After training, metric 0 settles 2 units higher for good. The trained model flags all of
    it; `ops adapt`, run on each new block, makes the new level normal and still flags a fault."""
    rng = np.random.default_rng(5)
    train = series(rng, 3000)
    drifted = series(rng, 2400)
    drifted[:, 0] += 2.0
    model = tmp_path / "anomaly.onnx"
    np.savez(tmp_path / "train.npz", train=train)
    trained, _ = train_anomaly(capsys, tmp_path / "train.npz", model)
    state = Path(trained["state"])
    assert state == tmp_path / "anomaly.pt" and state.is_file()

    flagged = []
    for day in range(3):  # three blocks of 600 new rows, each adapted to once it has been seen
        history = tmp_path / f"history-{day}.npz"
        np.savez(history, train=np.concatenate([train, drifted[: 600 * (day + 1)]]))
        adapted = tmp_path / f"anomaly-{day}.onnx"
        code, out, err = run(
            capsys, "-o", "json", "ops", "adapt", "--state", str(state), "--data", str(history),
            "--new", "600", "--out", str(adapted),
        )  # fmt: skip
        assert code == 0, err
        result = json.loads(out)
        assert result["new_rows"] == 600 and result["model"] == str(adapted)
        flagged.append(result["flagged_new_rows"])
        state = Path(result["state"])
        assert "anomalous; threshold" in err  # progress on stderr
    assert flagged[0] > 300  # the model as trained called the new level an anomaly

    later = drifted[1800:].copy()
    later[300:330, 2] += 3.0  # a fault on another metric
    np.savez(tmp_path / "later.npz", test=later)
    code, out, err = run(
        capsys, "-o", "json", "ops", "score", "--model", str(adapted), "--data", str(tmp_path / "later.npz")
    )
    assert code == 0, err
    scored = json.loads(out)
    outside = sum(
        a["last_row"] - a["first_row"] + 1
        for a in scored["anomalies"]
        if a["last_row"] < 300 or a["first_row"] > 340
    )
    assert outside < 0.05 * len(later), scored["anomalies"]  # the new level is normal now
    assert any(
        a["first_row"] <= 330 and a["last_row"] >= 300 for a in scored["anomalies"]
    )  # the fault is not

    code, _, err = run(
        capsys,
        "ops",
        "adapt",
        "--state",
        str(model),
        "--data",
        str(history),
        "--new",
        "10",
        "--out",
        str(tmp_path / "x.onnx"),
    )
    assert code == exit_codes.INVALID and "not an anomaly model state" in err
    code, _, err = run(
        capsys,
        "ops",
        "adapt",
        "--state",
        str(state),
        "--data",
        str(history),
        "--new",
        "99999",
        "--out",
        str(tmp_path / "x.onnx"),
    )
    assert code == exit_codes.INVALID and "more than the" in err
