"""Federated vs local-only vs centralised training of the anomaly model on SMD organisations.

The Server Machine Dataset's three machine groups (``machine-1-*``, ``machine-2-*``,
``machine-3-*``: 8, 9 and 11 servers of one internet company's clusters) play three
organisations. Each machine's training series is normalised with its own robust centre and scale
(`foedus.federation.anomaly.normalised_series`, what a site's detector does) and an
organisation's machines are stacked into its local data set. Then, with the same network,
optimiser and number of passes over the data:

* **local**: each organisation trains alone on its own machines (``rounds`` epochs);
* **central**: one network trained on every organisation's data pooled (``rounds`` epochs),
  the upper reference that federation must approach without pooling;
* **fed**: Flower's deployment engine, a SuperLink and three SuperNodes as real processes with
  TLS and SuperNode authentication, ``rounds`` rounds of FedAvg with one local epoch each;
* **dp_fed**: the same with central differential privacy (server-side fixed clipping and
  Gaussian noise; ε after all rounds reported);
* **secagg_fed**: the same with SecAgg+ secure aggregation (Flower's legacy workflow).

Every resulting network is then evaluated on every machine of every organisation: the machine's
detector is `AnomalyModel.from_shared_weights` (the machine's own normalisation and block-maxima
threshold from its training series; no label chooses anything), and its test steps are scored
with F1 with and without point adjustment, and AUC-PR. ``local_*`` evaluates each organisation's
own model on its own machines (what an organisation alone would run); ``local_cross_*`` its
model on the other organisations' machines. Means are over machines.

Also reported: each federated run's mean round time (``round_s``: wall-clock seconds of a round,
training and evaluation), and bytes per round: record payloads both ways as Flower counts them
(``round_bytes``) and the SuperLink's own count of bytes on the wire (``round_wire_bytes``, TLS
and HTTP included).

    python bench/federation_eval.py [--data-dir DIR] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foedus.federation.anomaly import AnomalyConfig, AnomalyModel, federated_task, normalised_series
from foedus.federation.evaluation.metrics import average_precision, detection_scores
from foedus.federation.evaluation.smd import SmdMachine, available_machines, default_data_dir, load_machine
from foedus.federation.flower.runner import NodeSpec, RunResult, run_federation
from foedus.federation.flower.task import DpConfig, LocalData, NamedArrays, SecAggConfig

TASK_REF = "foedus.federation.anomaly:federated_task"


@dataclass(frozen=True)
class Organisation:
    name: str
    machines: list[SmdMachine]
    data_path: Path


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def organisations(
    data_dir: Path, workdir: Path, config: AnomalyConfig, count: int, limit: int | None
) -> list[Organisation]:
    """`count` organisations, their machines' normalised series stacked in one npz each.

    One organisation per SMD machine group when there are `count` groups; otherwise (the data
    here holds groups 1 and 2 only) the machines in name order, cut into `count` runs of
    consecutive machines, so an organisation holds neighbouring servers of one or two groups.
    """
    names = available_machines(data_dir)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split("-")[1], []).append(name)
    if len(groups) == count:
        parts = [groups[g] for g in sorted(groups)]
    else:
        if len(names) < count:
            raise SystemExit(f"{len(names)} SMD machines under {data_dir}; need at least {count}")
        parts = [[str(n) for n in chunk] for chunk in np.array_split(np.array(names), count)]
    orgs: list[Organisation] = []
    for number, part in enumerate(parts, start=1):
        machines = [load_machine(data_dir, name, limit=limit) for name in part]
        stacked = np.concatenate([normalised_series(m.train, config) for m in machines])
        path = workdir / f"org-{number}.npz"
        np.savez(path, train=stacked)
        orgs.append(Organisation(f"org-{number}", machines, path))
        say(f"org-{number}: {', '.join(part)}: {stacked.shape[0]} training steps")
    return orgs


def task_options(config: AnomalyConfig, features: int, seed: int) -> dict[str, Any]:
    return {
        "features": features,
        "window": config.window,
        "hidden": config.hidden,
        "code": config.code,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "seed": seed,
        "normalise": False,
    }


def train_in_process(options: Mapping[str, Any], paths: Sequence[Path], epochs: int) -> NamedArrays:
    """The federated task's own training step (same network, optimiser, batches) on pooled data."""
    task = federated_task(**options)
    train = np.concatenate([np.load(p)["train"] for p in paths])
    weights, _ = task.train(task.initial_arrays(), LocalData(train=train), epochs=epochs)
    return dict(weights)


