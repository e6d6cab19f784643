"""Execution-provider selection: load an ONNX model on the fastest onnxruntime provider that agrees with CPU.

The agent serves each registered ONNX version with onnxruntime. Hosts differ (CUDA, TensorRT, ROCm,
OpenVINO, CoreML, DirectML or CPU only), so the provider is chosen at load time, by measurement:

1. a CPU session is built first; its outputs on a sample batch are the reference;
2. every other candidate gets its own session (``providers=[candidate, "CPUExecutionProvider"]``),
   is checked to really run on that provider (onnxruntime falls back to CPU silently when a provider
   cannot start), is timed, and its outputs are compared with the CPU reference;
3. the fastest accepted session by median latency is returned; CPU is always accepted, so a host
   whose accelerators fail to start or disagree with CPU still serves.

Every candidate's outcome is recorded in a :class:`ProviderTrial`, so ``foedus`` can say why a GPU
provider was rejected. On a CPU-only host only the CPU session is built and timed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = [
    "CPU_PROVIDER",
    "PROVIDER_PREFERENCE",
    "ModelLoadError",
    "ProviderChoice",
    "ProviderTrial",
    "default_candidates",
    "select_session",
    "synthetic_inputs",
]

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"

PROVIDER_PREFERENCE: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    CPU_PROVIDER,
)
"""Known providers, most preferred first. Only the order in which candidates are tried and listed
follows it: the choice itself is by measured latency."""

_ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}


class ModelLoadError(ValueError):
    """The file is not a model onnxruntime can load, or the model does not run on CPU."""


@dataclass(frozen=True)
class ProviderTrial:
    """What happened to one candidate provider."""

    provider: str
    ok: bool
    reason: str
    """Why the candidate was rejected; for an accepted one, a short note ("reference", "matches CPU")."""
    p50_ms: float | None = None
    """Median latency of one run of the sample batch; None when the candidate never ran."""
    p99_ms: float | None = None
    max_abs_deviation: float | None = None
    """Largest absolute difference of any numeric output from the CPU reference."""
    load_ms: float | None = None
    """Time to build the session (TensorRT, for one, compiles its engine here)."""


@dataclass(frozen=True)
class ProviderChoice:
    """The provider a model was loaded on, its measured latency and every candidate's outcome."""

    provider: str
    p50_ms: float
    p99_ms: float
    max_abs_deviation: float
    """Against the CPU reference; 0.0 when CPU itself was chosen."""
    trials: list[ProviderTrial] = field(default_factory=list)
    """Every candidate tried, CPU (the reference) first."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)


def default_candidates() -> list[str]:
    """The known providers this host's onnxruntime offers, in preference order (CPU always last)."""
    available = set(_host_providers())
    return [p for p in PROVIDER_PREFERENCE if p in available or p == CPU_PROVIDER]


