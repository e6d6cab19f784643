"""`foedus ops ...`: train, score and evaluate the ops models (anomaly detector, resource predictor).

Training needs `foedus[federation]` (torch); scoring and evaluating an exported model need only
onnxruntime (`foedus[agent]`). A trained model is an ONNX file: register it and assign it to agents
through a deployment like any other version (`foedus model register ops-anomaly MODEL.onnx`, then
`foedus agent run ... --anomaly-deployment NAME`).
"""

from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer

from foedus.client_sdk.agent.compensation import from_metadata
from foedus.client_sdk.agent.history import HISTORY_METRICS
from foedus.client_sdk.cli.common import emit, globals_of
from foedus.client_sdk.errors import InvalidArgument

if TYPE_CHECKING:
    from foedus.federation.anomaly import AnomalyModel

app = typer.Typer(help="Train, score and evaluate the ops models (anomaly, resource).", no_args_is_help=True)
train_app = typer.Typer(help="Train an ops model on local data and export it to ONNX.", no_args_is_help=True)
app.add_typer(train_app, name="train")

DATA_HELP = (
    "metrics to learn from: a .npz (array 'train', else its only array), a .csv or .csv.gz with a "
    "header (numeric columns), or an agent's data directory (its local history)"
)


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def load_matrix(
    path: Path, *, part: str = "train", columns: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """(rows x metrics float64, metric names) from a .npz, a CSV or an agent's local history."""
    if path.is_dir():
        history = path / "history.db"
        if not history.exists():
            raise InvalidArgument(f"{path} is a directory without an agent history (history.db)")
        from foedus.client_sdk.agent.history import LocalHistory

        h = LocalHistory(history, retention_s=10**9)
        try:
            by_time = {t: m for t, _, m, _ in h.rows()}
        finally:
            h.close()
        names = list(HISTORY_METRICS)
        x = np.asarray([[by_time[t].get(n, 0.0) for n in names] for t in sorted(by_time)], dtype=np.float64)
    elif path.suffix == ".npz":
        with np.load(path) as data:
            keys = list(data.keys())
            key = (
                part if part in keys else ("train" if "train" in keys else keys[0] if len(keys) == 1 else "")
            )
            if not key:
                raise InvalidArgument(f"{path} holds {', '.join(keys)}; none is '{part}' or 'train'")
            x = np.asarray(data[key], dtype=np.float64)
        if x.ndim != 2:
            raise InvalidArgument(f"{path}:{key} must be a 2-D array (rows x metrics), not {x.shape}")
        names = [f"m{i}" for i in range(x.shape[1])]
    elif path.name.endswith((".csv", ".csv.gz")):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InvalidArgument(f"{path} is empty")
            rows = list(reader)
        table: dict[str, list[float]] = {}
        for i, name in enumerate(header):
            try:
                table[name] = [float(r[i]) for r in rows]
            except (ValueError, IndexError):
                continue  # a non-numeric column (a timestamp, a label text)
        names = list(table)
        x = np.asarray([table[n] for n in names], dtype=np.float64).T
    else:
        raise InvalidArgument(f"{path}: expected a .npz, .csv, .csv.gz or an agent data directory")
    if columns:
        missing = [c for c in columns if c not in names]
        if missing:
            raise InvalidArgument(f"column(s) {', '.join(missing)} not in {path}; it has {', '.join(names)}")
        x = x[:, [names.index(c) for c in columns]]
        names = list(columns)
    if len(x) == 0 or not np.isfinite(x).all():
        raise InvalidArgument(f"{path}: no rows, or values that are not finite numbers")
    return x, names


def _columns(text: str) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] or None


