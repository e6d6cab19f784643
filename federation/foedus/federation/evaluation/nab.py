"""Numenta Anomaly Benchmark (NAB): loading, NAB's scoring method, result files and `evaluate_nab`.

Data layout (NAB v1.1 as published, any subset of its families): ``<nab>/data/<family>/<series>.csv``
with ``timestamp,value`` rows, ``<nab>/labels/combined_windows.json`` mapping ``"<family>/<series>.csv"``
to a list of ``[start, end]`` timestamp pairs, and ``<nab>/config/profiles.json`` with the cost
matrices of the application profiles (``standard``, ``reward_low_FP_rate``, ``reward_low_FN_rate``).
`evaluate_nab` accepts either the NAB folder itself or a data folder holding it as ``nab/``
(``FOEDUS_DATA_DIR``, default ``../shared/data`` beside the repository).

Scoring, reimplemented from NAB's published method (Lavin & Ahmad, "Evaluating Real-time Anomaly
Detection Algorithms - the Numenta Anomaly Benchmark", 2015, and the NAB v1.1 scorer semantics):

* **Detections.** A detector emits one anomaly score in [0, 1] per row; row ``i`` is a detection at
  threshold ``t`` when ``score[i] >= t``.
* **Probationary period.** The first ``min(floor(0.15 * n), 0.15 * 5000)`` = at most 750 rows of a
  series of ``n`` rows are not scored at all: their detections count nowhere, and a window that lies
  entirely inside the period is not counted (NAB v1.1 drops those rows before scoring).
* **Windows.** A window runs from the first row stamped with its start to the first row stamped
  with its end (rows keep file order, as in NAB: one published file has a timestamp going back). A row ``i`` inside a window ``[s, e]`` of width ``w = e - s + 1`` has relative position
  ``y = -(e - i + 1) / w`` (``-1`` at the first row, ``-1/w`` at the last) and its detection is worth
  ``A_TP * sigma(y) / sigma(-1)`` with the scaled sigmoid ``sigma(y) = 2 / (1 + exp(5 y)) - 1``
  (``sigma(y) = -1`` for ``y >= 3``). Only the best (earliest) detection of a window counts; a window
  without any detection costs ``-A_FN``.
* **False positives.** A detection outside every window, after a window ``[s', e']`` of width ``w'``
  (the latest one that ended before it), is worth ``A_FP * sigma((i - e') / (w' - 1))``: slightly
  negative just after the window, ``-A_FP`` from three window widths on. Before the first window of
  its series it is worth ``-A_FP``. True negatives are not rewarded (``A_TN`` is unused, as in NAB).
* **Threshold.** One threshold per detector and profile, chosen to maximise the raw score summed
  over the corpus. Like NAB v1.1's sweep, every distinct score value is a candidate (an exact sweep,
  not a local search); a tie keeps the highest threshold, and ``1.1`` means "never detect".
* **Normalisation.** ``100 * (raw - null) / (perfect - null)``, where ``null`` is the raw score of the
  detector that never fires (``-A_FN`` per counted window) and ``perfect`` that of the detector
  firing exactly at the first row of every window (``A_TP`` per window).

Deviations from NAB, all of which leave the published data's scores unchanged: a window of width 1
would make NAB divide by zero for the false positives after it (``w' - 1``); here the divisor is at
least 1. Window bounds that are not exact timestamps of the series are taken as the rows between
them (NAB requires exact matches, which the published labels satisfy). Result files keep NAB's
``timestamp,value,anomaly_score,label`` columns but not the per-row reward columns of NAB's scorer.
Scores depend on the corpus: on a subset of NAB's families (the shared data lacks
realAWSCloudwatch) they are not directly comparable with published full-corpus scores.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

PROBATION_PERCENT = 0.15
"""Fraction of each series NAB leaves unscored (capped at ``PROBATION_PERCENT * 5000`` rows)."""
NEVER_THRESHOLD = 1.1
"""The threshold NAB reports for "no detection at all" (above every score in [0, 1])."""
PROFILE_KEYS = {
    "standard": "",
    "reward_low_FP_rate": "_low_fp",
    "reward_low_FN_rate": "_low_fn",
}
"""NAB's profiles and the suffix their scores get in `evaluate_nab`'s result keys."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CostMatrix:
    """Weights of one NAB application profile."""

    tp: float
    fp: float
    fn: float
    tn: float = 1.0
    """Listed in NAB's profiles but unused by its scorer (true negatives earn nothing)."""

    @classmethod
    def from_json(cls, entry: Mapping[str, Mapping[str, float]]) -> CostMatrix:
        """From one ``profiles.json`` entry (``{"CostMatrix": {"tpWeight": ..., ...}}``)."""
        matrix = entry["CostMatrix"]
        return cls(
            tp=float(matrix["tpWeight"]),
            fp=float(matrix["fpWeight"]),
            fn=float(matrix["fnWeight"]),
            tn=float(matrix.get("tnWeight", 1.0)),
        )


