"""Device check of the agent's execution-provider selection (foedus.client_sdk.agent.providers).

Runs on any host, GPU or not, without installing foedus: it needs only numpy, onnxruntime and torch
(or the onnx package, to build the models without torch). It prints onnxruntime's version and the
providers it offers, builds a small MLP and a large one (hidden 4096, batch 256, so an accelerator can
win), runs select_session on each and reports every candidate's trial and the choice: a readable table
on stderr, JSON on stdout, and the same JSON in $OUT/providers.json when $OUT is set.

When CUDA is offered the large model is also tried with TF32 off (onnxruntime's CUDA provider uses
TF32 matmuls by default, which can exceed the default comparison tolerance against CPU).

Usage: python scripts/device_check_providers.py [--large-dim 4096] [--large-batch 256] [--runs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODULE_FILE = ROOT / "client_sdk" / "foedus" / "client_sdk" / "agent" / "providers.py"


def load_providers() -> tuple[ModuleType, str]:
    """The providers module: through the package when its dependencies are here, else from its file.

    Importing foedus.client_sdk.agent.providers runs foedus.client_sdk/__init__.py, which needs grpcio
    and protobuf; the module itself needs only numpy and onnxruntime, so it can be loaded on its own.
    """
    for folder in (ROOT / "proto", ROOT / "client_sdk"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        from foedus.client_sdk.agent import providers

        return providers, "package import"
    except ImportError as exc:
        name = "foedus_agent_providers"
        spec = importlib.util.spec_from_file_location(name, MODULE_FILE)
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
        return module, f"loaded from file ({exc})"


def mlp_torch(path: Path, dims: Sequence[int]) -> None:
    import torch

    torch.manual_seed(0)
    layers: list[Any] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    model = torch.nn.Sequential(*layers).eval()
    kwargs: dict[str, Any] = {
        "input_names": ["x"],
        "output_names": ["y"],
        "dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter needs no extra package (the dynamo one needs onnxscript)
            torch.onnx.export(model, (torch.zeros(1, dims[0]),), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch too old to know dynamo=
            torch.onnx.export(model, (torch.zeros(1, dims[0]),), str(path), **kwargs)


def mlp_onnx_helper(path: Path, dims: Sequence[int]) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes: list[Any] = []
    inits: list[Any] = []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        if i:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
        b = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def build_mlp(path: Path, dims: Sequence[int]) -> str:
    errors: list[str] = []
    builders: list[tuple[str, Callable[[Path, Sequence[int]], None]]] = [
        ("torch.onnx.export", mlp_torch),
        ("onnx.helper", mlp_onnx_helper),
    ]
    for name, builder in builders:
        try:
            builder(path, dims)
            return name
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[:1]}")
    raise RuntimeError("cannot build the test model: " + "; ".join(errors))


def host_info(ort: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort.__version__,
        "onnxruntime_package": _distribution_of_onnxruntime(),
        "available_providers": list(ort.get_available_providers()),
        "device": ort.get_device(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception as exc:
        info["torch"] = f"unavailable: {type(exc).__name__}: {exc}"
    return info


def _distribution_of_onnxruntime() -> str | None:
    from importlib import metadata

    for name in ("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino", "onnxruntime-directml"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def preload_cuda_libraries(ort: Any) -> str:
    """onnxruntime >= 1.21 can load CUDA/cuDNN from the nvidia-* wheels torch brought along."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "not needed (no CUDA provider)"
    if not hasattr(ort, "preload_dlls"):
        return "not offered by this onnxruntime"
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            ort.preload_dlls()
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    return "done"