@train_app.command("anomaly")
def train_anomaly(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", exists=True, help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="where to write the ONNX model"),
    columns: str = typer.Option("", "--columns", help="comma-separated metrics to use (default: all)"),
    search: bool = typer.Option(
        True, "--search/--no-search", help="choose window, width and learning rate on validation data"
    ),
    seed: int = typer.Option(0, "--seed"),
    state: Path | None = typer.Option(
        None, "--state", help="where to keep the trainable state for `ops adapt` (default: OUT with .pt)"
    ),
    block: int = typer.Option(
        1440,
        "--block",
        min=1,
        help="rows per calibration block, one day of samples (1440 at one row a minute): the threshold "
        "is the median of the blocks' maximum scores",
    ),
    drift_blocks: int = typer.Option(
        5,
        "--drift-blocks",
        min=0,
        help="a metric above its training level in each of this many blocks counts at that level "
        "(drift compensation in agents and 'ops score'); 0 turns it off",
    ),
) -> None:
    """Train the windowed anomaly detector; the threshold is calibrated without labels."""
    anomaly_model = _anomaly_model_class()
    from foedus.federation.anomaly import AnomalyConfig

    x, names = load_matrix(data, columns=_columns(columns))
    progress(f"training on {len(x)} rows x {len(names)} metrics from {data}")
    config = AnomalyConfig(calibration_block=block, drift_blocks=drift_blocks)
    model = anomaly_model.fit(
        x, feature_names=names, config=config, search=search, seed=seed, progress=progress
    )
    model.export_onnx(out)
    state_path = model.save(state or out.with_suffix(".pt"))
    row = {
        "model": str(out),
        "state": str(state_path),
        "kind": "anomaly",
        "window": model.window,
        "threshold": f"{model.threshold:.6g}",
        "drift_blocks": drift_blocks,
        "features": names,
    }
    emit(ctx, [row], ("model", "kind", "window", "threshold"), raw=row)


def _anomaly_model_class() -> type[AnomalyModel]:
    try:
        from foedus.federation.anomaly import AnomalyModel
    except ImportError as exc:
        raise InvalidArgument(
            f"training needs the federation extra: pip install 'foedus[federation]' ({exc})"
        ) from exc
    return AnomalyModel


