"""Drift benchmark: Foedus's drift from binned counts against Evidently's DataDriftPreset, same data.

    .venv/bin/python bench/drift.py                        # both data sets, table on stdout
    .venv/bin/python bench/drift.py --json /tmp/drift.json # also one flat JSON object of numbers
    .venv/bin/python bench/drift.py --rows 100000          # a smaller synthetic set

Evidently runs in its own virtual environment, `.bench/evidently-venv`, created on the first run
with pip (`--evidently-spec`, default evidently==0.7.23 with pandas<3, which that release needs,
and pyarrow for the parquet files); the project's environment is never touched. Each side reads the
same arrays from `.bench/drift-*.npz`.

Data:
  * synthetic (a scaling benchmark): `--rows` (1,000,000) rows x 20 numeric features for the
    reference and as many for the current set, seeded. Drift is known by construction: features
    f00-f05 drift (f00/f01 mean shifted by 0.5 sd, f02/f03 sd x 1.6, f04 a lognormal's mean shifted
    by 0.5 log-sd, f05 an integer feature with 8 values whose shares change), f06-f19 keep their
    distribution (among them f18, 0/1, and f19, 4 integer values);
  * employment (real): the US Census ACS employment data of Massachusetts shipped with NannyML
    (`$FOEDUS_DATA_DIR/nannyml`, default ../shared/data): 2015 as the reference (68,785 rows) against
    each of 2016, 2017 and 2018 (about 70,000 rows each); the 16 model inputs, AGEP numeric and 15
    categorical codes. Skipped with a message when the folder is absent.

What is timed (wall clock, best of `--repeats`, this machine, both sides single process):
  * evidently_drift_s: `Dataset.from_pandas` of both frames + `Report([DataDriftPreset()]).run`,
    with the column types declared (no type inference), data already in memory as DataFrames;
  * drift_s: Foedus's report from the reference profile and the current counts
    (`foedus.client_sdk.drift.drift_report`), the computation the control plane runs for
    `GetDriftReport`. The counts themselves are made by agents as they serve, one interval at a
    time; what that costs is `binning_s` (all current rows counted on the reference bins with the
    agents' `BinnedCounts`), and profiling the reference once at registration `profile_s`;
  * sdk_compare_s: `compare_datasets` end to end (profile + binning + report), the in-memory SDK
    path, with sdk_ratio = evidently_drift_s / sdk_compare_s.

Agreement: with Evidently's default tests (Wasserstein normed for numeric features with more than 5
values, Jensen-Shannon for the others, thresholds 0.1) and Foedus's default method "auto" (the same
rule on the reference bins; the run stops if the two pick different tests for a feature), the
features each side flags are compared; every disagreement is printed with both scores. On the employment data the same is done with p-value tests (Evidently
num_method "ks", cat_method "chisquare"; Foedus "ks" on AGEP, "chi2" on the others), reported apart.

JSON: drift_s, evidently_drift_s, drift_ratio, binning_s, profile_s, sdk_compare_s, sdk_ratio,
synthetic_agreement (share of features both flag alike), synthetic_disagreements,
synthetic_foedus_drifted, synthetic_evidently_drifted, synthetic_true_drifted,
employment_disagreements (default tests, all years), employment_pvalue_disagreements,
employment_<year>_foedus_drifted / _evidently_drifted, employment_max_js_difference (largest
|JS_foedus - JS_evidently| over categorical features and years), employment_drift_s,
employment_evidently_drift_s, evidently_version (major*10000 + minor*100 + patch), rows, features.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from foedus.client_sdk.agent.histogram import BinnedCounts
from foedus.client_sdk.drift import (
    FeatureCounts,
    compare_datasets,
    counts_from_binned,
    drift_report,
    feature_drift,
    reference_counts,
)
from foedus.client_sdk.profile import compute_reference_profile
from foedus.v1 import common_pb2

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
EMPLOYMENT_NUMERIC = ["AGEP"]
EMPLOYMENT_CATEGORICAL = [
    "SCHL", "MAR", "RELP", "DIS", "ESP", "CIT", "MIG", "MIL", "ANC", "NATIVITY", "DEAR", "DEYE",
    "DREM", "SEX", "RAC1P",
]  # fmt: skip
YEARS = (2016, 2017, 2018)
TRUE_DRIFTED = [f"f{i:02d}" for i in range(6)]

# Runs inside the Evidently venv: argv = command, input .npz, output .json, repeats.
EVIDENTLY_WORKER = r"""
import json, sys, time
import numpy as np
import pandas as pd
import evidently
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

