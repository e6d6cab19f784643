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
    assert trained["kind"] == "anomaly" and float(trained["threshold"]) > 0
    assert trained["windows"] == [10, 20] and trained["window"] == 20  # the default ensemble
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
    # both faults found; the 20-row member keeps seeing a 30-row fault for 20 rows after it ends,
    # which costs precision here (a single 10-row network: about 0.85)
    assert figures["recall_pa"] == 1.0 and figures["f1_pa"] > 0.7
    assert 0.0 <= figures["f1"] <= figures["f1_pa"]
    assert figures["auc_pr"] > 0.5

    single = tmp_path / "single.onnx"
    trained, _ = train_anomaly(capsys, data, single, "--members", "1")
    assert trained["windows"] == [10] and trained["window"] == 10
    code, out, err = run(capsys, "-o", "json", "ops", "evaluate", "--model", str(single), "--data", str(data))
    assert code == 0, err
    assert json.loads(out)["f1_pa"] > 0.8
    code, _, err = run(
        capsys, "ops", "train", "anomaly", "--data", str(data), "--out", str(single), "--members", "9"
    )
    assert code == exit_codes.USAGE and "--members" in err
    code, _, err = run(
        capsys, "ops", "train", "anomaly", "--data", str(data), "--out", str(single), "--window", "2"
    )
    assert code == exit_codes.INVALID and "use a window of at least 3" in err

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


def write_csv(path: Path, header: list[str], columns: list[Any], delimiter: str = ",") -> Path:
    """A CSV of `columns` (sequences of equal length) under `header`."""
    lines = [delimiter.join(header)]
    lines += [delimiter.join(str(c[i]) for c in columns) for i in range(len(columns[0]))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_score_and_evaluate_take_the_models_columns_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(7)
    train, test = series(rng, 1500), series(rng, 800)
    label = np.zeros(800, dtype=int)
    label[500:530] = 1
    test[label == 1, 1] += 3.0

    def six(x: np.ndarray) -> list[Any]:  # c0..c5: the series' four metrics and two others
        return [x[:, 0], x[:, 1], x[:, 2], rng.normal(0, 1, len(x)), rng.normal(5, 1, len(x)), x[:, 3]]

    names = [f"c{i}" for i in range(6)]
    stamps = [f"2024-01-01T{i // 60:02d}:{i % 60:02d}" for i in range(1500)]
    data = write_csv(tmp_path / "train.csv", ["time", *names], [stamps, *six(train)])
    model = tmp_path / "anomaly.onnx"
    trained, err = train_anomaly(capsys, data, model, "--columns", "c0,c1,c2,c5")
    assert trained["features"] == ["c0", "c1", "c2", "c5"]
    assert "skipping the column(s) without numbers: time" in err

    columns = six(test)
    full = write_csv(tmp_path / "full.csv", [*names, "label"], [*columns, label])
    backwards = write_csv(tmp_path / "backwards.csv", ["label", *names[::-1]], [label, *columns[::-1]])
    scores = {}
    for name, path in (("full", full), ("backwards", backwards)):
        out = tmp_path / f"{name}-scores.csv"
        code, _, err = run(
            capsys, "ops", "score", "--model", str(model), "--data", str(path), "--out", str(out)
        )
        assert code == 0, err
        scores[name] = out.read_text()
        code, got, err = run(
            capsys, "-o", "json", "ops", "evaluate", "--model", str(model), "--data", str(path),
            "--label-column", "label",
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(got)["f1_pa"] > 0.5
    assert scores["full"] == scores["backwards"]
    assert len(scores["full"].splitlines()) == 801

    lacking = write_csv(tmp_path / "lacking.csv", names[:5], columns[:5])
    code, _, err = run(capsys, "ops", "score", "--model", str(model), "--data", str(lacking))
    assert code == exit_codes.INVALID
    assert "lacks the metric(s) c5" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b,a\n1,2,3\n", ["'a' appear more than once"]),
        ("a,b\n1,2\n3\n5,6\n", ["line 3", "1 fields", "header has 2"]),
        ("a,b\n1,2\n3,4,5\n", ["line 3", "3 fields"]),
        ("a,b\n1,2\n3,\n5,6\n", ["line 3", "column 2 ('b') is empty"]),
        ("a,b\n1,2\n3,4\nn/a,6\n", ["line 4", "column 1 ('a')", "'n/a'"]),
        ("a,b\n1,2\n3,inf\n", ["line 3", "column 2 ('b')", "'inf'"]),
    ],
)
def test_a_csv_with_a_hole_is_refused_with_its_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: list[str]
) -> None:
    data = tmp_path / "metrics.csv"
    data.write_text(text)
    code, _, err = run(
        capsys,
        "ops",
        "train",
        "anomaly",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "x.onnx"),
        "--no-search",
    )
    assert code == exit_codes.INVALID, err
    assert err.startswith(f"error: {data}") and all(e in err for e in expected), err
    assert not (tmp_path / "x.onnx").exists()