@app.command("adapt")
def adapt(
    ctx: typer.Context,
    state: Path = typer.Option(
        ..., "--state", exists=True, help="the anomaly model's trainable state (.pt from `ops train anomaly`)"
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        exists=True,
        help=DATA_HELP + "; the history the model has seen, with the new rows last",
    ),
    new: int = typer.Option(..., "--new", min=1, help="how many of the last rows are new (e.g. 1440: a day)"),
    out: Path = typer.Option(..., "--out", help="where to write the adapted ONNX model"),
    state_out: Path | None = typer.Option(
        None, "--state-out", help="where to write the adapted state (default: OUT with .pt)"
    ),
    epochs: int = typer.Option(1, "--epochs", min=0, help="fine-tuning passes over the selected windows"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Adapt an anomaly model to new data without labels (e.g. daily, beside the agent).

    Flags the new rows, fine-tunes on unflagged new windows and older normal ones, recalibrates.

    Register the result as the next version of the deployment's model to roll it out.
    """
    anomaly_model = _anomaly_model_class()
    try:
        model = anomaly_model.load(state)
    except Exception as exc:
        raise InvalidArgument(
            f"{state} is not an anomaly model state written by `ops train anomaly`: {exc}"
        ) from exc
    x, _ = load_matrix(data)
    if x.shape[1] != model.n_features:
        raise InvalidArgument(f"{state} takes {model.n_features} metrics per row; {data} has {x.shape[1]}")
    if new > len(x):
        raise InvalidArgument(f"--new {new} is more than the {len(x)} rows of {data}")
    before = model.threshold
    progress(f"adapting to the last {new} of {len(x)} rows from {data}")
    flagged = model.adapt(x, new, epochs=epochs, seed=seed)
    model.export_onnx(out)
    state_path = model.save(state_out or out.with_suffix(".pt"))
    stretches = _stretches(flagged)
    row = {
        "model": str(out),
        "state": str(state_path),
        "new_rows": new,
        "flagged_new_rows": int(flagged.sum()),
        "stretches": len(stretches),
        "threshold_before": f"{before:.6g}",
        "threshold": f"{model.threshold:.6g}",
    }
    progress(
        f"{row['flagged_new_rows']} of {new} new rows were anomalous; threshold {before:.4g} -> {model.threshold:.4g}"
    )
    emit(ctx, [row], ("model", "new_rows", "flagged_new_rows", "threshold_before", "threshold"), raw=row)


@train_app.command("resource")
def train_resource(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", exists=True, help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="where to write the ONNX model"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the resource predictor (next-window CPU and memory quantiles)."""
    try:
        from foedus.federation.resources import train_from_matrix
    except ImportError as exc:
        raise InvalidArgument(
            f"training needs the federation extra: pip install 'foedus[federation]' ({exc})"
        ) from exc
    x, names = load_matrix(data)
    progress(f"training on {len(x)} rows x {len(names)} metrics from {data}")
    summary = train_from_matrix(x, names, out, seed=seed, progress=progress)
    emit(ctx, [summary], tuple(summary), raw=summary)


COMPENSATION_HELP = (
    "score through the model's online per-metric drift compensation, as agents do "
    "(models trained by 'ops train anomaly' carry it), starting fresh at the first row"
)


def onnx_scores(
    model_path: Path, x: np.ndarray, *, compensate: bool = True
) -> tuple[np.ndarray, dict[str, str]]:
    """Scores of every row of `x` by an exported anomaly model: windows ending at each row, the
    first ones padded with the first row, and, when the model carries per-metric reference levels
    and `compensate`, through a fresh online drift compensation (as an agent started on the first
    row scores them)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise InvalidArgument("scoring needs onnxruntime: pip install 'foedus[agent]'") from exc
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    spec = session.get_inputs()[0]
    window = int(meta.get("foedus.window", 0) or (spec.shape[1] if len(spec.shape) == 3 else 1))
    if len(spec.shape) == 3 and isinstance(spec.shape[2], int) and spec.shape[2] != x.shape[1]:
        raise InvalidArgument(
            f"{model_path} takes {spec.shape[2]} metrics per row; the data has {x.shape[1]}"
        )
    padded = np.concatenate([np.repeat(x[:1], window - 1, axis=0), x]).astype(np.float32)
    try:
        state = from_metadata(meta, x.shape[1]) if compensate and len(session.get_outputs()) > 1 else None
    except ValueError as exc:
        raise InvalidArgument(f"{model_path}: {exc}") from None
    out = np.empty(len(x), dtype=np.float64)
    batch = 2048
    for start in range(0, len(x), batch):
        stop = min(start + batch, len(x))
        if len(spec.shape) == 3:
            windows = np.stack([padded[i : i + window] for i in range(start, stop)])
        else:
            windows = padded[window - 1 + start : window - 1 + stop]
        results = session.run(None, {spec.name: windows})
        if state is None:
            out[start:stop] = np.asarray(results[0], dtype=np.float64).reshape(-1)
        else:
            out[start:stop] = state.update(np.asarray(results[1], dtype=np.float64).reshape(stop - start, -1))
    return out, meta


@app.command("score")
def score(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", exists=True, help="an exported anomaly model (.onnx)"),
    data: Path = typer.Option(..., "--data", exists=True, help=DATA_HELP + "; a .npz's 'test' array first"),
    out: Path | None = typer.Option(None, "--out", help="write every row's score to this CSV"),
    threshold: float | None = typer.Option(
        None, "--threshold", help="default: the model's calibrated threshold"
    ),
    compensate: bool = typer.Option(
        True, "--drift-compensation/--no-drift-compensation", help=COMPENSATION_HELP
    ),
) -> None:
    """Score every row of the data (windows ending at each row) and list the anomalous stretches."""
    x, _ = load_matrix(data, part="test")
    scores, meta = onnx_scores(model, x, compensate=compensate)
    limit = threshold if threshold is not None else float(meta.get("foedus.threshold", "nan"))
    flagged = scores > limit if np.isfinite(limit) else np.zeros(len(scores), dtype=bool)
    if out is not None:
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "score", "anomaly"])
            w.writerows((i, f"{s:.6g}", int(a)) for i, (s, a) in enumerate(zip(scores, flagged, strict=True)))
    stretches = _stretches(flagged)
    rows = [
        {"first_row": a, "last_row": b, "max_score": f"{scores[a : b + 1].max():.4g}"} for a, b in stretches
    ]
    summary = {
        "rows": len(x),
        "threshold": limit,
        "anomalous_rows": int(flagged.sum()),
        "stretches": len(stretches),
    }
    if globals_of(ctx).output == "json":
        emit(ctx, [], (), raw={**summary, "anomalies": rows})
        return
    typer.echo(
        f"{summary['rows']} rows, threshold {limit:.4g}: {summary['anomalous_rows']} anomalous rows in {len(stretches)} stretch(es)"
    )
    emit(ctx, rows[:50], ("first_row", "last_row", "max_score"))


def _stretches(flags: np.ndarray) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = -1
    for i, f in enumerate(flags.tolist()):
        if f and start < 0:
            start = i
        if not f and start >= 0:
            out.append((start, i - 1))
            start = -1
    if start >= 0:
        out.append((start, len(flags) - 1))
    return out


def load_labels(data: Path, labels: Path | None, label_column: str, rows: int) -> np.ndarray:
    if labels is not None:
        y = (
            np.loadtxt(labels, delimiter=",", ndmin=1)
            if labels.suffix != ".npz"
            else np.load(labels)["test_label"]
        )
    elif data.suffix == ".npz":
        with np.load(data) as d:
            if "test_label" not in d:
                raise InvalidArgument(f"{data} has no 'test_label'; give --labels")
            y = np.asarray(d["test_label"])
    elif label_column:
        x, _ = load_matrix(data, columns=[label_column])
        y = x[:, 0]
    else:
        raise InvalidArgument("give --labels FILE or --label-column NAME (or a .npz with 'test_label')")
    y = np.asarray(y).reshape(-1).astype(int)
    if len(y) != rows:
        raise InvalidArgument(f"{len(y)} labels for {rows} rows")
    return y


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", exists=True, help="an exported anomaly model (.onnx)"),
    data: Path = typer.Option(..., "--data", exists=True, help=DATA_HELP + "; a .npz's 'test' array first"),
    labels: Path | None = typer.Option(
        None, "--labels", help="0/1 per row (a text file, or a .npz's test_label)"
    ),
    label_column: str = typer.Option("", "--label-column", help="a 0/1 column of the CSV"),
    compensate: bool = typer.Option(
        True, "--drift-compensation/--no-drift-compensation", help=COMPENSATION_HELP
    ),
) -> None:
    """Precision, recall and F1 (with and without point adjustment) and AUC-PR on labelled data."""
    from foedus.federation.evaluation import metrics as m

    x, names = load_matrix(data, part="test")
    if label_column:
        x = x[:, [i for i, n in enumerate(names) if n != label_column]]
    y = load_labels(data, labels, label_column, len(x))
    scores, meta = onnx_scores(model, x, compensate=compensate)
    threshold = float(meta.get("foedus.threshold", "nan"))
    if not np.isfinite(threshold):
        raise InvalidArgument(f"{model} has no foedus.threshold in its metadata")
    figures: dict[str, float] = m.detection_scores(scores > threshold, y).as_dict()
    figures["auc_pr"] = m.average_precision(scores, y)
    figures["threshold"] = threshold
    emit(ctx, [{k: f"{v:.4f}" for k, v in figures.items()}], tuple(figures), raw=figures)