command, source, target = sys.argv[1], sys.argv[2], sys.argv[3]
repeats = int(sys.argv[4])


def frame(arrays, names):
    return pd.DataFrame({n: arrays[i] for i, n in enumerate(names)})


def run(ref, cur, numeric, categorical, **preset):
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        snapshot = Report([DataDriftPreset(**preset)]).run(
            current_data=Dataset.from_pandas(cur, data_definition=definition),
            reference_data=Dataset.from_pandas(ref, data_definition=definition),
        )
        best = min(best, time.perf_counter() - started)
        out = snapshot.dict()
    columns = {}
    for m in out["metrics"]:
        config = m.get("config", {})
        if "column" in config and "method" in config:
            method, threshold, value = config["method"], config["threshold"], float(m["value"])
            # The snapshot holds the score; Evidently's p-value tests flag ks at p <= threshold,
            # chisquare at p < threshold, and its distances at score >= threshold.
            if method == "ks":
                drifted = value <= threshold
            elif method == "chisquare":
                drifted = value < threshold
            else:
                drifted = value >= threshold
            columns[config["column"]] = {"method": method, "threshold": threshold, "value": value,
                                         "drifted": bool(drifted)}
    return {"seconds": best, "columns": columns}


result = {"version": evidently.__version__}
if command == "synthetic":
    data = np.load(source)
    names = [str(n) for n in data["names"]]
    ref = pd.DataFrame(data["reference"].astype(np.float64), columns=names)
    cur = pd.DataFrame(data["current"].astype(np.float64), columns=names)
    result["synthetic"] = run(ref, cur, names, [])
elif command == "employment":
    folder = source
    numeric, categorical = sys.argv[5].split(","), sys.argv[6].split(",")
    cols = numeric + categorical
    ref = pd.read_parquet(f"{folder}/employment_MA_reference.pq")[cols]
    ana = pd.read_parquet(f"{folder}/employment_MA_analysis.pq")
    def column(df, c):
        return np.asarray(df[c].astype(str), dtype=str) if c in categorical else np.asarray(df[c], dtype=float)

    export = {"reference_" + c: column(ref, c) for c in cols}
    for year in (2016, 2017, 2018):
        cur = ana[ana.year == year][cols].reset_index(drop=True)
        for c in cols:
            export[f"{year}_{c}"] = column(cur, c)
        result[str(year)] = run(ref, cur, numeric, categorical)
        result[f"{year}_pvalue"] = run(ref, cur, numeric, categorical, num_method="ks", cat_method="chisquare")
    np.savez(target + ".npz", **export)
json.dump(result, open(target, "w"))
"""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_evidently(venv: Path, spec: list[str]) -> Path:
    """The venv's python, with Evidently installed on first use."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import evidently"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    log(f"creating {venv} with {' '.join(spec)} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *spec], check=True)
    return python


def evidently_run(python: Path, command: str, source: Path, *extra: str, repeats: int) -> dict[str, Any]:
    target = WORK / f"drift-evidently-{command}.json"
    worker = WORK / "drift_evidently_worker.py"
    worker.write_text(EVIDENTLY_WORKER)
    args = [str(python), str(worker), command, str(source), str(target), str(repeats), *extra]
    subprocess.run(args, check=True)
    result: dict[str, Any] = json.loads(target.read_text())
    return result