def evaluate(
    weights: Mapping[str, np.ndarray], machine: SmdMachine, config: AnomalyConfig
) -> dict[str, float]:
    model = AnomalyModel.from_shared_weights(weights, machine.train, config=config)
    scores = model.score(machine.test)
    ds = detection_scores(scores >= model.threshold, machine.label)
    return {"f1": ds.f1, "f1_pa": ds.f1_pa, "auc_pr": average_precision(scores, machine.label)}


def mean_of(rows: Sequence[Mapping[str, float]], key: str) -> float:
    values = [r[key] for r in rows if math.isfinite(r[key])]
    return float(np.mean(values)) if values else math.nan


def evaluate_all(
    label: str,
    weights_of: Mapping[str, Mapping[str, np.ndarray]],
    orgs: Sequence[Organisation],
    config: AnomalyConfig,
    out: dict[str, float],
) -> None:
    rows: list[dict[str, float]] = []
    for org in orgs:
        org_rows = [evaluate(weights_of[org.name], m, config) for m in org.machines]
        rows += org_rows
        for key in ("f1", "f1_pa"):
            out[f"{label}_{key}_{org.name.replace('-', '_')}"] = mean_of(org_rows, key)
    for key in ("f1", "f1_pa", "auc_pr"):
        out[f"{label}_{key}"] = mean_of(rows, key)
    say(
        f"{label}: f1={out[f'{label}_f1']:.4f} f1_pa={out[f'{label}_f1_pa']:.4f} "
        f"auc_pr={out[f'{label}_auc_pr']:.4f} ({len(rows)} machines)"
    )


def federate(
    label: str,
    orgs: Sequence[Organisation],
    options: Mapping[str, Any],
    rounds: int,
    workdir: Path,
    out: dict[str, float],
    *,
    dp: DpConfig | None = None,
    secagg: bool = False,
) -> RunResult:
    rows = max(int(np.load(o.data_path)["train"].shape[0]) for o in orgs)
    started = time.perf_counter()
    result = run_federation(
        TASK_REF,
        [NodeSpec(name=o.name, data_path=o.data_path) for o in orgs],
        workdir=workdir / label,
        rounds=rounds,
        strategy="fedavg",
        dp=dp,
        secagg=SecAggConfig(max_weight=float(rows)) if secagg else False,  # weights by rows, uncapped
        task_options=options,
        local_epochs=1,
        timeout=3600.0,
    )
    if not result.ok:
        raise SystemExit(f"{label}: the federated run did not complete: {result.status} {result.details}")
    done = [r for r in result.rounds if r.elapsed_s > 0]
    out[f"{label}_round_s"] = float(np.mean([r.elapsed_s for r in done]))
    out[f"{label}_round_bytes"] = float(np.mean([r.bytes_sent + r.bytes_received for r in done]))
    out[f"{label}_round_wire_bytes"] = result.network.get("total", 0) / max(1, len(done))
    out[f"{label}_seconds"] = time.perf_counter() - started
    for r in result.rounds:
        say(
            f"{label} round {r.round}: train_loss={r.train_loss} eval_loss={r.eval_loss} "
            f"nodes={r.train_nodes} {r.elapsed_s:.1f}s {r.bytes_sent + r.bytes_received} bytes"
        )
    epsilon = result.privacy.get("epsilon")
    if epsilon is not None:
        out[f"{label}_epsilon"] = float(epsilon)
    return result


