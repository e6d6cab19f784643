"""Evaluation harness of the ops models on real operations data, with baselines in the same run.

    .venv/bin/python bench/ops_eval.py                                  # everything under ../shared/data
    .venv/bin/python bench/ops_eval.py --only smd,nab --json ops.json   # some datasets; JSON figures
    .venv/bin/python bench/ops_eval.py --data-dir /data/ops             # another folder, same layout

Datasets (each skipped, with a message, when its folder is absent; its figures are then left out):

* smd: Server Machine Dataset, 38 metrics per server. The Foedus anomaly model (trained per machine
  on the unlabelled `train` part, threshold calibrated without labels) against IsolationForest, PCA
  reconstruction and the agent's statistical detector: precision, recall, F1 with and without point
  adjustment, AUC-PR; root cause of each detected anomaly (Kernel SHAP) against
  `interpretation_label` (HitRate@100%, @150%).
* nab: Numenta Anomaly Benchmark. NAB's scoring (windows, scaled sigmoid, profiles, threshold
  optimised over the corpus); result files in NAB's format under `--out-dir`.
* nezha: injected microservice faults; recall (an alert within the fault's window), time to detect.
* bitbrains: VM CPU and memory; the resource model's recommendations against a VPA-style recommender
  (decaying histogram, 24 h half-life, P90 + 15%): slack and under-provision rate.

`--json PATH` writes one flat JSON object: figure names -> numbers (baselines under the prefixes
`iforest_`, `pca_`, `stat_`, `gauss_`, `vpa_`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("smd", "nab", "nezha", "bitbrains")


def log(message: str) -> None:
    print(f"[ops_eval {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def default_data_dir() -> Path:
    return Path(os.environ.get("FOEDUS_DATA_DIR", ROOT.parent / "shared" / "data"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with smd/, nab/, nezha/, bitbrains/ (default: $FOEDUS_DATA_DIR or ../shared/data)",
    )
    p.add_argument(
        "--only", default=",".join(DATASETS), help=f"comma-separated subset of {','.join(DATASETS)}"
    )
    p.add_argument("--json", type=Path, default=None, help="write the figures as one flat JSON object here")
    p.add_argument("--out-dir", type=Path, default=Path("ops-eval-results"), help="where NAB result files go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--machines", default="", help="smd: comma-separated machine names (default: all)")
    return p.parse_args(argv)


def run_dataset(name: str, args: argparse.Namespace, data_dir: Path) -> dict[str, float]:
    if name == "smd":
        from foedus.federation.evaluation.smd import evaluate_smd

        machines = [m for m in args.machines.split(",") if m] or None
        return evaluate_smd(data_dir, machines=machines, progress=log, seed=args.seed)
    if name == "nab":
        from foedus.federation.evaluation.nab import evaluate_nab

        return evaluate_nab(data_dir, out_dir=args.out_dir / "nab", progress=log)
    if name == "nezha":
        from foedus.federation.evaluation.nezha import evaluate_nezha

        return evaluate_nezha(data_dir, progress=log)
    from foedus.federation.evaluation.bitbrains import evaluate_bitbrains

    return evaluate_bitbrains(data_dir, progress=log, seed=args.seed)


TABLE: dict[str, list[tuple[str, str]]] = {
    "smd": [
        ("F1 (point-adjusted)", "smd_f1_pa"),
        ("F1", "smd_f1"),
        ("F1 (point-adjusted), adapted daily", "smd_f1_pa_online"),
        ("F1, adapted daily", "smd_f1_online"),
        ("AUC-PR", "smd_auc_pr"),
        ("HitRate@100%", "smd_hitrate_100"),
        ("HitRate@150%", "smd_hitrate_150"),
        ("HitRate@150%, all labelled points", "smd_hitrate_150_all"),
    ],
    "nab": [
        ("score, standard profile", "nab_score"),
        ("score, low FP", "nab_score_low_fp"),
        ("score, low FN", "nab_score_low_fn"),
    ],
    "nezha": [("fault recall", "nezha_recall"), ("median time to detect, s", "nezha_ttd_median_s")],
    "bitbrains": [("mean slack", "bitbrains_slack"), ("under-provision rate", "bitbrains_under_rate")],
}
PREFIXES = ("", "iforest_", "pca_", "stat_", "gauss_", "vpa_")


def print_table(figures: dict[str, float]) -> None:
    width = max(len(f"{dataset}: {label}") for dataset, rows in TABLE.items() for label, _ in rows) + 2
    header = f"{'figure':<{width}}" + "".join(f"{(p.rstrip('_') or 'foedus'):>10}" for p in PREFIXES)
    print(header)
    print("-" * len(header))
    for dataset, rows in TABLE.items():
        for label, key in rows:
            cells = []
            for prefix in PREFIXES:
                value = figures.get(prefix + key)
                cells.append(f"{value:>10.3f}" if value is not None else f"{'':>10}")
            if any(c.strip() for c in cells):
                print(f"{dataset + ': ' + label:<{width}}" + "".join(cells))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    wanted = [d.strip() for d in args.only.split(",") if d.strip()]
    unknown = sorted(set(wanted) - set(DATASETS))
    if unknown:
        sys.exit(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    figures: dict[str, float] = {}
    for name in wanted:
        if not (data_dir / name).is_dir():
            log(f"{name}: {data_dir / name} not found, skipped")
            continue
        started = time.monotonic()
        log(f"{name}: evaluating")
        out = run_dataset(name, args, data_dir)
        figures.update({k: float(v) for k, v in out.items() if v is not None})
        figures[f"{name}_eval_s"] = time.monotonic() - started
        log(f"{name}: done in {figures[f'{name}_eval_s']:.0f} s")
    figures["cpu_count"] = float(os.cpu_count() or 0)
    print_table(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
        log(f"wrote {args.json}")
    return 0


_: Callable[..., Any] = main

if __name__ == "__main__":
    sys.exit(main())