def synthetic_inputs(session: Any, batch_size: int = 1, seed: int = 0) -> dict[str, npt.NDArray[Any]]:
    """A sample batch built from the session's input metadata.

    Dynamic (named or unknown) dimensions get ``batch_size``; floats are uniform in [0, 1), integers
    are zero (safe as indices), booleans random, strings "a". Raises ValueError for an input type it
    cannot build (pass ``sample_inputs`` for such models).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    feeds: dict[str, npt.NDArray[Any]] = {}
    for node in session.get_inputs():
        name = str(node.name)
        ort_type = str(node.type)
        dtype = _ORT_DTYPES.get(ort_type)
        if dtype is None:
            raise ValueError(
                f"cannot build a synthetic value for input {name!r} of type {ort_type}; pass sample_inputs"
            )
        shape = node.shape if node.shape is not None else []
        dims = [d if isinstance(d, int) and d > 0 else batch_size for d in shape]
        if dtype is np.str_:
            feeds[name] = np.full(dims, "a", dtype=object)
        elif dtype is np.bool_:
            feeds[name] = rng.random(dims) > 0.5
        elif np.issubdtype(dtype, np.floating):
            feeds[name] = rng.random(dims).astype(dtype)
        else:
            feeds[name] = np.zeros(dims, dtype=dtype)
    return feeds


def select_session(
    model_path: str | Path,
    *,
    candidates: Sequence[str] | None = None,
    sample_inputs: Mapping[str, npt.NDArray[Any]] | None = None,
    batch_size: int = 1,
    runs: int = 20,
    warmup: int = 3,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    threads: int | None = None,
    provider_options: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[ort.InferenceSession, ProviderChoice]:
    """Load ``model_path`` on the fastest provider whose outputs match CPU; see the module docstring.

    ``candidates`` defaults to :func:`default_candidates`. The CPU session is always built (it is the
    reference and the fallback), whether or not CPU is listed. ``sample_inputs`` default to
    :func:`synthetic_inputs` with ``batch_size``. Each candidate runs ``warmup`` untimed (at least one:
    its outputs are the ones compared) and then ``runs`` timed times. Floating outputs must satisfy ``np.allclose(candidate, cpu, rtol, atol)``; integer,
    boolean, string and non-tensor outputs must be equal. ``threads`` sets intra-op threads (None:
    onnxruntime's default). ``provider_options`` maps a provider name to its options (for example
    ``{"CUDAExecutionProvider": {"use_tf32": "0"}}``).

    Raises FileNotFoundError for a missing file, ModelLoadError (a ValueError) for a file onnxruntime
    cannot load or a model that does not run on CPU with the sample inputs, ValueError for bad arguments.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must not be negative, got {warmup}")
    if threads is not None and threads < 0:
        raise ValueError(f"threads must not be negative, got {threads}")
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    ordered = _ordered_candidates(default_candidates() if candidates is None else candidates)
    options = provider_options or {}

    start = time.perf_counter()
    try:
        cpu_session = _new_session(path, _session_options(threads), [CPU_PROVIDER], None)
    except Exception as exc:  # onnxruntime raises its own unrelated types for a bad file
        raise ModelLoadError(f"cannot load ONNX model {path}: {_first_line(exc)}") from exc
    cpu_load_ms = (time.perf_counter() - start) * 1000.0

    if sample_inputs is None:
        feeds = synthetic_inputs(cpu_session, batch_size)
    else:
        feeds = _checked_feeds(cpu_session, sample_inputs, path)
    output_names = [str(o.name) for o in cpu_session.get_outputs()]

    try:
        reference, cpu_p50, cpu_p99 = _measure(cpu_session, feeds, warmup, runs)
    except Exception as exc:
        raise ModelLoadError(f"ONNX model {path} does not run on {CPU_PROVIDER}: {_first_line(exc)}") from exc
    trials = [
        ProviderTrial(CPU_PROVIDER, True, "reference", cpu_p50, cpu_p99, 0.0, cpu_load_ms),
    ]
    best: tuple[Any, ProviderTrial] = (cpu_session, trials[0])
    best_p50 = cpu_p50
    host = _host_providers()

    for provider in ordered:
        if provider == CPU_PROVIDER:
            continue
        if provider not in host:
            reason = f"not available on this host (onnxruntime {ort.__version__} offers {', '.join(host)})"
            trials.append(ProviderTrial(provider, False, reason))
            continue
        session, trial = _try_candidate(
            path,
            provider,
            threads,
            options.get(provider),
            feeds,
            reference,
            output_names,
            warmup=warmup,
            runs=runs,
            rtol=rtol,
            atol=atol,
        )
        trials.append(trial)
        logger.debug("provider trial %s", trial)
        if session is not None and trial.p50_ms is not None and trial.p50_ms < best_p50:
            best, best_p50 = (session, trial), trial.p50_ms
        del session  # a rejected or slower accelerator session frees its device memory now

    session, trial = best
    choice = ProviderChoice(
        provider=trial.provider,
        p50_ms=float(trial.p50_ms or 0.0),
        p99_ms=float(trial.p99_ms or 0.0),
        max_abs_deviation=float(trial.max_abs_deviation or 0.0),
        trials=trials,
    )
    logger.info(
        "loaded %s on %s (p50 %.3f ms; %d candidate(s))",
        path.name,
        choice.provider,
        choice.p50_ms,
        len(trials),
    )
    return session, choice


def _try_candidate(
    path: Path,
    provider: str,
    threads: int | None,
    options: Mapping[str, str] | None,
    feeds: Mapping[str, Any],
    reference: list[Any],
    output_names: list[str],
    *,
    warmup: int,
    runs: int,
    rtol: float,
    atol: float,
) -> tuple[Any | None, ProviderTrial]:
    """Build, verify, time and compare one candidate. Never raises: a failure is a rejected trial."""
    start = time.perf_counter()
    captured = io.StringIO()
    try:
        # onnxruntime warns, or prints "EP Error ..." to stdout, and retries on CPU when a provider
        # cannot start; keep that text for the reason instead of letting it reach our stdout.
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(captured):
            warnings.simplefilter("always")
            provider_opts = [dict(options or {}), {}]
            session = _new_session(path, _session_options(threads), [provider, CPU_PROVIDER], provider_opts)
    except Exception as exc:
        return None, ProviderTrial(provider, False, f"session creation failed: {_first_line(exc)}")
    load_ms = (time.perf_counter() - start) * 1000.0
    active = [str(p) for p in session.get_providers()]
    if not active or active[0] != provider:
        notes = [line for line in captured.getvalue().splitlines() if "EP Error" in line]
        notes += [_first_line(w.message) for w in caught]
        detail = f": {notes[0]}" if notes else ""
        reason = f"onnxruntime fell back to {', '.join(active) or 'nothing'}{detail}"
        return None, ProviderTrial(provider, False, reason[:500], load_ms=load_ms)
    try:
        outputs, p50, p99 = _measure(session, feeds, warmup, runs)
    except Exception as exc:
        return None, ProviderTrial(provider, False, f"run failed: {_first_line(exc)}", load_ms=load_ms)
    deviation, mismatch = _compare(reference, outputs, output_names, rtol, atol)
    if mismatch is not None:
        return None, ProviderTrial(provider, False, mismatch, p50, p99, deviation, load_ms)
    return session, ProviderTrial(provider, True, "matches CPU", p50, p99, deviation, load_ms)