def _reload_fed(workdir: Path, seed: int) -> dict[str, np.ndarray] | None:
    """The final weights of the plain federated run of `seed` (for comparing SecAgg+'s)."""
    found = sorted((workdir / f"fed_s{seed}").glob("runs/run-*/result/final_weights.npz"))
    if not found:
        return None
    with np.load(found[-1]) as archive:
        return {k: archive[k] for k in archive.files}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=default_data_dir(), help="holds smd/ (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="federated rounds = epochs of local and central training"
    )
    parser.add_argument(
        "--organisations", type=int, default=3, help="how many organisations (default: %(default)s)"
    )
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument(
        "--seeds", default="0,1,2", help="training seeds; central, local and fed figures are means over them"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="keep the first N steps of each series (quick runs)"
    )
    parser.add_argument("--dp-noise", type=float, default=0.01, help="central DP noise multiplier")
    parser.add_argument(
        "--dp-clip", type=float, default=2.0, help="central DP clipping norm (L2 of an update)"
    )
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument("--skip-secagg", action="store_true")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keys, logs and data (default: a temporary folder)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write the figures here as one flat JSON object"
    )
    args = parser.parse_args(argv)

    config = AnomalyConfig(window=args.window, hidden=args.hidden)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if not seeds:
        raise SystemExit("--seeds names no seed")
    os.environ.setdefault("FOEDUS_TORCH_THREADS", "1")
    out: dict[str, float] = {
        "rounds": float(args.rounds),
        "window": float(config.window),
        "seeds": float(len(seeds)),
    }
    with tempfile.TemporaryDirectory(prefix="foedus-fed-eval-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        orgs = organisations(args.data_dir, workdir, config, args.organisations, args.limit)
        if len(orgs) < 2:
            raise SystemExit(f"need at least two SMD machine groups under {args.data_dir}")
        features = orgs[0].machines[0].train.shape[1]
        out["organisations"] = float(len(orgs))
        out["machines"] = float(sum(len(o.machines) for o in orgs))

        for seed in seeds:
            options = task_options(config, features, seed)
            started = time.perf_counter()
            central = train_in_process(options, [o.data_path for o in orgs], args.rounds)
            out[f"central_train_s_s{seed}"] = time.perf_counter() - started
            evaluate_all(
                f"central_s{seed}", dict.fromkeys((o.name for o in orgs), central), orgs, config, out
            )

            local = {o.name: train_in_process(options, [o.data_path], args.rounds) for o in orgs}
            evaluate_all(f"local_s{seed}", local, orgs, config, out)
            cross: list[dict[str, float]] = []
            for org in orgs:
                for other in orgs:
                    if other is not org:
                        cross += [evaluate(local[org.name], m, config) for m in other.machines]
            out[f"local_cross_s{seed}_f1"] = mean_of(cross, "f1")
            out[f"local_cross_s{seed}_f1_pa"] = mean_of(cross, "f1_pa")

            fed = federate(f"fed_s{seed}", orgs, options, args.rounds, workdir, out).final_weights()
            evaluate_all(f"fed_s{seed}", dict.fromkeys((o.name for o in orgs), fed), orgs, config, out)
        for mode in ("central", "local", "local_cross", "fed"):
            for key in ("f1", "f1_pa", "auc_pr"):
                values = [out[f"{mode}_s{seed}_{key}"] for seed in seeds if f"{mode}_s{seed}_{key}" in out]
                if values:
                    out[f"{mode}_{key}"] = float(np.mean(values))
                    out[f"{mode}_{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        for key in ("round_s", "round_bytes", "round_wire_bytes"):
            out[key] = float(np.mean([out[f"fed_s{seed}_{key}"] for seed in seeds]))

        first = seeds[0]
        options = task_options(config, features, first)
        if not args.skip_secagg:
            secagg = federate("secagg_fed", orgs, options, args.rounds, workdir, out, secagg=True)
            weights = secagg.final_weights()
            evaluate_all("secagg_fed", dict.fromkeys((o.name for o in orgs), weights), orgs, config, out)
            fed_first = _reload_fed(workdir, first)
            if fed_first is not None:  # the same seed without SecAgg+: quantisation is all that differs
                out["secagg_weight_max_abs_diff"] = max(
                    float(np.max(np.abs(weights[k] - fed_first[k]))) for k in weights
                )
        if not args.skip_dp:
            dp = DpConfig(mode="central-server", noise_multiplier=args.dp_noise, clipping_norm=args.dp_clip)
            out["dp_noise_multiplier"] = args.dp_noise
            out["dp_clipping_norm"] = args.dp_clip
            dp_weights = federate("dp_fed", orgs, options, args.rounds, workdir, out, dp=dp).final_weights()
            evaluate_all("dp_fed", dict.fromkeys((o.name for o in orgs), dp_weights), orgs, config, out)
            # the cost of the noise: against the federated run of the same seed without DP
            out["dp_f1_cost"] = out[f"fed_s{first}_f1"] - out["dp_fed_f1"]
            out["dp_f1_pa_cost"] = out[f"fed_s{first}_f1_pa"] - out["dp_fed_f1_pa"]

    for key in ("f1", "f1_pa"):
        out[f"fed_vs_central_{key}"] = out[f"fed_{key}"] / out[f"central_{key}"]
        out[f"fed_vs_local_{key}"] = out[f"fed_{key}"] / out[f"local_{key}"]
    print(json.dumps(out, indent=2, sort_keys=True))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
