"""`foedus ops ...`: train, score and evaluate the ops models (anomaly detector, resource predictor).

Training needs `foedus[federation]` (torch); scoring and evaluating an exported model need only
onnxruntime (`foedus[agent]`). A trained model is an ONNX file: register it and assign it to agents
through a deployment like any other version (`foedus model register ops-anomaly MODEL.onnx`, then
`foedus agent run ... --anomaly-deployment NAME`).
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

DATA_FORMATS = (
    "a .npz (array 'train', else its only array), a .csv or .csv.gz with a header (its numeric "
    "columns; comma, semicolon or tab separated), or an agent's data directory (its local history)"
)
DATA_HELP = "metrics to learn from: " + DATA_FORMATS
SCORE_DATA_HELP = (
    "metrics to score: "
    + DATA_FORMATS.replace("array 'train'", "array 'test', else 'train'")
    + "; columns named in the model's metadata are picked by name"
)
EVALUATE_DATA_HELP = SCORE_DATA_HELP.replace("metrics to score", "labelled metrics to evaluate the model on")


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def load_matrix(
    path: Path, *, part: str = "train", columns: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """(rows x metrics float64, metric names) from a .npz, a CSV or an agent's local history.

    A .npz has no column names: its metrics are named m0, m1, ... by position
    (`has_column_names`). In a CSV, a column with no number in any row (a timestamp or label
    text) is skipped; a blank or non-numeric cell in a numeric column, a row with the wrong number
    of fields and a column name that appears twice are refused with the file and line."""
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
        key, array = read_npz(path, prefer(path, (part, "train")))
        try:
            x = np.asarray(array, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{path}:{key} does not hold numbers ({exc})") from None
        if x.ndim != 2:
            raise InvalidArgument(f"{path}:{key} must be a 2-D array (rows x metrics), not {x.shape}")
        names = [f"m{i}" for i in range(x.shape[1])]
    elif path.name.endswith((".csv", ".csv.gz")):
        x, names = _read_csv(path)
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


def has_column_names(path: Path) -> bool:
    """Whether `load_matrix` reads the metrics' names from `path` (not m0, m1, ... of a .npz)."""
    return path.is_dir() or path.suffix != ".npz"


def prefer(
    path: Path, names: tuple[str, ...], *, only: bool = True, hint: str = ""
) -> Callable[[list[str]], str]:
    """For `read_npz`: the first of `names` the archive holds, else (with `only`) its only array."""

    def choose(keys: list[str]) -> str:
        for name in names:
            if name in keys:
                return name
        if only and len(keys) == 1:
            return keys[0]
        wanted = " or ".join(f"'{n}'" for n in dict.fromkeys(names))
        raise InvalidArgument(
            f"{path} has no array {wanted} (it holds {', '.join(keys) or 'no arrays'})"
            + (f"; {hint}" if hint else "")
        )

    return choose