def _host_providers() -> list[str]:
    return [str(p) for p in ort.get_available_providers()]


def _new_session(
    path: Path,
    options: Any,
    providers: list[str],
    provider_options: list[dict[str, str]] | None,
) -> Any:
    return ort.InferenceSession(
        str(path), sess_options=options, providers=providers, provider_options=provider_options
    )


def _session_options(threads: int | None) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Fatal only: a failing run raises (and the agent answers INTERNAL and counts the error); ORT's
    # own copy of the message on stderr would only repeat it.
    options.log_severity_level = 4
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def _ordered_candidates(candidates: Sequence[str]) -> list[str]:
    """Known providers in preference order, then unknown names in the caller's order; no duplicates."""
    if isinstance(candidates, str):
        raise TypeError("candidates must be a sequence of provider names, not a string")
    given = list(dict.fromkeys(str(c) for c in candidates))
    known = [p for p in PROVIDER_PREFERENCE if p in given]
    return known + [p for p in given if p not in PROVIDER_PREFERENCE]


def _checked_feeds(session: Any, sample_inputs: Mapping[str, Any], path: Path) -> dict[str, Any]:
    expected = [str(i.name) for i in session.get_inputs()]
    missing = [n for n in expected if n not in sample_inputs]
    unknown = [n for n in sample_inputs if n not in expected]
    if missing or unknown:
        raise ValueError(
            f"sample_inputs do not match the inputs of {path.name} ({', '.join(expected)}): "
            f"missing {missing}, unknown {unknown}"
        )
    return {name: sample_inputs[name] for name in expected}


def _measure(
    session: Any, feeds: Mapping[str, Any], warmup: int, runs: int
) -> tuple[list[Any], float, float]:
    """Outputs of the first (warm-up) run, and p50/p99 in ms of ``runs`` timed runs after ``warmup``."""
    inputs = dict(feeds)
    outputs: list[Any] = list(session.run(None, inputs))
    for _ in range(warmup - 1):
        session.run(None, inputs)
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, inputs)
        times[i] = (time.perf_counter() - start) * 1000.0
    return outputs, float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _compare(
    reference: list[Any], outputs: list[Any], names: list[str], rtol: float, atol: float
) -> tuple[float, str | None]:
    """Max abs deviation over numeric outputs, and the first mismatch (None when all match)."""
    deviation = 0.0
    if len(reference) != len(outputs):
        return deviation, f"returned {len(outputs)} outputs, CPU returned {len(reference)}"
    for name, ref, out in zip(names, reference, outputs, strict=True):
        if not isinstance(ref, np.ndarray) or not isinstance(out, np.ndarray):
            if ref != out:
                return deviation, f"output {name!r} differs from CPU"
            continue
        if ref.shape != out.shape:
            return deviation, f"output {name!r} has shape {out.shape}, CPU gives {ref.shape}"
        numeric = ref.dtype.kind in "biufc" and out.dtype.kind in "biufc"
        if not numeric:
            if not np.array_equal(ref, out):
                return deviation, f"output {name!r} differs from CPU"
            continue
        dev = _max_abs_deviation(ref, out)
        deviation = max(deviation, dev)
        if ref.dtype.kind in "fc" or out.dtype.kind in "fc":
            if not np.allclose(out, ref, rtol=rtol, atol=atol, equal_nan=True):
                return deviation, (
                    f"output {name!r} differs from CPU beyond rtol={rtol:g}, atol={atol:g} "
                    f"(max abs deviation {dev:.3g})"
                )
        elif not np.array_equal(ref, out):
            return deviation, f"output {name!r} differs from CPU (max abs deviation {dev:.3g})"
    return deviation, None


def _max_abs_deviation(ref: npt.NDArray[Any], out: npt.NDArray[Any]) -> float:
    if ref.size == 0:
        return 0.0
    a = ref.astype(np.complex128 if ref.dtype.kind == "c" else np.float64)
    b = out.astype(np.complex128 if out.dtype.kind == "c" else np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    diff = np.where(same, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max())


def _first_line(exc: object) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