DEFAULT_PROFILES = {
    "standard": CostMatrix(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": CostMatrix(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": CostMatrix(tp=1.0, fp=0.11, fn=2.0),
}
"""NAB v1.1's ``config/profiles.json``, used when a data folder lacks it."""


@dataclass(frozen=True)
class NabSeries:
    """One NAB data file with its labelled anomaly windows."""

    name: str
    """Relative path as in the labels, ``"<family>/<series>.csv"``."""
    timestamps: list[str]
    """Timestamps exactly as written in the file (result files repeat them)."""
    raw_values: list[str]
    """Values exactly as written in the file."""
    values: FloatArray
    windows: list[tuple[int, int]]
    """Anomaly windows as inclusive row-index ranges, in time order."""

    @property
    def family(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def probation(self) -> int:
        """Rows at the start that NAB does not score."""
        return probation_length(len(self))

    def labels(self) -> IntArray:
        """1 for rows inside a window, else 0 (NAB's result-file ``label`` column)."""
        label = np.zeros(len(self), dtype=np.int64)
        for start, end in self.windows:
            label[start : end + 1] = 1
        return label


def probation_length(num_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """NAB's probationary period: ``min(floor(percent * n), percent * 5000)`` rows."""
    return int(min(math.floor(percent * num_rows), percent * 5000))


def scaled_sigmoid(position: float) -> float:
    """NAB's ``2 / (1 + exp(5 y)) - 1``, and exactly -1 from ``y >= 3`` on."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


def _scaled_sigmoid_array(position: FloatArray) -> FloatArray:
    out = 2.0 / (1.0 + np.exp(np.minimum(5.0 * position, 700.0))) - 1.0
    return np.where(position >= 3.0, -1.0, out)


# --------------------------------------------------------------------------------------------- loading


def resolve_nab_dir(data_dir: Path) -> Path | None:
    """The NAB folder in `data_dir` (``data_dir/nab`` or `data_dir` itself), or None when absent."""
    for candidate in (data_dir / "nab", data_dir):
        if (candidate / "data").is_dir() and (candidate / "labels" / "combined_windows.json").is_file():
            return candidate
    return None


def default_data_dir() -> Path:
    """``FOEDUS_DATA_DIR``, else ``../shared/data`` relative to the repository root."""
    env = os.environ.get("FOEDUS_DATA_DIR")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[4]
    return (repo_root / ".." / "shared" / "data").resolve()


def _parse_time(text: str) -> np.datetime64:
    return np.datetime64(text.strip().replace(" ", "T"), "us")


def _window_rows(times: npt.NDArray[np.datetime64], start: str, end: str) -> tuple[int, int] | None:
    """First row stamped `start` to first row stamped `end` (else the rows between the bounds)."""
    begin, finish = _parse_time(start), _parse_time(end)
    exact = np.flatnonzero(times == begin)
    after = np.flatnonzero(times >= begin)
    if exact.size == 0 and after.size == 0:
        return None
    lo = int(exact[0]) if exact.size else int(after[0])
    exact = np.flatnonzero(times == finish)
    before = np.flatnonzero(times <= finish)
    if exact.size == 0 and before.size == 0:
        return None
    hi = int(exact[0]) if exact.size else int(before[-1])
    return (lo, hi) if hi >= lo else None


def load_series(path: Path, name: str, window_bounds: Sequence[Sequence[str]]) -> NabSeries:
    """Reads one NAB csv and maps its label windows to row ranges."""
    timestamps: list[str] = []
    raw_values: list[str] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected a 'timestamp,value' header, got {header!r}")
        for row in reader:
            if len(row) >= 2:
                timestamps.append(row[0])
                raw_values.append(row[1])
    values = np.asarray([float(v) for v in raw_values], dtype=np.float64)
    times = np.asarray([_parse_time(t) for t in timestamps], dtype="datetime64[us]")
    windows = []
    for bounds in window_bounds:
        rows = _window_rows(times, str(bounds[0]), str(bounds[1]))
        if rows is not None:
            windows.append(rows)
    windows.sort()
    return NabSeries(name=name, timestamps=timestamps, raw_values=raw_values, values=values, windows=windows)


def load_corpus(nab_dir: Path) -> list[NabSeries]:
    """Every ``data/<family>/<series>.csv`` under `nab_dir` with its windows (none when unlabelled)."""
    labels: dict[str, list[list[str]]] = json.loads(
        (nab_dir / "labels" / "combined_windows.json").read_text()
    )
    corpus = []
    for path in sorted((nab_dir / "data").glob("*/*.csv")):
        name = f"{path.parent.name}/{path.name}"
        corpus.append(load_series(path, name, labels.get(name, [])))
    return corpus


def load_profiles(nab_dir: Path) -> dict[str, CostMatrix]:
    """``config/profiles.json`` of `nab_dir`, else NAB v1.1's published profiles."""
    path = nab_dir / "config" / "profiles.json"
    if not path.is_file():
        return dict(DEFAULT_PROFILES)
    raw = json.loads(path.read_text())
    return {name: CostMatrix.from_json(entry) for name, entry in raw.items()}


# --------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class RowRewards:
    """Per-row reward of a detection in one series under one profile (NAB's "sweep scores")."""

    reward: FloatArray
    """What a detection at the row is worth (inside a window: as that window's true positive)."""
    window: IntArray
    """Index of the row's window within the series, -1 outside windows."""
    scored: npt.NDArray[np.bool_]
    """False for rows of the probationary period."""
    counted_windows: int
    """Windows with at least one scored row; each costs ``-A_FN`` unless detected."""


def row_rewards(num_rows: int, windows: Sequence[tuple[int, int]], cost: CostMatrix) -> RowRewards:
    """NAB's reward of a detection at every row of a series (see the module docstring)."""
    reward = np.full(num_rows, -cost.fp, dtype=np.float64)
    window = np.full(num_rows, -1, dtype=np.int64)
    index = np.arange(num_rows, dtype=np.float64)
    for k, (start, end) in enumerate(windows):
        width = float(end - start + 1)
        inside = slice(start, end + 1)
        position = -(end - index[inside] + 1.0) / width
        reward[inside] = _scaled_sigmoid_array(position) / _MAX_TP * cost.tp
        window[inside] = k
        after_end = windows[k + 1][0] if k + 1 < len(windows) else num_rows
        after = slice(end + 1, after_end)
        past = (index[after] - end) / max(width - 1.0, 1.0)
        reward[after] = _scaled_sigmoid_array(past) * cost.fp
    scored = np.arange(num_rows) >= probation_length(num_rows)
    counted = len({int(w) for w in window[scored] if w >= 0})
    return RowRewards(reward=reward, window=window, scored=scored, counted_windows=counted)


@dataclass
class SeriesScore:
    """A series' NAB result at one threshold."""

    raw: float
    tp: int
    """Windows detected."""
    fn: int
    """Counted windows missed."""
    fp: int
    """Scored detections outside every window."""
    detections: int
    """Scored rows at or above the threshold."""


def score_series(
    scores: npt.ArrayLike, windows: Sequence[tuple[int, int]], cost: CostMatrix, threshold: float
) -> SeriesScore:
    """NAB raw score of one series' anomaly scores at `threshold`."""
    values = np.asarray(scores, dtype=np.float64)
    rewards = row_rewards(values.size, windows, cost)
    detected = (values >= threshold) & rewards.scored
    outside = detected & (rewards.window < 0)
    raw = float(rewards.reward[outside].sum())
    tp = 0
    counted = {int(w) for w in rewards.window[rewards.scored] if w >= 0}
    for k in sorted(counted):
        hits = detected & (rewards.window == k)
        if hits.any():
            raw += float(rewards.reward[hits].max())
            tp += 1
        else:
            raw -= cost.fn
    return SeriesScore(
        raw=raw, tp=tp, fn=len(counted) - tp, fp=int(outside.sum()), detections=int(detected.sum())
    )


@dataclass
class SweepResult:
    """The corpus-wide raw score at every candidate threshold, best first in `best_*`."""

    thresholds: FloatArray
    """Candidate thresholds, descending (the first is `NEVER_THRESHOLD`)."""
    raw_scores: FloatArray
    best_threshold: float
    best_raw: float


def sweep_thresholds(
    scores: Sequence[npt.ArrayLike], window_sets: Sequence[Sequence[tuple[int, int]]], cost: CostMatrix
) -> SweepResult:
    """NAB's exact threshold sweep over a corpus (one score array and window list per series).

    Rows are taken in descending score order; each row moves the total by its false-positive reward
    or by how much it improves its window's best reward (which starts at ``-A_FN``). The total is
    recorded after the last row of every distinct score value.
    """
    all_scores: list[FloatArray] = []
    all_rewards: list[FloatArray] = []
    all_windows: list[IntArray] = []
    offset = 0
    for series_scores, windows in zip(scores, window_sets, strict=True):
        values = np.asarray(series_scores, dtype=np.float64)
        rewards = row_rewards(values.size, windows, cost)
        keep = rewards.scored
        global_window = np.where(rewards.window >= 0, rewards.window + offset, -1)
        all_scores.append(values[keep])
        all_rewards.append(rewards.reward[keep])
        all_windows.append(global_window[keep])
        offset += len(windows)
    flat_scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    flat_rewards = np.concatenate(all_rewards) if all_rewards else np.zeros(0)
    flat_windows = np.concatenate(all_windows) if all_windows else np.zeros(0, dtype=np.int64)
    if np.isnan(flat_scores).any():
        raise ValueError("anomaly scores contain NaN")

    counted = np.unique(flat_windows[flat_windows >= 0])
    best = np.full(offset, -cost.fn)
    total = -cost.fn * counted.size
    order = np.argsort(-flat_scores, kind="stable")
    ordered_scores = flat_scores[order].tolist()
    ordered_rewards = flat_rewards[order].tolist()
    ordered_windows = flat_windows[order].tolist()
    best_list = best.tolist()
    thresholds = [NEVER_THRESHOLD]
    totals = [total]
    n = len(ordered_scores)
    for k in range(n):
        w = ordered_windows[k]
        r = ordered_rewards[k]
        if w < 0:
            total += r
        elif r > best_list[w]:
            total += r - best_list[w]
            best_list[w] = r
        if k + 1 == n or ordered_scores[k + 1] != ordered_scores[k]:
            thresholds.append(ordered_scores[k])
            totals.append(total)
    thresholds_arr = np.asarray(thresholds)
    totals_arr = np.asarray(totals)
    top = int(np.argmax(totals_arr))  # first maximum: the highest threshold among ties
    return SweepResult(
        thresholds=thresholds_arr,
        raw_scores=totals_arr,
        best_threshold=float(thresholds_arr[top]),
        best_raw=float(totals_arr[top]),
    )


def null_and_perfect(
    window_sets: Sequence[Sequence[tuple[int, int]]], lengths: Sequence[int], cost: CostMatrix
) -> tuple[float, float]:
    """Raw scores of NAB's null detector (never fires) and perfect detector (fires at window starts)."""
    null = 0.0
    perfect = 0.0
    for windows, n in zip(window_sets, lengths, strict=True):
        null += score_series(np.zeros(n), windows, cost, 0.5).raw
        ideal = np.zeros(n)
        for start, _ in windows:
            ideal[start] = 1.0
        perfect += score_series(ideal, windows, cost, 0.5).raw
    return null, perfect


def normalised_score(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``; NaN when the corpus has no counted window."""
    if perfect == null:
        return math.nan
    return 100.0 * (raw - null) / (perfect - null)


@dataclass
class ProfileResult:
    """A detector's NAB result under one profile."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    per_series: dict[str, SeriesScore] = field(default_factory=dict)

    def family_scores(self, corpus: Sequence[NabSeries], cost: CostMatrix) -> dict[str, float]:
        """Normalised score per family at the corpus threshold (families without windows left out)."""
        out: dict[str, float] = {}
        for family in sorted({s.family for s in corpus}):
            members = [s for s in corpus if s.family == family]
            null, perfect = null_and_perfect([s.windows for s in members], [len(s) for s in members], cost)
            if perfect == null:
                continue
            raw = sum(self.per_series[s.name].raw for s in members)
            out[family] = normalised_score(raw, null, perfect)
        return out


def score_detector(
    corpus: Sequence[NabSeries], scores: Mapping[str, npt.ArrayLike], cost: CostMatrix, profile: str = ""
) -> ProfileResult:
    """Optimises the threshold over the corpus and scores every series at it."""
    arrays = [np.asarray(scores[s.name], dtype=np.float64) for s in corpus]
    for series, array in zip(corpus, arrays, strict=True):
        if array.shape != (len(series),):
            raise ValueError(f"{series.name}: {array.shape} scores for {len(series)} rows")
    windows = [s.windows for s in corpus]
    sweep = sweep_thresholds(arrays, windows, cost)
    null, perfect = null_and_perfect(windows, [len(s) for s in corpus], cost)
    per_series = {
        s.name: score_series(a, s.windows, cost, sweep.best_threshold)
        for s, a in zip(corpus, arrays, strict=True)
    }
    return ProfileResult(
        profile=profile,
        threshold=sweep.best_threshold,
        raw=sweep.best_raw,
        null=null,
        perfect=perfect,
        score=normalised_score(sweep.best_raw, null, perfect),
        per_series=per_series,
    )


# --------------------------------------------------------------------------------------------- results


def write_results(out_dir: Path, detector: str, series: NabSeries, scores: npt.ArrayLike) -> Path:
    """Writes ``<out_dir>/<detector>/<family>/<detector>_<series>.csv`` as NAB's result files."""
    values = np.asarray(scores, dtype=np.float64)
    path = out_dir / detector / series.family / f"{detector}_{series.stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = series.labels()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for ts, value, score, label in zip(
            series.timestamps, series.raw_values, values.tolist(), labels.tolist(), strict=True
        ):
            writer.writerow([ts, value, repr(score), label])
    return path


# --------------------------------------------------------------------------------------------- evaluation


DetectorFn = Callable[[NabSeries], FloatArray]


def _run_detector(
    name: str,
    detector: DetectorFn,
    corpus: Sequence[NabSeries],
    out_dir: Path | None,
    progress: Callable[[str], None] | None,
) -> tuple[dict[str, FloatArray], float]:
    started = time.perf_counter()
    scores: dict[str, FloatArray] = {}
    for series in corpus:
        result = np.clip(np.nan_to_num(np.asarray(detector(series), dtype=np.float64)), 0.0, 1.0)
        scores[series.name] = result
        if out_dir is not None:
            write_results(out_dir, name, series, result)
    elapsed = time.perf_counter() - started
    if progress is not None:
        progress(f"{name}: {len(corpus)} series in {elapsed:.1f}s")
    return scores, elapsed


def _profile_metrics(
    prefix: str,
    corpus: Sequence[NabSeries],
    scores: Mapping[str, FloatArray],
    profiles: Mapping[str, CostMatrix],
    *,
    families: bool,
) -> dict[str, float]:
    out: dict[str, float] = {}
    for profile, suffix in PROFILE_KEYS.items():
        if profile not in profiles:
            continue
        cost = profiles[profile]
        result = score_detector(corpus, scores, cost, profile)
        out[f"{prefix}_score{suffix}"] = result.score
        out[f"{prefix}_threshold{suffix}"] = result.threshold
        if profile == "standard":
            per = result.per_series.values()
            out[f"{prefix}_raw"] = result.raw
            out[f"{prefix}_tp_windows"] = float(sum(s.tp for s in per))
            out[f"{prefix}_fn_windows"] = float(sum(s.fn for s in per))
            out[f"{prefix}_fp_detections"] = float(sum(s.fp for s in per))
            if families:
                for family, value in result.family_scores(corpus, cost).items():
                    out[f"{prefix}_score_{family}"] = value
    return out


def evaluate_nab(
    data_dir: Path,
    *,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Runs the univariate detector and the baselines on NAB and scores them with NAB's method.

    `data_dir` is the NAB folder or a folder holding it as ``nab/``. With `out_dir`, NAB result files
    are written under ``out_dir/<detector>/<family>/``. Returns a flat dict of numbers:

    * ``nab_series``, ``nab_windows``, ``nab_rows``: the corpus;
    * for Foedus's detector (prefix ``nab``) and each baseline - ``stat_nab`` (the agent's robust
      z-score detector as it is), ``stat_rest_nab`` (the same with the detector's rest period, an
      ablation), ``gauss_nab`` (windowed Gaussian) and ``iforest_nab`` (IsolationForest, when
      scikit-learn is installed): ``<prefix>_score`` (standard profile), ``<prefix>_score_low_fp``,
      ``<prefix>_score_low_fn``, their thresholds ``<prefix>_threshold[_low_fp|_low_fn]``, and for the
      standard profile ``<prefix>_raw``, ``<prefix>_tp_windows``, ``<prefix>_fn_windows``,
      ``<prefix>_fp_detections``, the per-family scores ``<prefix>_score_<family>`` (at the corpus
      threshold; families without windows have none) and ``<prefix>_seconds`` (detection time).
    """
    from foedus.federation import univariate

    nab_dir = resolve_nab_dir(Path(data_dir))
    if nab_dir is None:
        raise FileNotFoundError(f"no NAB data (data/ and labels/combined_windows.json) under {data_dir}")
    corpus = load_corpus(nab_dir)
    if not corpus:
        raise FileNotFoundError(f"no NAB series under {nab_dir / 'data'}")
    profiles = load_profiles(nab_dir)

    stat_cache: dict[str, FloatArray] = {}

    def stat(series: NabSeries) -> FloatArray:
        stat_cache[series.name] = scores = univariate.stat_detector_scores(series)
        return scores

    def stat_rest(series: NabSeries) -> FloatArray:
        return univariate.stat_rest_scores(series, stat_cache.get(series.name))

    detectors: list[tuple[str, str, DetectorFn]] = [
        ("nab", univariate.DETECTOR_NAME, univariate.nab_detector),
        ("stat_nab", "foedus_stat_z", stat),
        ("stat_rest_nab", "foedus_stat_z_rest", stat_rest),
        ("gauss_nab", "windowed_gaussian", univariate.windowed_gaussian_scores),
    ]
    if univariate.isolation_forest_available():
        detectors.append(("iforest_nab", "isolation_forest", univariate.isolation_forest_scores))

    metrics: dict[str, float] = {
        "nab_series": float(len(corpus)),
        "nab_windows": float(sum(len(s.windows) for s in corpus)),
        "nab_rows": float(sum(len(s) for s in corpus)),
    }
    for prefix, name, detector in detectors:
        scores, seconds = _run_detector(name, detector, corpus, out_dir, progress)
        metrics.update(_profile_metrics(prefix, corpus, scores, profiles, families=True))
        metrics[f"{prefix}_seconds"] = seconds
        if progress is not None:
            progress(f"{name}: NAB standard score {metrics[f'{prefix}_score']:.1f}")
    return metrics


def _main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score Foedus's univariate detector on NAB.")
    parser.add_argument("--data-dir", type=Path, default=None, help="NAB folder or one holding nab/")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write NAB result files")
    args = parser.parse_args(list(argv) if argv is not None else None)
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    metrics = evaluate_nab(data_dir, out_dir=args.out_dir, progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