def read_npz(path: Path, choose: Callable[[list[str]], str]) -> tuple[str, np.ndarray]:
    """The array of the .npz at `path` that `choose` picks from its array names: (name, array)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise InvalidArgument(f"cannot read {path}: not a NumPy .npz archive (or a damaged one)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidArgument(f"cannot read {path}: a single NumPy array (.npy), not a .npz archive")
    with archive:
        key = choose(list(archive.keys()))
        try:
            return key, np.asarray(archive[key])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise InvalidArgument(f"cannot read array '{key}' of {path}: {exc}") from None


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as f:
            first = f.readline()
            if not first.strip():
                raise InvalidArgument(f"{path} is empty: expected a header line of column names")
            # the delimiter the header uses most: comma, semicolon (Bitbrains: ';' and a tab) or tab
            delimiter = max((",", ";", "\t"), key=first.count)
            reader = csv.reader(itertools.chain([first], f), delimiter=delimiter)
            header = [name.strip() for name in next(reader)]
            repeated = sorted({n for n in header if header.count(n) > 1})
            if repeated:
                raise InvalidArgument(
                    f"{path}: column name(s) {', '.join(repr(n) for n in repeated)} appear more than once "
                    "in the header; give each column its own name"
                )
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                if len(row) != len(header):
                    raise InvalidArgument(
                        f"{path}, line {reader.line_num}: {len(row)} fields, but the header has "
                        f"{len(header)}; give every row one value per column"
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from None
    if not rows:
        raise InvalidArgument(f"{path} has a header but no rows")
    names: list[str] = []
    table: list[list[float]] = []
    skipped: list[str] = []
    for i, name in enumerate(header):
        cells = [row[i].strip() for row in rows]
        values = [_number(c) for c in cells]
        if all(v is None for v in values):
            skipped.append(name)  # a non-numeric column (a timestamp text, a label text)
            continue
        bad = next((j for j, v in enumerate(values) if v is None), None)
        if bad is not None:
            what = "is empty" if not cells[bad] else f"holds {cells[bad]!r}, not a finite number"
            raise InvalidArgument(
                f"{path}, line {lines[bad]}, column {i + 1} ({name!r}) {what}; the column holds numbers "
                "in other rows: fill in the value, or remove the row"
            )
        names.append(name)
        table.append([v for v in values if v is not None])
    if not names:
        raise InvalidArgument(
            f"{path} has no numeric column (columns: {', '.join(header)}); expected a header line, "
            "then rows of numbers separated by commas"
        )
    if skipped:
        progress(f"{path}: skipping the column(s) without numbers: {', '.join(skipped)}")
    return np.asarray(table, dtype=np.float64).T, names


def _columns(text: str) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] or None


@train_app.command("anomaly")
def train_anomaly(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", exists=True, help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="where to write the ONNX model"),
    columns: str = typer.Option("", "--columns", help="comma-separated metrics to use (default: all)"),
    search: bool = typer.Option(
        True,
        "--search/--no-search",
        help="choose width and learning rate (and with --members 1 the window) on validation data",
    ),
    window: int = typer.Option(
        10, "--window", min=1, help="rows per window of the first ensemble member; member i sees WINDOW x 2^i"
    ),
    members: int = typer.Option(
        2,
        "--members",
        min=1,
        max=4,
        help="autoencoders in the ensemble (default 2: windows of 10 and 20 rows); 1 for a single one",
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
    try:
        config = AnomalyConfig(
            window=window, members=members, calibration_block=block, drift_blocks=drift_blocks
        )
        model = anomaly_model.fit(
            x, feature_names=names, config=config, search=search, seed=seed, progress=progress
        )
    except ValueError as exc:  # too few rows for the window, a metric without a finite value
        raise InvalidArgument(f"cannot train an anomaly model on {data}: {exc}") from None
    model.export_onnx(out)
    state_path = model.save(state or out.with_suffix(".pt"))
    row = {
        "model": str(out),
        "state": str(state_path),
        "kind": "anomaly",
        "window": model.window,
        "windows": list(model.config.windows),
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
    cpu_column: str | None = typer.Option(
        None,
        "--cpu-column",
        help="the column of CPU use (default: process_cpu_percent, cpu, ..., else a column whose "
        "name holds cpu and usage, used or util)",
    ),
    memory_column: str | None = typer.Option(
        None,
        "--memory-column",
        help="the column of memory use (default: process_memory_bytes, memory, ..., else a column "
        "whose name holds mem and usage, used or util)",
    ),
) -> None:
    """Train the resource predictor (next-window CPU and memory quantiles).

    Load proxies: the other columns, less timestamps and other CPU or memory columns (capacities).
    """
    try:
        from foedus.federation.resources import train_from_matrix
    except ImportError as exc:
        raise InvalidArgument(
            f"training needs the federation extra: pip install 'foedus[federation]' ({exc})"
        ) from exc
    x, names = load_matrix(data)
    for given, option in ((cpu_column, "--cpu-column"), (memory_column, "--memory-column")):
        if given is not None and given not in names:
            raise InvalidArgument(
                f"{option} {given}: no such numeric column in {data}; it has {', '.join(names)}"
            )
    progress(f"training on {len(x)} rows x {len(names)} metrics from {data}")
    try:
        summary = train_from_matrix(
            x, names, out, seed=seed, progress=progress, cpu_column=cpu_column, memory_column=memory_column
        )
    except ValueError as exc:  # no CPU or memory column, too few rows
        raise InvalidArgument(f"cannot train a resource model on {data}: {exc}") from None
    emit(ctx, [summary], tuple(summary), raw=summary)


COMPENSATION_HELP = (
    "score through the model's online per-metric drift compensation, as agents do "
    "(models trained by 'ops train anomaly' carry it), starting fresh at the first row"
)


def open_model(model_path: Path) -> tuple[Any, dict[str, str]]:
    """(onnxruntime session, ONNX metadata) of an exported anomaly model; InvalidArgument when the
    file is not an ONNX model or is another kind of ops model (a resource model)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise InvalidArgument("scoring needs onnxruntime: pip install 'foedus[agent]'") from exc
    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own errors: InvalidProtobuf, Fail, NoSuchFile, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"{model_path} is not a readable ONNX model: {reason}") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    kind = meta.get("foedus.kind", "")
    if kind and kind != "anomaly":
        raise InvalidArgument(
            f"{model_path} is a {kind} model; score and evaluate take an anomaly model (ops train anomaly)"
        )
    return session, meta


def model_columns(
    x: np.ndarray, names: list[str], named: bool, meta: dict[str, str], model_path: Path, data: Path
) -> np.ndarray:
    """The columns of `x` the model takes, in its order: by the names in its ``foedus.features``
    when the data names its columns; by position when it does not (a .npz) or when the model was
    trained on unnamed columns (m0, m1, ...) the data lacks."""
    features = [n.strip() for n in meta.get("foedus.features", "").split(",") if n.strip()]
    if not named or not features:
        return x
    if all(f in names for f in features):
        return x[:, [names.index(f) for f in features]]
    if features == [f"m{i}" for i in range(len(features))]:
        return x
    missing = [f for f in features if f not in names]
    raise InvalidArgument(
        f"{data} lacks the metric(s) {', '.join(missing)} that {model_path} takes; it has "
        f"{', '.join(names)}: give data with the columns the model was trained on"
    )


