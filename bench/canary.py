"""Canary analysis benchmark: Foedus's sequential tests against a Flagger-style check, on the same streams.

A deterministic simulator (seeded numpy generators, a fake clock in whole seconds) produces request
streams for a candidate and a stable version and feeds them to the real analysis code,
`foedus.server.rollouts.analysis.CanaryAnalysis`, one tick at a time, as the rollout controller does.

Streams (per second of simulated time, per version):
  * requests ~ Poisson(rate): candidate `--candidate-rps` (20), stable `--stable-rps` (180), i.e. a
    10% canary step; errors ~ Binomial(requests, error rate);
  * one latency per request, lognormal with median `--latency-median-ms` (20 ms) and log-sd
    `--latency-sigma` (0.5), put in the agents' buckets by the real
    `foedus.client_sdk.agent.histogram.latency_bucket_index`;
  * anomaly intervals: every 5 s each agent (1 for the candidate, 9 for the stable) closes an
    interval, flagged anomalous with probability `--anomaly-rate` (2%);
  * predictions: each request's prediction falls in one of 10 bins of the reference profile with
    fixed probabilities (the same for both versions);
  * the candidate reports 2 ms of CPU per request (evidence only).
The data of a tick (`--tick` seconds, default 5, the controller's default) becomes available at its
end; a rollback decided on tick k happens at time k * tick.

Scenarios, `--trials` (500) each, every trial a fresh pair of streams of `--horizon` seconds (600):
  * aa: a healthy candidate, identical to the stable version in every respect (errors, latency,
    anomalies, predictions). Any rollback is a false rollback, whatever the metric;
  * error: the candidate's error rate is `--bad-error-rate` (3%) instead of `--error-rate` (1%);
  * latency: a tail regression that keeps the median: the candidate's log-sd is raised so that its
    p99 is `--latency-factor` (1.5) times the stable's (sigma' = sigma + ln(1.5) / z_0.99; with the
    defaults 0.674 instead of 0.5, p99 96 ms instead of 64 ms, median 20 ms for both);
  * latency_scaled: every candidate latency is `--latency-factor` times slower (median and p99).
Everything else in a regression scenario is as in aa. A trial that never rolls back within the
horizon counts as "no rollback": the time to rollback (TTR) figures are medians and 90th percentiles
over all trials, with non-detections as +inf (left out of the JSON when the median is not reached),
next to the fraction detected.

Methods, on the same streams:
  * foedus: `CanaryAnalysis(AnalysisConfig())`, the default configuration: alpha 0.01 for all metrics
    together, error-rate margins 0 (H0 p_c <= p_s), latency margins 20%, all five metrics on. A
    rollback is the first tick whose verdict says regression.
  * foedus_margin0: the same with the latency margins at 0, run on the aa and latency scenarios: at
    the null hypothesis' boundary in aa, it shows how close the false-rollback rate gets to alpha.
  * flagger_t1 / flagger_t5: a Flagger-style analysis: every `--flagger-interval` (60) s it looks at
    the last 60 s of the candidate only; the check fails if the success rate is below 99%
    (`--flagger-success-min`) or the request-duration p99 over the interval is above the max. Flagger
    has no notion of a stable baseline, so the max is fixed by hand; here it is the stable version's
    true p99 times `--flagger-latency-factor` (1.2; 76.8 ms with the defaults), a generous setting that
    knows the truth. The p99 is estimated from the interval's bucket counts with
    `LatencyHistogram.quantile` (Flagger's Prometheus query does the same with histogram_quantile on
    its own buckets, interpolating linearly). As in Flagger's controller, failed checks
    are counted over the analysis (a passing check does not reset the count) and the canary is rolled
    back when the count reaches the threshold (1 and 5).
  * flagger_consec_t5: the same with consecutive failed checks (a passing check resets the count),
    a more lenient reading of the threshold, for comparison.

JSON (`--json PATH`): one flat object, names -> plain numbers (a median that is +inf is left out):
  * false_rollback_rate (aa, any metric) and false_rollback_rate_upper95 (95% Wilson upper bound),
    false_rollback_rate_margin0;
  * ttr_median_s_error, ttr_p90_s_error, detected_error, the same for _latency and _latency_scaled,
    and ttr_median_s_latency_margin0;
  * the same figures with the flagger_t1_, flagger_t5_ and flagger_consec_t5_ prefixes;
  * ttr_ratio_flagger_t1_vs_foedus_error (Flagger's median TTR / Foedus's; above 1, Foedus rolls back
    sooner) and the like for every Flagger variant and regression scenario;
  * flagger_check_fail_success_rate_<scenario>, flagger_check_fail_latency_<scenario>: the share of
    Flagger-style checks failing each criterion; fired_<scenario>_<method>_<metric>: the share of
    trials in which that Foedus metric declared the regression;
  * the configuration used (config_*: the default `AnalysisConfig`, margins included), the scenario
    parameters, `analysis_updates_per_s` (speed of `CanaryAnalysis.update` in this run), elapsed_s.

Run (from the repository root):

    .venv/bin/python bench/canary.py                          # 500 trials per scenario, table on stdout
    .venv/bin/python bench/canary.py --json /tmp/canary.json  # also one flat JSON object of numbers
    .venv/bin/python bench/canary.py --trials 100 --tick 10   # quicker, other tick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from foedus.client_sdk.agent.histogram import NUM_BUCKETS, LatencyHistogram, latency_bucket_index
from foedus.server.rollouts.analysis import AnalysisConfig, CanaryAnalysis, VersionWindow

Z99 = 2.3263478740408408
"""Standard normal 0.99-quantile."""
PREDICTION_BINS = np.array([0.22, 0.18, 0.14, 0.11, 0.09, 0.08, 0.07, 0.05, 0.04, 0.02])
ANOMALY_INTERVAL_S = 5
CANDIDATE_AGENTS = 1
STABLE_AGENTS = 9
CPU_S_PER_REQUEST = 0.002
SCENARIOS = ("aa", "error", "latency", "latency_scaled")
MARGIN0_SCENARIOS = ("aa", "latency")


def log(message: str) -> None:
    print(f"[canary {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class VersionModel:
    """How one version behaves: traffic, error rate, latency distribution."""

    rps: float
    error_rate: float
    latency_median_ms: float
    latency_sigma: float
    agents: int


@dataclass
class Stream:
    """Per-second counts of one version over the horizon."""

    requests: npt.NDArray[np.int64]  # (T,)
    errors: npt.NDArray[np.int64]  # (T,)
    latency: npt.NDArray[np.int64]  # (T, NUM_BUCKETS)
    intervals: npt.NDArray[np.int64]  # (T,)
    anomalous: npt.NDArray[np.int64]  # (T,)


def simulate(rng: np.random.Generator, model: VersionModel, horizon: int, anomaly_rate: float) -> Stream:
    requests = rng.poisson(model.rps, size=horizon).astype(np.int64)
    errors = rng.binomial(requests, model.error_rate).astype(np.int64)
    total = int(requests.sum())
    values = rng.lognormal(math.log(model.latency_median_ms), model.latency_sigma, size=total)
    second = np.repeat(np.arange(horizon), requests)
    flat = second * NUM_BUCKETS + latency_bucket_index(values)
    latency = (
        np.bincount(flat, minlength=horizon * NUM_BUCKETS).astype(np.int64).reshape(horizon, NUM_BUCKETS)
    )
    closes = (np.arange(1, horizon + 1) % ANOMALY_INTERVAL_S) == 0
    intervals = np.where(closes, model.agents, 0).astype(np.int64)
    anomalous = rng.binomial(intervals, anomaly_rate).astype(np.int64)
    return Stream(requests, errors, latency, intervals, anomalous)


def window_sums(a: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.int64]:
    """Sums over consecutive windows of `width` seconds (a trailing partial window is dropped)."""
    n = a.shape[0] // width
    return a[: n * width].reshape((n, width, *a.shape[1:])).sum(axis=1)


def run_foedus(
    config: AnalysisConfig,
    cand: Stream,
    stab: Stream,
    tick: int,
    rng: np.random.Generator,
    stop_early: bool,
) -> tuple[float, str, int]:
    """Time of the first regression verdict (inf if none), its metric, and the updates made."""
    c_req, s_req = window_sums(cand.requests, tick), window_sums(stab.requests, tick)
    c_err, s_err = window_sums(cand.errors, tick), window_sums(stab.errors, tick)
    c_lat, s_lat = window_sums(cand.latency, tick), window_sums(stab.latency, tick)
    c_int, s_int = window_sums(cand.intervals, tick), window_sums(stab.intervals, tick)
    c_ano, s_ano = window_sums(cand.anomalous, tick), window_sums(stab.anomalous, tick)
    # predictions: one per request, iid on the profile's bins, the same law for both versions
    c_pred = rng.multinomial(c_req, PREDICTION_BINS).astype(np.int64)
    s_pred = rng.multinomial(s_req, PREDICTION_BINS).astype(np.int64)
    analysis = CanaryAnalysis(config)
    for k in range(c_req.shape[0]):
        verdict = analysis.update(
            VersionWindow(
                requests=int(c_req[k]),
                errors=int(c_err[k]),
                latency=c_lat[k],
                predictions=c_pred[k],
                intervals=int(c_int[k]),
                anomalous_intervals=int(c_ano[k]),
                cpu_s_per_request=CPU_S_PER_REQUEST,
            ),
            VersionWindow(
                requests=int(s_req[k]),
                errors=int(s_err[k]),
                latency=s_lat[k],
                predictions=s_pred[k],
                intervals=int(s_int[k]),
                anomalous_intervals=int(s_ano[k]),
            ),
        )
        if verdict.regression and stop_early:
            return float((k + 1) * tick), verdict.metric, k + 1
    return math.inf, "", c_req.shape[0]


def run_flagger(
    cand: Stream, interval: int, success_min_pct: float, latency_max_ms: float
) -> tuple[npt.NDArray[np.float64], list[bool], int, int]:
    """Times of the checks, whether each failed (candidate only, last `interval` seconds), and how many
    checks failed the success rate and the latency criterion."""
    req = window_sums(cand.requests, interval)
    err = window_sums(cand.errors, interval)
    lat = window_sums(cand.latency, interval)
    failed = []
    success_failures = latency_failures = 0
    for k in range(req.shape[0]):
        if req[k] == 0:
            failed.append(True)  # Flagger fails a check that finds no data
            continue
        success_pct = 100.0 * (1.0 - err[k] / req[k])
        hist = LatencyHistogram.from_sparse(np.arange(NUM_BUCKETS), lat[k], sum_ms=0.0)
        bad_success = bool(success_pct < success_min_pct)
        bad_latency = bool(hist.quantile(0.99) > latency_max_ms)
        success_failures += bad_success
        latency_failures += bad_latency
        failed.append(bad_success or bad_latency)
    times = np.arange(1, req.shape[0] + 1, dtype=np.float64) * interval
    return times, failed, success_failures, latency_failures


def flagger_rollback_time(
    times: npt.NDArray[np.float64], failed: list[bool], threshold: int, consecutive: bool
) -> float:
    count = 0
    for t, f in zip(times, failed, strict=True):
        if f:
            count += 1
        elif consecutive:
            count = 0
        if count >= threshold:
            return float(t)
    return math.inf


def wilson_upper(successes: float, n: int, z: float = 1.959964) -> float:
    """Upper end of the 95% Wilson score interval of a proportion."""
    if n == 0:
        return 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + half) / (1 + z * z / n))


def summarise(ttr: list[float]) -> dict[str, float | None]:
    a = np.array(ttr, dtype=np.float64)

    def finite(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "median": finite(float(np.quantile(a, 0.5, method="lower"))) if a.size else None,
        "p90": finite(float(np.quantile(a, 0.9, method="higher"))) if a.size else None,
        "detected": float(np.mean(np.isfinite(a))) if a.size else 0.0,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    p = argparse.ArgumentParser(
        description=__doc__, epilog="Figures of a run: bench/README.md.", formatter_class=Formatter
    )
    p.add_argument("--trials", type=int, default=500, help="trials per scenario")
    p.add_argument("--seed", type=int, default=20240611, help="base seed: same seed, same figures")
    p.add_argument(
        "--tick", type=int, default=5, help="seconds per analysis tick (the controller's interval)"
    )
    p.add_argument("--horizon", type=int, default=600, help="seconds simulated per trial")
    p.add_argument("--candidate-rps", type=float, default=20.0, help="candidate requests per second")
    p.add_argument("--stable-rps", type=float, default=180.0, help="stable requests per second")
    p.add_argument("--error-rate", type=float, default=0.01, help="healthy error rate (both versions)")
    p.add_argument("--bad-error-rate", type=float, default=0.03, help="candidate error rate in 'error'")
    p.add_argument("--latency-median-ms", type=float, default=20.0, help="median latency (lognormal)")
    p.add_argument("--latency-sigma", type=float, default=0.5, help="log-sd of the lognormal latency")
    p.add_argument("--latency-factor", type=float, default=1.5, help="p99 factor of the latency regressions")
    p.add_argument("--anomaly-rate", type=float, default=0.02, help="chance an interval is flagged anomalous")
    p.add_argument("--flagger-interval", type=int, default=60, help="Flagger-style check interval (s)")
    p.add_argument("--flagger-success-min", type=float, default=99.0, help="minimum success rate (%%)")
    p.add_argument(
        "--flagger-latency-factor", type=float, default=1.2, help="p99 max = stable's true p99 x this factor"
    )
    p.add_argument("--json", type=Path, default=None, help="write the figures as one flat JSON object here")
    args = p.parse_args(argv)
    if args.trials < 1 or args.tick < 1 or args.horizon < max(args.tick, args.flagger_interval):
        p.error("need --trials >= 1, --tick >= 1 and --horizon at least one tick and one Flagger interval")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    config = AnalysisConfig()
    config_margin0 = replace(config, latency_p50_margin=0.0, latency_p99_margin=0.0)
    config.validate()
    stable = VersionModel(
        args.stable_rps, args.error_rate, args.latency_median_ms, args.latency_sigma, STABLE_AGENTS
    )
    healthy = replace(stable, rps=args.candidate_rps, agents=CANDIDATE_AGENTS)
    tail_sigma = args.latency_sigma + math.log(args.latency_factor) / Z99
    candidates: dict[str, VersionModel] = {
        "aa": healthy,
        "error": replace(healthy, error_rate=args.bad_error_rate),
        "latency": replace(healthy, latency_sigma=tail_sigma),
        "latency_scaled": replace(healthy, latency_median_ms=args.latency_median_ms * args.latency_factor),
    }
    stable_p99 = args.latency_median_ms * math.exp(args.latency_sigma * Z99)
    latency_max = stable_p99 * args.flagger_latency_factor
    flagger_methods: dict[str, Callable[[npt.NDArray[np.float64], list[bool]], float]] = {
        "flagger_t1": lambda t, f: flagger_rollback_time(t, f, 1, consecutive=False),
        "flagger_t5": lambda t, f: flagger_rollback_time(t, f, 5, consecutive=False),
        "flagger_consec_t5": lambda t, f: flagger_rollback_time(t, f, 5, consecutive=True),
    }
    ttr: dict[tuple[str, str], list[float]] = {}
    fired: dict[tuple[str, str], dict[str, int]] = {}
    checks: dict[str, list[int]] = {scenario: [0, 0, 0] for scenario in SCENARIOS}
    updates = 0
    analysis_seconds = 0.0
    for si, scenario in enumerate(SCENARIOS):
        t0 = time.perf_counter()
        model = candidates[scenario]
        methods = ["foedus", *(["foedus_margin0"] if scenario in MARGIN0_SCENARIOS else []), *flagger_methods]
        for m in methods:
            ttr[(scenario, m)] = []
            fired[(scenario, m)] = {}
        for trial in range(args.trials):
            rng = np.random.default_rng([args.seed, si, trial])
            cand = simulate(rng, model, args.horizon, args.anomaly_rate)
            stab = simulate(rng, stable, args.horizon, args.anomaly_rate)
            for m, cfg in (("foedus", config), ("foedus_margin0", config_margin0)):
                if m not in methods:
                    continue
                # the predictions are drawn from their own generator so both configs see the same ones
                pred_rng = np.random.default_rng([args.seed, si, trial, 1])
                a0 = time.perf_counter()
                t, metric, n = run_foedus(cfg, cand, stab, args.tick, pred_rng, stop_early=True)
                analysis_seconds += time.perf_counter() - a0
                updates += n
                ttr[(scenario, m)].append(t)
                if metric:
                    fired[(scenario, m)][metric] = fired[(scenario, m)].get(metric, 0) + 1
            times, failed, bad_success, bad_latency = run_flagger(
                cand, args.flagger_interval, args.flagger_success_min, latency_max
            )
            checks[scenario] = [
                a + b for a, b in zip(checks[scenario], (len(failed), bad_success, bad_latency), strict=True)
            ]
            for m, rule in flagger_methods.items():
                ttr[(scenario, m)].append(rule(times, failed))
            if (trial + 1) % max(1, args.trials // 5) == 0:
                log(f"{scenario}: {trial + 1}/{args.trials} trials ({time.perf_counter() - t0:.0f} s)")

    out: dict[str, float | None] = {}
    for (scenario, m), values in ttr.items():
        s = summarise(values)
        prefix = "" if m == "foedus" else ("" if m == "foedus_margin0" else f"{m}_")
        suffix = "_margin0" if m == "foedus_margin0" else ""
        if scenario == "aa":
            rate = s["detected"] or 0.0  # any rollback, by any metric
            out[f"{prefix}false_rollback_rate{suffix}"] = rate
            out[f"{prefix}false_rollback_rate{suffix}_upper95"] = wilson_upper(
                rate * len(values), len(values)
            )
            continue
        out[f"{prefix}ttr_median_s_{scenario}{suffix}"] = s["median"]
        out[f"{prefix}ttr_p90_s_{scenario}{suffix}"] = s["p90"]
        out[f"{prefix}detected_{scenario}{suffix}"] = s["detected"]
    for fl in flagger_methods:
        for scenario in SCENARIOS[1:]:
            ours = out.get(f"ttr_median_s_{scenario}")
            theirs = out.get(f"{fl}_ttr_median_s_{scenario}")
            ratio = None
            if ours is not None and theirs is not None and ours > 0:
                ratio = theirs / ours
            out[f"ttr_ratio_{fl}_vs_foedus_{scenario}"] = ratio
    for scenario, (n_checks, bad_success, bad_latency) in checks.items():
        out[f"flagger_check_fail_success_rate_{scenario}"] = bad_success / n_checks
        out[f"flagger_check_fail_latency_{scenario}"] = bad_latency / n_checks
    for (scenario, m), counts in fired.items():
        for metric, count in counts.items():
            out[f"fired_{scenario}_{m}_{metric}"] = count / args.trials
    out.update(
        {
            "config_alpha": config.alpha,
            "config_error_rate_ratio_margin": config.error_rate_ratio_margin,
            "config_error_rate_points_margin": config.error_rate_points_margin,
            "config_latency_p99_margin": config.latency_p99_margin,
            "config_latency_p50_margin": config.latency_p50_margin,
            "config_latency_p99_effective_margin": config.effective_latency_margin("latency_p99"),
            "config_drift_psi_margin": config.drift_psi_margin,
            "config_prior_center": config.prior_center,
            "config_prior_log_sd": config.prior_log_sd,
            "config_odds_ratio_grid_size": config.odds_ratio_grid_size,
            "trials": args.trials,
            "seed": args.seed,
            "tick_s": args.tick,
            "horizon_s": args.horizon,
            "candidate_rps": args.candidate_rps,
            "stable_rps": args.stable_rps,
            "error_rate": args.error_rate,
            "bad_error_rate": args.bad_error_rate,
            "latency_median_ms": args.latency_median_ms,
            "latency_sigma": args.latency_sigma,
            "latency_tail_sigma": tail_sigma,
            "stable_true_p99_ms": stable_p99,
            "flagger_latency_max_ms": latency_max,
            "flagger_interval_s": args.flagger_interval,
            "flagger_success_min_pct": args.flagger_success_min,
            "analysis_updates_per_s": updates / analysis_seconds if analysis_seconds > 0 else 0.0,
            "elapsed_s": time.perf_counter() - started,
            "cpu_count": os.cpu_count() or 0,
        }
    )
    print_table(out, args)
    if args.json is not None:
        numbers = {k: v for k, v in out.items() if v is not None}  # a median never reached is left out
        args.json.write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
        log(f"wrote {args.json}")
    return 0


def print_table(out: dict[str, float | None], args: argparse.Namespace) -> None:
    def fmt(x: float | None, unit: str = "") -> str:
        if x is None:
            return "never (>50%)"
        return f"{x:.0f}{unit}" if unit == " s" else f"{x:.3f}"

    rows = [
        ("Foedus (default)", ""),
        ("Flagger-style, threshold 1", "flagger_t1_"),
        ("Flagger-style, threshold 5", "flagger_t5_"),
        ("Flagger-style, 5 consecutive", "flagger_consec_t5_"),
    ]
    print(
        f"\nCanary analysis, {args.trials} trials per scenario, tick {args.tick} s, horizon {args.horizon} s, "
        f"candidate {args.candidate_rps:g} req/s vs stable {args.stable_rps:g} req/s"
    )
    header = f"{'method':<30} {'false rollbacks':>16} | {'error 1%->3%':>22} | {'p99 x1.5 (tail)':>22} | {'all x1.5':>22}"
    print(header)
    print(
        f"{'':<30} {'(A/A, 95% upper)':>16} | {'median s, p90, found':>22} | {'median s, p90, found':>22} | {'':>22}"
    )
    print("-" * len(header))
    for name, prefix in rows:
        cells = []
        for scenario in SCENARIOS[1:]:
            med = out.get(f"{prefix}ttr_median_s_{scenario}")
            p90 = out.get(f"{prefix}ttr_p90_s_{scenario}")
            det = out.get(f"{prefix}detected_{scenario}") or 0.0
            cells.append(f"{fmt(med, ' s'):>8} {fmt(p90, ' s'):>6} {100 * det:5.1f}%")
        far = out.get(f"{prefix}false_rollback_rate") or 0.0
        far_hi = out.get(f"{prefix}false_rollback_rate_upper95") or 0.0
        far_cell = f"{100 * far:.1f}% (<{100 * far_hi:.1f}%)"
        print(f"{name:<30} {far_cell:>16} | {cells[0]:>22} | {cells[1]:>22} | {cells[2]:>22}")
    far0 = out.get("false_rollback_rate_margin0") or 0.0
    far0_hi = out.get("false_rollback_rate_margin0_upper95") or 0.0
    med0 = out.get("ttr_median_s_latency_margin0")
    far0_cell = f"{100 * far0:.1f}% (<{100 * far0_hi:.1f}%)"
    print(
        f"{'Foedus, latency margins 0':<30} {far0_cell:>16} | {'':>22} | "
        f"{fmt(med0, ' s'):>8} {fmt(out.get('ttr_p90_s_latency_margin0'), ' s'):>6} "
        f"{100 * (out.get('detected_latency_margin0') or 0.0):5.1f}% |"
    )
    print(
        f"\nFoedus config: alpha {out['config_alpha']}, error margins ratio {out['config_error_rate_ratio_margin']} "
        f"points {out['config_error_rate_points_margin']}, latency margins {out['config_latency_p99_margin']} "
        f"(tested on bucket edges: {out['config_latency_p99_effective_margin']:.3f}); Flagger-style p99 max "
        f"{out['flagger_latency_max_ms']:.1f} ms (stable's true p99 {out['stable_true_p99_ms']:.1f} ms x "
        f"{args.flagger_latency_factor}), success rate >= {args.flagger_success_min}%"
    )
    print(
        "Flagger-style checks on healthy candidates (A/A) that fail: success rate "
        f"{100 * (out['flagger_check_fail_success_rate_aa'] or 0.0):.1f}%, p99 "
        f"{100 * (out['flagger_check_fail_latency_aa'] or 0.0):.1f}% of the checks"
    )
    fired = sorted((k, v) for k, v in out.items() if k.startswith("fired_") and v)
    print("Metrics that fired first (fraction of trials): " + ", ".join(f"{k[6:]} {v:.3f}" for k, v in fired))
    print(
        f"analysis updates/s: {out['analysis_updates_per_s']:.0f}; elapsed {out['elapsed_s']:.0f} s "
        f"on {out['cpu_count']:.0f} cores"
    )


if __name__ == "__main__":
    sys.exit(main())