def bitbrains_style(path: Path, rows: int, delimiter: str = ";\t") -> Path:
    """A Bitbrains-style VM trace (as the trace's files: `;` and a tab between fields, gzip),
    synthetic: constant capacities before the usage columns, a timestamp first."""
    import gzip

    rng = np.random.default_rng(11)
    t = np.arange(rows)
    cycle = 1.0 + 0.5 * np.sin(2.0 * np.pi * t / 24)
    cpu = 20.0 * cycle + rng.gamma(2.0, 1.0, rows)
    columns = {
        "Timestamp [ms]": 1372629804 + 300 * t,
        "CPU cores": np.full(rows, 2),
        "CPU capacity provisioned [MHZ]": np.full(rows, 5851.9989),
        "CPU usage [MHZ]": cpu * 58.519989,
        "CPU usage [%]": cpu,
        "Memory capacity provisioned [KB]": np.full(rows, 8218624.0),
        "Memory usage [KB]": 1e6 * cycle + rng.normal(0.0, 1e4, rows),
        "Disk read throughput [KB/s]": rng.gamma(2.0, 50.0, rows),
        "Disk write throughput [KB/s]": rng.gamma(2.0, 10.0, rows),
        "Network received throughput [KB/s]": rng.gamma(2.0, 1.0, rows),
        "Network transmitted throughput [KB/s]": rng.gamma(2.0, 1.0, rows),
    }
    lines = [delimiter.join(columns)]
    lines += [delimiter.join(str(c[i]) for c in columns.values()) for i in range(rows)]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def cli(*args: str) -> tuple[int, str]:
    """Runs `foedus ARGS...` in-process where `capsys` is not at hand (module fixtures): (exit code, stdout)."""
    import contextlib
    import io

    from foedus.client_sdk.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0), out.getvalue()


@pytest.fixture(scope="module")
def resource_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A resource model trained by `ops train resource` on a Bitbrains-style trace (comma
    separated): the trace, the model and the summary."""
    folder = tmp_path_factory.mktemp("resource")
    data = bitbrains_style(folder / "1.csv.gz", 120, ",")
    model = folder / "resource.onnx"
    code, out = cli("-o", "json", "ops", "train", "resource", "--data", str(data), "--out", str(model))
    assert code == 0, out
    return data, model, json.loads(out)


@pytest.fixture(scope="module")
def anomaly_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """An anomaly model trained by `ops train anomaly` on a machine's .npz: the .npz (with
    test_label), the model and the labels."""
    folder = tmp_path_factory.mktemp("anomaly")
    label = np.zeros(1500, dtype=np.uint8)
    label[400:430] = 1
    data, _ = machine(folder / "machine.npz", 3, test_label=label)
    model = folder / "anomaly.onnx"
    code, out = cli("ops", "train", "anomaly", "--data", str(data), "--out", str(model), "--no-search")
    assert code == 0, out
    return data, model, label


def test_train_resource_on_a_bitbrains_style_trace_takes_usage_not_capacity(
    resource_model: tuple[Path, Path, dict[str, Any]],
) -> None:
    _, _, summary = resource_model
    # usage over the capacity columns before them (a percentage first); the load proxies are
    # disk and network, not the timestamp nor the capacities nor CPU in MHz
    assert (summary["cpu"], summary["memory"]) == ("CPU usage [%]", "Memory usage [KB]")
    assert summary["features"].split(",") == [
        "CPU usage [%]",
        "Memory usage [KB]",
        "Disk read throughput [KB/s]",
        "Disk write throughput [KB/s]",
        "Network received throughput [KB/s]",
        "Network transmitted throughput [KB/s]",
    ]


def test_train_resource_takes_the_cpu_and_memory_columns_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bitbrains_style(tmp_path / "1.csv.gz", 120)
    train = ("ops", "train", "resource", "--data", str(data), "--out", str(tmp_path / "r.onnx"))
    code, out, err = run(
        capsys,
        "-o",
        "json",
        *train,
        "--cpu-column",
        "CPU usage [MHZ]",
        "--memory-column",
        "Memory usage [KB]",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["cpu"], summary["memory"]) == ("CPU usage [MHZ]", "Memory usage [KB]")
    assert "Timestamp [ms]" not in summary["features"] and "CPU usage [%]" not in summary["features"]

    code, _, err = run(capsys, *train, "--memory-column", "RAM")
    assert code == exit_codes.INVALID and "--memory-column RAM: no such numeric column" in err


def test_score_and_evaluate_refuse_a_resource_model(
    resource_model: tuple[Path, Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    data, model, _ = resource_model
    for command in (("score",), ("evaluate", "--label-column", "CPU cores")):
        code, out, err = run(capsys, "ops", *command, "--model", str(model), "--data", str(data))
        assert code == exit_codes.INVALID, (command, out, err)
        assert f"error: {model} is a resource model; score and evaluate take an anomaly model" in err


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Runs `foedus ARGS...`, which must fail as invalid input with one error line, no traceback: its stderr."""
    code, out, err = run(capsys, *args)
    assert code == exit_codes.INVALID, (args, out, err)
    assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    return err