def onnx_scores(
    model_path: Path, x: np.ndarray, *, compensate: bool = True
) -> tuple[np.ndarray, dict[str, str]]:
    """Scores of every row of `x` by an exported anomaly model: windows ending at each row, the
    first ones padded with the first row, and, when the model carries per-metric reference levels
    and `compensate`, through a fresh online drift compensation (as an agent started on the first
    row scores them)."""
    session, meta = open_model(model_path)
    return session_scores(session, meta, model_path, x, compensate=compensate), meta


def session_scores(
    session: Any, meta: dict[str, str], model_path: Path, x: np.ndarray, *, compensate: bool = True
) -> np.ndarray:
    """`onnx_scores` with the model opened by `open_model`."""
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
    return out


@app.command("score")
def score(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", exists=True, help="an exported anomaly model (.onnx)"),
    data: Path = typer.Option(..., "--data", exists=True, help=SCORE_DATA_HELP),
    out: Path | None = typer.Option(None, "--out", help="write every row's score to this CSV"),
    threshold: float | None = typer.Option(
        None, "--threshold", help="default: the model's calibrated threshold"
    ),
    compensate: bool = typer.Option(
        True, "--drift-compensation/--no-drift-compensation", help=COMPENSATION_HELP
    ),
) -> None:
    """Score every row of the data (windows ending at each row) and list the anomalous stretches."""
    if threshold is not None and not math.isfinite(threshold):
        raise InvalidArgument(f"--threshold must be a finite number, not {threshold}")
    session, meta = open_model(model)
    x, names = load_matrix(data, part="test")
    x = model_columns(x, names, has_column_names(data), meta, model, data)
    scores = session_scores(session, meta, model, x, compensate=compensate)
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
    """0/1 per row (1: anomalous) from --labels, the data's .npz 'test_label' or --label-column."""
    if labels is not None:
        source = str(labels)
        if labels.suffix == ".npz":
            hint = "give a .npz with test_label, or a text file of one 0/1 per row"
            key, y = read_npz(labels, prefer(labels, ("test_label",), hint=hint))
            source = f"{labels}:{key}"
        else:
            try:
                y = np.loadtxt(labels, delimiter=",", ndmin=1)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise InvalidArgument(
                    f"cannot read labels from {labels} ({exc}); expected 0 or 1 per row, one a line "
                    "(or comma-separated), no header"
                ) from None
    elif data.suffix == ".npz":
        _, y = read_npz(data, prefer(data, ("test_label",), only=False, hint="give --labels"))
        source = f"{data}:test_label"
    elif label_column:
        x, _ = load_matrix(data, columns=[label_column])
        y = x[:, 0]
        source = f"column {label_column} of {data}"
    else:
        raise InvalidArgument("give --labels FILE or --label-column NAME (or a .npz with 'test_label')")
    y = np.asarray(y).reshape(-1)
    try:
        values = y.astype(np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument(f"the labels in {source} are not numbers; give 0 or 1 per row") from None
    wrong = np.flatnonzero((values != 0) & (values != 1))
    if len(wrong):
        raise InvalidArgument(
            f"the labels in {source} must be 0 or 1 (1: anomalous); row {wrong[0]} (from 0) is "
            f"{y[wrong[0]]}, and {len(wrong)} row(s) in all are neither"
        )
    if len(values) != rows:
        raise InvalidArgument(f"{len(values)} labels for {rows} rows")
    return values.astype(int)


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    model: Path = typer.Option(..., "--model", exists=True, help="an exported anomaly model (.onnx)"),
    data: Path = typer.Option(..., "--data", exists=True, help=EVALUATE_DATA_HELP),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        exists=True,
        help="0/1 per row (a text file, or a .npz's test_label, else its only array)",
    ),
    label_column: str = typer.Option("", "--label-column", help="a 0/1 column of the CSV"),
    compensate: bool = typer.Option(
        True, "--drift-compensation/--no-drift-compensation", help=COMPENSATION_HELP
    ),
) -> None:
    """Precision, recall and F1 (with and without point adjustment) and AUC-PR on labelled data."""
    from foedus.federation.evaluation import metrics as m

    session, meta = open_model(model)
    x, names = load_matrix(data, part="test")
    if label_column:
        keep = [i for i, n in enumerate(names) if n != label_column]
        x, names = x[:, keep], [names[i] for i in keep]
    y = load_labels(data, labels, label_column, len(x))
    x = model_columns(x, names, has_column_names(data), meta, model, data)
    scores = session_scores(session, meta, model, x, compensate=compensate)
    threshold = float(meta.get("foedus.threshold", "nan"))
    if not np.isfinite(threshold):
        raise InvalidArgument(f"{model} has no foedus.threshold in its metadata")
    figures: dict[str, float] = m.detection_scores(scores > threshold, y).as_dict()
    figures["auc_pr"] = m.average_precision(scores, y)
    figures["threshold"] = threshold
    emit(ctx, [{k: f"{v:.4f}" for k, v in figures.items()}], tuple(figures), raw=figures)
