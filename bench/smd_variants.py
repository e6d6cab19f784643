"""Variants of the SMD anomaly model's design, side by side, each fitted on the same machines.

bench/ops_eval.py measures the model as shipped and bench/smd_thresholds.py other label-free
thresholds on its scores. This script asks whether another *design* would do better without
labels: other window lengths, normalisation, drift compensation, member combinations, several
seeds, and votes of several models. Every variant is fitted per machine on the unlabelled
``train`` series without the width / learning-rate search (width 128, learning rate 1e-3, so
that the variants differ only in what is named) and flags the test series at its own threshold
(median of the training score's daily maxima), through the drift compensation unless the variant
changes it:

* ``pair``: the default ensemble (windows 10 and 20), first seed (0); ``pair_s<k>``: the same, seed k;
* ``pair_w5`` / ``pair_w20``: the ensemble over windows 5 and 10 / 20 and 40;
* ``single``: one network over 10 steps;
* ``clip5``: normalised metrics clipped to +-5 instead of +-10;
* ``min_scale_0.05``: a feature's scale floored at 0.05 instead of 0.01;
* ``drift_blocks_<k>``: the compensation's level from the last k daily maxima instead of 5 (0: off);
* ``members_min``: an alarm only when every member's own compensated score reaches its own
  threshold (instead of their mean reaching the ensemble's);
* ``persist_<k>``: an alarm only when the score stays over the threshold for k steps (the
  threshold taken from the training score's k-step running minimum);
* ``seeds_mean``: the seeds' scores (each over its threshold) averaged; ``seeds_vote``: an alarm
  when most seeds flag the step;
* ``vote5``: an alarm when at least 3 of ``pair``, ``pair_w5``, ``pair_w20``, ``clip5`` and
  ``min_scale_0.05`` flag the step.

No variant uses a test label; ``best_trained_oracle`` does: per machine the best of the trained
variants, picked with the test labels, a bound on what choosing among them could give. The
variants are evaluated on the same machines the default was chosen on, so read differences of
a point or two as noise (seeds alone move the mean by that much).

    .venv/bin/python bench/smd_variants.py --json /tmp/smd-variants.json   # ~12 min on 2 cores
    .venv/bin/python bench/smd_variants.py --machines machine-1-5 machine-1-6 --seeds 0 1
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from smd_thresholds import machine_parser, machines_of, write_figures  # bench/smd_thresholds.py

from foedus.client_sdk.agent.compensation import DriftCompensation, compensated_scores, reference_levels
from foedus.federation.anomaly import AnomalyConfig, AnomalyModel, block_maxima_threshold
from foedus.federation.evaluation.metrics import detection_scores
from foedus.federation.evaluation.smd import SmdMachine, load_machine

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

TRAINED: dict[str, AnomalyConfig] = {
    "pair": AnomalyConfig(),
    "pair_w5": AnomalyConfig(window=5),
    "pair_w20": AnomalyConfig(window=20),
    "single": AnomalyConfig(members=1),
    "clip5": AnomalyConfig(clip=5.0),
    "min_scale_0.05": AnomalyConfig(min_scale=0.05),
}
VOTERS = ("pair", "pair_w5", "pair_w20", "clip5", "min_scale_0.05")


def running_min(x: FloatArray, k: int) -> FloatArray:
    """The minimum of each step's score and the k - 1 before it."""
    out = x.copy()
    for lag in range(1, k):
        out[lag:] = np.minimum(out[lag:], x[:-lag])
    return out


def compensated(terms_train: FloatArray, terms_test: FloatArray, block: int, blocks: int) -> FloatArray:
    """Test scores through a drift compensation that has seen the training terms (plain sums for 0)."""
    state = (
        DriftCompensation(reference_levels(terms_train, block), block=block, blocks=blocks)
        if blocks
        else None
    )
    return compensated_scores(state, terms_test, history=terms_train)