def best_of(repeats: int, fn: Any) -> tuple[float, Any]:
    best, out = math.inf, None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reference and current sets of 20 features; f00-f05 drift by construction (module docstring)."""
    rng = np.random.default_rng(seed)
    ref = np.empty((rows, 20), dtype=np.float32)
    cur = np.empty((rows, 20), dtype=np.float32)
    levels = np.arange(8)
    ref_shares = np.full(8, 1 / 8)
    cur_shares = np.array([0.25, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05])
    ref[:, 0], cur[:, 0] = rng.normal(0, 1, rows), rng.normal(0.5, 1, rows)
    ref[:, 1], cur[:, 1] = rng.normal(10, 3, rows), rng.normal(11.5, 3, rows)
    ref[:, 2], cur[:, 2] = rng.normal(0, 1, rows), rng.normal(0, 1.6, rows)
    ref[:, 3], cur[:, 3] = rng.uniform(0, 1, rows), rng.uniform(0.5 - 0.8, 0.5 + 0.8, rows)
    ref[:, 4], cur[:, 4] = rng.lognormal(0, 1, rows), rng.lognormal(0.5, 1, rows)
    ref[:, 5], cur[:, 5] = rng.choice(levels, rows, p=ref_shares), rng.choice(levels, rows, p=cur_shares)
    for j in range(6, 18):
        kind = j % 3
        for out in (ref, cur):
            if kind == 0:
                out[:, j] = rng.normal(j, 1 + j / 10, rows)
            elif kind == 1:
                out[:, j] = rng.exponential(j, rows)
            else:
                out[:, j] = rng.gamma(2.0, 1.0, rows)
    for out in (ref, cur):
        out[:, 18] = rng.integers(0, 2, rows)
        out[:, 19] = rng.choice(4, rows, p=[0.4, 0.3, 0.2, 0.1])
    return ref, cur, [f"f{j:02d}" for j in range(20)]


def count_current(
    profile: common_pb2.ReferenceProfile, columns: dict[str, np.ndarray]
) -> dict[str, FeatureCounts]:
    """Counts every current column on the reference bins, as agents do."""
    out = {}
    for f in profile.features:
        if f.WhichOneof("kind") == "categorical":
            counter = BinnedCounts.categorical(list(f.categorical.categories))
        else:
            counter = BinnedCounts.numeric(np.asarray(f.numeric.edges))
        counter.add(columns[f.name])
        out[f.name] = counts_from_binned(f.name, counter)
    return out


EVIDENTLY_METHODS = {
    "wasserstein": "Wasserstein distance (normed)",
    "js": "Jensen-Shannon distance",
    "ks": "ks",
    "chi2": "chisquare",
}
"""Foedus's method names -> the names Evidently's snapshot gives the same tests."""


def disagreements(
    label: str, foedus: dict[str, tuple[bool, str, float]], evidently: dict[str, dict[str, Any]]
) -> int:
    """Prints and counts the features flagged by one side only; a test chosen differently fails."""
    n = 0
    for name, (drifted, method, score) in foedus.items():
        e = evidently[name]
        if EVIDENTLY_METHODS[method] != e["method"]:
            raise AssertionError(f"{label} {name}: Foedus tests with {method}, Evidently with {e['method']}")
        if drifted != e["drifted"]:
            n += 1
            log(
                f"DISAGREEMENT {label} {name}: Foedus {method}={score:.4g} drifted={drifted}; "
                f"Evidently {e['method']}={e['value']:.4g} drifted={e['drifted']}"
            )
    return n


def run_synthetic(args: argparse.Namespace, python: Path | None, figures: dict[str, float]) -> None:
    log(f"synthetic: {args.rows} rows x 20 features, seed {args.seed}")
    ref, cur, names = synthetic(args.rows, args.seed)
    source = WORK / "drift-synthetic.npz"
    np.savez(source, reference=ref, current=cur, names=np.asarray(names))
    ref_cols = {n: ref[:, j].astype(np.float64) for j, n in enumerate(names)}
    cur_cols = {n: cur[:, j].astype(np.float64) for j, n in enumerate(names)}
    del ref, cur
    profile_s, profile = best_of(args.repeats, lambda: compute_reference_profile(ref_cols))
    binning_s, counts = best_of(args.repeats, lambda: count_current(profile, cur_cols))
    reference = reference_counts(profile)
    drift_s, report = best_of(args.repeats, lambda: drift_report(reference, counts))
    sdk_s, sdk_report = best_of(args.repeats, lambda: compare_datasets(ref_cols, cur_cols))
    assert sdk_report.drifted() == report.drifted()
    flagged = report.drifted()
    log(f"synthetic: Foedus flags {flagged} (true: {TRUE_DRIFTED})")
    figures.update(
        profile_s=profile_s,
        binning_s=binning_s,
        drift_s=drift_s,
        sdk_compare_s=sdk_s,
        synthetic_foedus_drifted=len(flagged),
        synthetic_true_drifted=len(TRUE_DRIFTED),
        synthetic_foedus_matches_truth=float(flagged == TRUE_DRIFTED),
    )
    if python is None:
        return
    log("synthetic: Evidently DataDriftPreset")
    ev = evidently_run(python, "synthetic", source, repeats=args.repeats)
    columns = ev["synthetic"]["columns"]
    for name, c in sorted(columns.items()):
        log(f"  evidently {name}: {c['method']} threshold {c['threshold']} value {c['value']:.4g}")
    foedus = {f.name: (f.drifted, f.method, f.score) for f in report.features}
    n = disagreements("synthetic", foedus, columns)
    seconds = ev["synthetic"]["seconds"]
    figures.update(
        evidently_drift_s=seconds,
        drift_ratio=seconds / drift_s,
        sdk_ratio=seconds / sdk_s,
        synthetic_disagreements=n,
        synthetic_agreement=1.0 - n / len(names),
        synthetic_evidently_drifted=sum(c["drifted"] for c in columns.values()),
        evidently_version=_version_number(ev["version"]),
    )


def run_employment(args: argparse.Namespace, python: Path, figures: dict[str, float]) -> None:
    folder = Path(args.data_dir) / "nannyml"
    if not (folder / "employment_MA_reference.pq").exists():
        log(f"employment: no data in {folder} (set --data-dir or FOEDUS_DATA_DIR); skipped")
        return
    log("employment: Evidently DataDriftPreset, 2015 against 2016, 2017, 2018")
    numeric, categorical = ",".join(EMPLOYMENT_NUMERIC), ",".join(EMPLOYMENT_CATEGORICAL)
    ev = evidently_run(python, "employment", folder, numeric, categorical, repeats=args.repeats)
    exported = np.load(str(WORK / "drift-evidently-employment.json") + ".npz")
    cols = EMPLOYMENT_NUMERIC + EMPLOYMENT_CATEGORICAL
    profile = compute_reference_profile({c: exported["reference_" + c] for c in cols})
    reference = reference_counts(profile)
    total = total_p = 0
    max_js = 0.0
    drift_seconds: list[float] = []
    for year in YEARS:
        counts = count_current(profile, {c: exported[f"{year}_{c}"] for c in cols})
        seconds, report = best_of(args.repeats, lambda counts=counts: drift_report(reference, counts))
        drift_seconds.append(seconds)
        columns = ev[str(year)]["columns"]
        for f in report.features:
            e = columns[f.name]
            log(
                f"  {year} {f.name}: Foedus {f.method}={f.score:.4f} | Evidently {e['method']}={e['value']:.4f}"
            )
            if f.kind == "categorical":
                max_js = max(max_js, abs(f.js_distance - e["value"]))
        foedus = {f.name: (f.drifted, f.method, f.score) for f in report.features}
        total += disagreements(f"employment {year}", foedus, columns)
        pvalue_columns = ev[f"{year}_pvalue"]["columns"]
        by_test = {}
        for ref in reference:
            d = feature_drift(ref, counts[ref.name], method="ks" if ref.edges is not None else "chi2")
            by_test[ref.name] = (d.drifted, d.method, d.score)
        total_p += disagreements(f"employment {year} p-value tests", by_test, pvalue_columns)
        figures[f"employment_{year}_foedus_drifted"] = len(report.drifted())
        figures[f"employment_{year}_evidently_drifted"] = sum(c["drifted"] for c in columns.values())
        figures[f"employment_{year}_foedus_pvalue_drifted"] = sum(d[0] for d in by_test.values())
        figures[f"employment_{year}_evidently_pvalue_drifted"] = sum(
            c["drifted"] for c in pvalue_columns.values()
        )
    figures.update(
        employment_disagreements=total,
        employment_pvalue_disagreements=total_p,
        employment_max_js_difference=max_js,
        employment_drift_s=sum(drift_seconds) / len(drift_seconds),
        employment_evidently_drift_s=sum(ev[str(y)]["seconds"] for y in YEARS) / len(YEARS),
    )


def _version_number(text: str) -> float:
    parts = [int(p) for p in text.split(".")[:3] if p.isdigit()]
    parts += [0] * (3 - len(parts))
    return float(parts[0] * 10_000 + parts[1] * 100 + parts[2])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write one flat JSON object of numbers here")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of each synthetic set")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side; the best counts")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("FOEDUS_DATA_DIR", str(REPO.parent / "shared" / "data")),
        help="the shared real data (env FOEDUS_DATA_DIR; %(default)s)",
    )
    p.add_argument("--evidently-venv", type=Path, default=WORK / "evidently-venv")
    p.add_argument(
        "--evidently-spec",
        default="evidently==0.7.23 pandas<3 pyarrow",
        help="what pip installs into the Evidently venv (space-separated requirements)",
    )
    p.add_argument("--skip-evidently", action="store_true", help="Foedus's side only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(exist_ok=True)
    python = (
        None if args.skip_evidently else ensure_evidently(args.evidently_venv, args.evidently_spec.split())
    )
    figures: dict[str, float] = {"rows": float(args.rows), "features": 20.0}
    run_synthetic(args, python, figures)
    if python is not None:
        run_employment(args, python, figures)
    figures = {k: float(v) for k, v in figures.items()}
    for key in sorted(figures):
        print(f"{key:40s} {figures[key]:.6g}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