def run_case(
    providers: ModuleType,
    name: str,
    path: Path,
    *,
    batch_size: int,
    runs: int,
    warmup: int,
    candidates: Sequence[str] | None = None,
    provider_options: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    case: dict[str, Any] = {
        "name": name,
        "model": path.name,
        "model_mb": round(path.stat().st_size / 2**20, 2),
        "batch_size": batch_size,
        "candidates": list(candidates) if candidates is not None else providers.default_candidates(),
        "provider_options": provider_options or {},
    }
    start = time.perf_counter()
    try:
        session, choice = providers.select_session(
            path,
            candidates=candidates,
            batch_size=batch_size,
            runs=runs,
            warmup=warmup,
            provider_options=provider_options,
        )
        case["session_providers"] = list(session.get_providers())
        case["choice"] = choice.as_dict()
        del session
    except Exception as exc:
        case["error"] = f"{type(exc).__name__}: {exc}"
        case["traceback"] = traceback.format_exc()
    case["elapsed_s"] = round(time.perf_counter() - start, 2)
    return case


def table(case: dict[str, Any]) -> str:
    head = f"== {case['name']} ({case['model']}, {case['model_mb']} MiB, batch {case['batch_size']})"
    if "error" in case:
        return f"{head}\n   ERROR {case['error']}"
    lines = [
        head,
        f"   {'provider':<28} {'ok':<5} {'load ms':>9} {'p50 ms':>10} {'p99 ms':>10} {'max dev':>10}  reason",
    ]

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for t in case["choice"]["trials"]:
        lines.append(
            f"   {t['provider']:<28} {t['ok']!s:<5} {num(t['load_ms'], '9.1f'):>9} {num(t['p50_ms'], '10.3f'):>10} "
            f"{num(t['p99_ms'], '10.3f'):>10} {num(t['max_abs_deviation'], '10.2g'):>10}  {t['reason']}"
        )
    choice = case["choice"]
    lines.append(
        f"   -> chosen {choice['provider']} (p50 {choice['p50_ms']:.3f} ms) in {case['elapsed_s']} s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--large-dim", type=int, default=4096, help="hidden width of the large MLP")
    parser.add_argument("--large-layers", type=int, default=3, help="linear layers of the large MLP")
    parser.add_argument("--large-batch", type=int, default=256, help="synthetic batch of the large MLP")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--no-preload", action="store_true", help="do not call onnxruntime.preload_dlls()")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with contextlib.suppress(Exception):
        import torch  # noqa: F401  (before onnxruntime: its CUDA libraries then serve onnxruntime too)
    import onnxruntime as ort

    report: dict[str, Any] = {"host": host_info(ort)}
    report["preload_dlls"] = "skipped" if args.no_preload else preload_cuda_libraries(ort)
    providers, how = load_providers()
    report["providers_module"] = how
    report["preference"] = list(providers.PROVIDER_PREFERENCE)
    print(
        f"onnxruntime {ort.__version__}; available providers: {ort.get_available_providers()}",
        file=sys.stderr,
        flush=True,
    )

    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="foedus-providers-") as tmp:
        small = Path(tmp) / "mlp_small.onnx"
        report["model_builder"] = build_mlp(small, [64, 256, 256, 10])
        cases.append(run_case(providers, "small", small, batch_size=1, runs=args.runs, warmup=args.warmup))
        print(table(cases[-1]), file=sys.stderr, flush=True)
        if not args.skip_large:
            large = Path(tmp) / "mlp_large.onnx"
            build_mlp(large, [args.large_dim] * (args.large_layers + 1))
            common: dict[str, Any] = {
                "batch_size": args.large_batch,
                "runs": args.runs,
                "warmup": args.warmup,
            }
            cases.append(run_case(providers, "large", large, **common))
            print(table(cases[-1]), file=sys.stderr, flush=True)
            if "CUDAExecutionProvider" in ort.get_available_providers():
                cases.append(
                    run_case(
                        providers,
                        "large, CUDA with use_tf32=0",
                        large,
                        candidates=["CUDAExecutionProvider", "CPUExecutionProvider"],
                        provider_options={"CUDAExecutionProvider": {"use_tf32": "0"}},
                        **common,
                    )
                )
                print(table(cases[-1]), file=sys.stderr, flush=True)
    report["cases"] = cases
    report["elapsed_s"] = round(time.perf_counter() - started, 2)

    text = json.dumps(report, indent=2, default=str)
    print(text, flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "providers.json").write_text(text + "\n")
    return 1 if any("error" in c for c in cases) else 0


if __name__ == "__main__":
    raise SystemExit(main())