class Fitted:
    """One fitted variant's per-member terms on a machine, and the scores derived from them."""

    def __init__(self, config: AnomalyConfig, machine: SmdMachine, seed: int) -> None:
        model = AnomalyModel.fit(machine.train, config=config, search=False, seed=seed)
        self.block = config.calibration_block
        self.blocks = config.drift_blocks
        self.threshold = model.threshold
        weights = np.asarray(model.member_weights)[:, None, None]
        self.member_train = model.member_feature_scores(machine.train)
        self.member_test = model.member_feature_scores(machine.test)
        self.train = (weights * self.member_train).sum(axis=0)
        self.test = (weights * self.member_test).sum(axis=0)

        self.compensated = compensated(self.train, self.test, self.block, self.blocks)
        """The test scores as an agent reports them (through the model's own drift compensation)."""

    def score(self, blocks: int) -> FloatArray:
        """The test scores through a drift compensation over `blocks` days (0: none)."""
        return compensated(self.train, self.test, self.block, blocks)

    def flags(self) -> BoolArray:
        return self.compensated >= self.threshold

    def members_min(self) -> BoolArray:
        ratios = [
            compensated(tr, te, self.block, self.blocks) / block_maxima_threshold(tr.sum(axis=1), self.block)
            for tr, te in zip(self.member_train, self.member_test, strict=True)
        ]
        return np.min(ratios, axis=0) >= 1.0

    def persist(self, k: int) -> BoolArray:
        train = running_min(self.train.sum(axis=1), k)
        return running_min(self.compensated, k) >= block_maxima_threshold(train, self.block)


def machine_flags(machine: SmdMachine, seeds: Sequence[int]) -> dict[str, BoolArray]:
    """Every variant's flags over the machine's test series."""
    fitted = {name: Fitted(config, machine, seeds[0]) for name, config in TRAINED.items()}
    flags = {name: f.flags() for name, f in fitted.items()}
    pair = fitted["pair"]
    for k in (3, 2, 0):
        flags[f"drift_blocks_{k}"] = pair.score(blocks=k) >= pair.threshold
    flags["members_min"] = pair.members_min()
    for k in (2, 3):
        flags[f"persist_{k}"] = pair.persist(k)
    runs = [pair] + [Fitted(TRAINED["pair"], machine, seed) for seed in seeds[1:]]
    for seed, run in zip(seeds[1:], runs[1:], strict=True):
        flags[f"pair_s{seed}"] = run.flags()
    if len(runs) > 1:
        flags["seeds_mean"] = np.mean([r.compensated / r.threshold for r in runs], axis=0) >= 1.0
        flags["seeds_vote"] = np.sum([r.flags() for r in runs], axis=0) * 2 > len(runs)
    flags["vote5"] = np.sum([flags[name] for name in VOTERS], axis=0) >= 3
    return flags


def main(argv: list[str] | None = None) -> int:
    parser = machine_parser(
        "bench/smd_variants.py", "Design variants of the SMD anomaly model, each fitted on the same machines."
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="seeds of the default pair; the first also fits every other design (%(default)s)",
    )
    args = parser.parse_args(argv)
    found = machines_of(args)
    if found is None:
        return 2
    data_dir, names = found
    started = time.perf_counter()
    figures: dict[str, dict[str, list[float]]] = {}
    for name in names:
        machine = load_machine(data_dir, name)
        best = 0.0
        for variant, pred in machine_flags(machine, args.seeds).items():
            scores = detection_scores(pred, machine.label)
            entry = figures.setdefault(variant, {"f1_pa": [], "f1": []})
            entry["f1_pa"].append(scores.f1_pa)
            entry["f1"].append(scores.f1)
            if variant in TRAINED:
                best = max(best, scores.f1_pa)
        figures.setdefault("best_trained_oracle", {"f1_pa": [], "f1": []})["f1_pa"].append(best)
        print(
            f"{name}: pair f1_pa {figures['pair']['f1_pa'][-1]:.3f} ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    out: dict[str, float] = {}
    print(f"\n{len(names)} SMD machines, no search; means over machines; per machine F1 (PA) in order:")
    print(f"  {' '.join(names)}")
    print(f"{'variant':20} {'F1 (PA)':>8} {'F1':>7}  per machine")
    for variant, entry in figures.items():
        pa = float(np.mean(entry["f1_pa"]))
        plain = float(np.mean(entry["f1"])) if entry["f1"] else math.nan
        per_machine = " ".join(f"{v:.2f}" for v in entry["f1_pa"])
        print(f"{variant:20} {pa:8.3f} {plain:7.3f}  {per_machine}")
        out[f"{variant}_f1_pa"] = pa
        out[f"{variant}_f1"] = plain
    out["machines"] = float(len(names))
    out["seconds"] = time.perf_counter() - started
    write_figures(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
