"""Federated vs local-only vs centralised training of the ops models, on real data split into organisations.

Anomaly model, on the Server Machine Dataset. Its machine groups play organisations; the data here
holds groups 1 and 2 (14 machines), so the machines in name order are cut into three runs of
neighbouring servers (5, 5 and 4 machines). Each machine's training series is normalised with its
own robust centre and scale (`foedus.federation.anomaly.normalised_series`, what a site's detector
does) and an organisation's machines are stacked into its local data set. Then, with the same
network, optimiser and batches (the federated task's own training step):

* **local**: each organisation trains alone on its own machines for ``epochs`` epochs;
* **central**: one network trained on every organisation's data pooled for ``epochs`` epochs, the
  reference federation must approach without pooling;
* **fed**: Flower's deployment engine, a SuperLink and one SuperNode per organisation as real
  processes with TLS and SuperNode authentication, ``rounds`` rounds of FedAvg (``--strategy``:
  FedProx with ``--proximal-mu``, or FedAdam) with
  ``local_epochs`` local epochs each (defaults 5 and 1: every row is seen as often as in
  pooled training);
* **secagg_fed**: the same with SecAgg+ secure aggregation (Flower's legacy workflow), first seed;
* **dp_fed**: the same with differential privacy, first seed: by default record-level DP-SGD at
  every node (``--dp-mode record``: each training window's gradient clipped, Gaussian noise on
  their sum, Poisson sampling; ε by the Rényi accountant), or central DP (server- or client-side
  fixed clipping of whole updates); the ε after all rounds reported (``dp_fed_epsilon``).

Every resulting network is evaluated on every machine of every organisation: the machine's
detector is `AnomalyModel.from_shared_weights` (the machine's own normalisation and block-maxima
threshold from its training series; no label chooses anything), and its test steps are scored
with F1 with and without point adjustment, and AUC-PR. ``local_*`` evaluates each organisation's
own model on its own machines (what an organisation alone would run); ``local_cross_*`` its
model on the other organisations' machines. Means are over machines, then over ``seeds``
(``*_sd``: the standard deviation over seeds).

Resource model, on the Bitbrains VMs cut into ``resource_organisations`` organisations: per VM the
first 70% trains, the rest tests; local / central / fed as above with the resource model's
federated task; scored by the mean pinball loss of the p50 and p90 of the next hour's CPU and
memory peaks and by the p90s' coverage (0.9 is calibrated), means over organisations.

Also reported: each federated run's mean round time (``round_s``: wall-clock seconds of a round,
training and evaluation), and bytes per round: record payloads both ways as Flower counts them
(``round_bytes``) and the SuperLink's own count of bytes on the wire (``round_wire_bytes``, TLS
and HTTP included).

    python bench/federation_eval.py [--data-dir DIR] [--epochs 5] [--rounds 5] [--seeds 0,1] [--json PATH]
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
    local_epochs: int = 1,
    strategy: str = "fedavg",
    proximal_mu: float = 0.0,
) -> RunResult:
    rows = max(int(np.load(o.data_path)["train"].shape[0]) for o in orgs)
    started = time.perf_counter()
    result = run_federation(
        TASK_REF,
        [NodeSpec(name=o.name, data_path=o.data_path) for o in orgs],
        workdir=workdir / label,
        rounds=rounds,
        strategy=strategy,
        proximal_mu=proximal_mu,
        dp=dp,
        secagg=SecAggConfig(max_weight=float(rows)) if secagg else False,  # weights by rows, uncapped
        task_options=options,
        local_epochs=local_epochs,
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


RESOURCE_TASK_REF = "foedus.federation.resources:federated_task"


def resource_evaluation(args: argparse.Namespace, workdir: Path, out: dict[str, float]) -> None:
    """The resource model on Bitbrains VMs split into organisations: pinball loss and p90 coverage
    of the next hour's CPU and memory peaks on each organisation's test period."""
    import torch

    from foedus.federation.evaluation.bitbrains import load_bitbrains
    from foedus.federation.flower.task import set_weights
    from foedus.federation.resources import ResourceConfig, federated_rows, federated_task, quantile_metrics

    series = load_bitbrains(args.data_dir)
    config = ResourceConfig()
    n_in = len(config.feature_spec().names())
    parts = np.array_split(np.arange(len(series)), args.resource_organisations)
    orgs: list[tuple[str, Path, np.ndarray]] = []
    for number, idx in enumerate(parts, start=1):
        vms = [series[i] for i in idx]
        split = [round(len(s) * (1.0 - args.resource_test_fraction)) for s in vms]
        train = federated_rows(vms, config, [(0, b) for b in split])
        test = federated_rows(vms, config, [(b, len(s)) for b, s in zip(split, vms, strict=True)])
        path = workdir / f"vm-org-{number}.npz"
        np.savez(path, train=train)
        orgs.append((f"vm-org-{number}", path, test))
        say(f"vm-org-{number}: {len(vms)} VMs, {len(train)} training rows, {len(test)} test rows")
    options: dict[str, Any] = {"seed": 0}
    task = federated_task(seed=0)

    def scores(label: str, weights_of: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        rows = []
        for name, _, test in orgs:
            model = task.build()
            set_weights(model, weights_of[name])
            model.eval()
            with torch.no_grad():
                pred = model(torch.from_numpy(test[:, :n_in])).numpy()
            rows.append(quantile_metrics(pred, test[:, n_in:]))
        for key in ("pinball", "p90_coverage"):
            out[f"resource_{label}_{key}"] = float(np.mean([r[key] for r in rows]))
        say(
            f"resource {label}: pinball {out[f'resource_{label}_pinball']:.4f}, "
            f"p90 coverage {out[f'resource_{label}_p90_coverage']:.3f}"
        )

    def fit(paths: Sequence[Path]) -> dict[str, np.ndarray]:
        train = np.concatenate([np.load(p)["train"] for p in paths])
        data = LocalData(train=train)
        standardised, _ = task.train(task.initial_arrays(), data, epochs=1)  # sets the statistics only
        weights, _ = task.train(standardised, data, epochs=args.epochs)
        return dict(weights)

    central = fit([p for _, p, _ in orgs])
    scores("central", {name: central for name, _, _ in orgs})
    scores("local", {name: fit([path]) for name, path, _ in orgs})
    started = time.perf_counter()
    result = run_federation(
        RESOURCE_TASK_REF,
        [NodeSpec(name=name, data_path=path) for name, path, _ in orgs],
        workdir=workdir / "resource_fed",
        rounds=args.rounds + 1,  # the first round agrees on the standardisation
        strategy=args.strategy,
        proximal_mu=_mu(args),
        task_options=options,
        local_epochs=args.local_epochs,
        timeout=3600.0,
    )
    if not result.ok:
        raise SystemExit(f"resource federation did not complete: {result.status} {result.details}")
    fed = result.final_weights()
    scores("fed", {name: fed for name, _, _ in orgs})
    out["resource_fed_seconds"] = time.perf_counter() - started
    out["resource_round_s"] = float(np.mean([r.elapsed_s for r in result.rounds]))
    out["resource_round_bytes"] = float(np.mean([r.bytes_sent + r.bytes_received for r in result.rounds]))
    out["resource_organisations"] = float(len(orgs))
    out["resource_vms"] = float(len(series))
    out["resource_fed_vs_central_pinball"] = out["resource_fed_pinball"] / out["resource_central_pinball"]
    out["resource_fed_vs_local_pinball"] = out["resource_fed_pinball"] / out["resource_local_pinball"]


def anomaly_evaluation(
    args: argparse.Namespace,
    config: AnomalyConfig,
    seeds: Sequence[int],
    workdir: Path,
    out: dict[str, float],
) -> None:
    """Local, federated and pooled training of the anomaly model on SMD organisations (module notes)."""
    orgs = organisations(args.data_dir, workdir, config, args.organisations, args.limit)
    if len(orgs) < 2:
        raise SystemExit(f"need at least two SMD machine groups under {args.data_dir}")
    features = orgs[0].machines[0].train.shape[1]
    out["organisations"] = float(len(orgs))
    out["machines"] = float(sum(len(o.machines) for o in orgs))

    for seed in seeds:
        options = task_options(config, features, seed)
        started = time.perf_counter()
        central = train_in_process(options, [o.data_path for o in orgs], args.epochs)
        out[f"central_train_s_s{seed}"] = time.perf_counter() - started
        evaluate_all(f"central_s{seed}", dict.fromkeys((o.name for o in orgs), central), orgs, config, out)

        local = {o.name: train_in_process(options, [o.data_path], args.epochs) for o in orgs}
        evaluate_all(f"local_s{seed}", local, orgs, config, out)
        cross: list[dict[str, float]] = []
        for org in orgs:
            for other in orgs:
                if other is not org:
                    cross += [evaluate(local[org.name], m, config) for m in other.machines]
        out[f"local_cross_s{seed}_f1"] = mean_of(cross, "f1")
        out[f"local_cross_s{seed}_f1_pa"] = mean_of(cross, "f1_pa")

        fed = federate(
            f"fed_s{seed}", orgs, options, args.rounds, workdir, out, **_strategy_of(args)
        ).final_weights()
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
        secagg = federate(
            "secagg_fed",
            orgs,
            options,
            args.rounds,
            workdir,
            out,
            secagg=True,
            **_strategy_of(args),
        )
        weights = secagg.final_weights()
        evaluate_all("secagg_fed", dict.fromkeys((o.name for o in orgs), weights), orgs, config, out)
        fed_first = _reload_fed(workdir, first)
        if fed_first is not None:  # the same seed without SecAgg+: quantisation is all that differs
            out["secagg_weight_max_abs_diff"] = max(
                float(np.max(np.abs(weights[k] - fed_first[k]))) for k in weights
            )
    if not args.skip_dp:
        dp = DpConfig(
            mode=args.dp_mode,
            noise_multiplier=args.dp_noise,
            clipping_norm=args.dp_clip,
            sample_rate=args.dp_sample_rate,
        )
        out[f"dp_mode_{args.dp_mode.replace('-', '_')}"] = 1.0
        out["dp_noise_multiplier"] = args.dp_noise
        out["dp_clipping_norm"] = args.dp_clip
        if args.dp_mode == "record":
            out["dp_sample_rate"] = args.dp_sample_rate
        dp_weights = federate(
            "dp_fed", orgs, options, args.rounds, workdir, out, dp=dp, **_strategy_of(args)
        ).final_weights()
        evaluate_all("dp_fed", dict.fromkeys((o.name for o in orgs), dp_weights), orgs, config, out)
        # the cost of the noise: against the federated run of the same seed without DP
        out["dp_f1_cost"] = out[f"fed_s{first}_f1"] - out["dp_fed_f1"]
        out["dp_f1_pa_cost"] = out[f"fed_s{first}_f1_pa"] - out["dp_fed_f1_pa"]

    for key in ("f1", "f1_pa"):
        out[f"fed_vs_central_{key}"] = out[f"fed_{key}"] / out[f"central_{key}"]
        out[f"fed_vs_local_{key}"] = out[f"fed_{key}"] / out[f"local_{key}"]


def _mu(args: argparse.Namespace) -> float:
    return float(args.proximal_mu) if args.strategy == "fedprox" else 0.0


def _strategy_of(args: argparse.Namespace) -> dict[str, Any]:
    """`federate`'s strategy keywords from the command line."""
    return {"strategy": args.strategy, "proximal_mu": _mu(args), "local_epochs": args.local_epochs}


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
        "--epochs", type=int, default=5, help="epochs of local-only and pooled training (default %(default)s)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="federated rounds (default %(default)s: as many passes as --epochs)",
    )
    parser.add_argument("--local-epochs", type=int, default=1, help="local epochs per federated round")
    parser.add_argument(
        "--strategy",
        choices=("fedavg", "fedprox", "fedadam"),
        default="fedavg",
        help="the federated runs' strategy (default %(default)s; SecAgg+ runs take fedavg or fedprox)",
    )
    parser.add_argument(
        "--proximal-mu", type=float, default=0.01, help="FedProx's proximal weight (default %(default)s)"
    )
    parser.add_argument(
        "--organisations", type=int, default=3, help="how many organisations (default: %(default)s)"
    )
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument(
        "--seeds", default="0,1", help="training seeds; central, local and fed figures are means over them"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="keep the first N steps of each series (quick runs)"
    )
    parser.add_argument(
        "--dp-mode",
        choices=("record", "central-server", "central-client"),
        default="record",
        help="the DP run's mode (default %(default)s: DP-SGD at every node, a guarantee per training "
        "window of each organisation; central modes protect whole organisations)",
    )
    parser.add_argument(
        "--dp-noise", type=float, default=1.0, help="DP noise multiplier (default %(default)s)"
    )
    parser.add_argument(
        "--dp-clip",
        type=float,
        default=1.0,
        help="DP clipping norm: of a row's gradient (record) or of a node's update (central) "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--dp-sample-rate",
        type=float,
        default=0.002,
        help="record mode: each row's chance to be in a DP-SGD step (default %(default)s)",
    )
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument("--skip-anomaly", action="store_true", help="only the resource model")
    parser.add_argument("--skip-resource", action="store_true", help="only the anomaly model")
    parser.add_argument("--resource-organisations", type=int, default=3)
    parser.add_argument("--resource-test-fraction", type=float, default=0.3)
    parser.add_argument("--skip-secagg", action="store_true")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keys, logs and data (default: a temporary folder)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write the figures here as one flat JSON object"
    )
    args = parser.parse_args(argv)

    if args.strategy == "fedadam" and not args.skip_secagg and not args.skip_anomaly:
        parser.error("SecAgg+ runs take fedavg or fedprox only: add --skip-secagg to measure fedadam")
    if args.strategy == "fedprox" and args.proximal_mu <= 0:
        parser.error("--proximal-mu must be positive for fedprox")
    config = AnomalyConfig(window=args.window, hidden=args.hidden)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if not seeds:
        raise SystemExit("--seeds names no seed")
    os.environ.setdefault("FOEDUS_TORCH_THREADS", "1")
    out: dict[str, float] = {
        "epochs": float(args.epochs),
        "local_epochs": float(args.local_epochs),
        "rounds": float(args.rounds),
        f"strategy_{args.strategy}": 1.0,
        "proximal_mu": _mu(args),
        "window": float(config.window),
        "seeds": float(len(seeds)),
    }
    with tempfile.TemporaryDirectory(prefix="foedus-fed-eval-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if not args.skip_anomaly:
            anomaly_evaluation(args, config, seeds, workdir, out)
        if not args.skip_resource:
            resource_evaluation(args, workdir, out)
    print(json.dumps(out, indent=2, sort_keys=True))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