def test_score_refuses_a_model_that_is_not_onnx(
    anomaly_model: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _, _ = anomaly_model
    not_onnx = tmp_path / "not.onnx"
    not_onnx.write_bytes(b"\x00\x01 not a model")
    for command in ("score", "evaluate"):
        err = refused(capsys, "ops", command, "--model", str(not_onnx), "--data", str(data))
        assert f"{not_onnx} is not a readable ONNX model" in err


def test_evaluate_refuses_labels_it_cannot_read(
    anomaly_model: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, model, _ = anomaly_model
    evaluate = ("ops", "evaluate", "--model", str(model), "--data", str(data))
    np.savez(tmp_path / "arrays.npz", train=np.zeros((3, 2)), test=np.zeros((3, 2)))
    err = refused(capsys, *evaluate, "--labels", str(tmp_path / "arrays.npz"))
    assert "no array 'test_label'" in err and "train, test" in err
    garbled = tmp_path / "labels.txt"
    garbled.write_text("0\n1\nyes\n")
    assert f"cannot read labels from {garbled}" in refused(capsys, *evaluate, "--labels", str(garbled))


def test_labels_must_be_zero_or_one(
    anomaly_model: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, model, label = anomaly_model
    evaluate = ("-o", "json", "ops", "evaluate", "--model", str(model), "--data", str(data))
    twos = tmp_path / "twos.txt"
    twos.write_text("\n".join(["0"] * 1400 + ["2"] * 100) + "\n")
    err = refused(capsys, *evaluate, "--labels", str(twos))
    assert "must be 0 or 1" in err and "row 1400" in err
    code, by_int, err = run(capsys, *evaluate)
    assert code == 0, err
    np.savez(tmp_path / "flags.npz", test_label=label.astype(bool))
    code, by_bool, err = run(capsys, *evaluate, "--labels", str(tmp_path / "flags.npz"))
    assert code == 0, err  # booleans are labels
    assert json.loads(by_bool) == json.loads(by_int)


def test_score_refuses_a_threshold_that_is_not_finite(
    anomaly_model: tuple[Path, Path, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    data, model, _ = anomaly_model
    for value in ("-inf", "inf", "nan"):
        err = refused(
            capsys, "ops", "score", "--model", str(model), "--data", str(data), "--threshold", value
        )
        assert "--threshold must be a finite number" in err


def test_a_corrupt_npz_is_refused_as_invalid(
    anomaly_model: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, model, _ = anomaly_model
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_text("rows,of,text\n")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data.read_bytes()[:500])
    for broken in (corrupt, truncated):
        err = refused(capsys, "ops", "score", "--model", str(model), "--data", str(broken))
        assert f"cannot read {broken}" in err and "pickled" not in err
    err = refused(
        capsys, "ops", "train", "anomaly", "--data", str(corrupt), "--out", str(tmp_path / "x.onnx")
    )
    assert "not a NumPy .npz archive" in err


def test_too_little_data_to_train_is_refused_as_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "few.npz", train=np.ones((8, 3)))
    few = str(tmp_path / "few.npz")
    out = str(tmp_path / "x.onnx")
    for search in ("--search", "--no-search"):
        err = refused(capsys, "ops", "train", "anomaly", "--data", few, "--out", out, search)
        assert f"cannot train an anomaly model on {few}" in err
    short = write_csv(tmp_path / "short.csv", ["cpu", "memory"], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert "too few" in refused(capsys, "ops", "train", "resource", "--data", str(short), "--out", out)
    assert "no cpu column" in refused(capsys, "ops", "train", "resource", "--data", few, "--out", out)
    assert not Path(out).exists()


def test_score_and_evaluate_help_call_data_what_is_scored() -> None:
    from typer.testing import CliRunner

    from foedus.client_sdk.cli.main import app

    for command in ("score", "evaluate"):
        result = CliRunner().invoke(app, ["ops", command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert "to learn from" not in result.output
        assert ("metrics to score" if command == "score" else "to evaluate the model on") in result.output
