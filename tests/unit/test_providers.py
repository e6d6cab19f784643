"""The agent's execution-provider selection, on real ONNX models (a torch MLP, a skl2onnx classifier).

This host has onnxruntime's CPU build, so accelerators are simulated where a test needs one: the
module's host-provider list is widened, and for the choice and comparison logic an "accelerator"
session wraps a real CPU session (optionally perturbing its outputs or slowing the CPU reference).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from foedus.client_sdk.agent import providers
from foedus.client_sdk.agent.providers import (
    CPU_PROVIDER,
    PROVIDER_PREFERENCE,
    ModelLoadError,
    ProviderChoice,
    select_session,
    synthetic_inputs,
)

CUDA = "CUDAExecutionProvider"


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small torch MLP (8 -> 16 -> 3) exported with a dynamic batch dimension."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it needs no extra package
        torch.onnx.export(
            model,
            (torch.zeros(1, 8),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logistic regression via skl2onnx: an int64 label output and a float probability output."""
    from foedus_testdata import iris_onnx

    return Path(iris_onnx(tmp_path_factory.mktemp("models")))


class FakeAccelerator:
    """A real CPU session that reports `provider`, optionally perturbing outputs or sleeping per run."""

    def __init__(self, inner: Any, provider: str, *, perturb: float = 0.0, flip_labels: bool = False) -> None:
        self.inner = inner
        self.provider = provider
        self.perturb = perturb
        self.flip_labels = flip_labels
        self.delay_s = 0.0
        self.feeds: list[dict[str, Any]] = []

    def get_providers(self) -> list[str]:
        return [self.provider, CPU_PROVIDER]

    def get_inputs(self) -> Any:
        return self.inner.get_inputs()

    def get_outputs(self) -> Any:
        return self.inner.get_outputs()

    def run(self, names: Any, feeds: dict[str, Any]) -> list[Any]:
        self.feeds.append(feeds)
        if self.delay_s:
            time.sleep(self.delay_s)
        outputs = list(self.inner.run(names, feeds))
        for i, out in enumerate(outputs):
            if isinstance(out, np.ndarray) and out.dtype.kind == "f" and self.perturb:
                outputs[i] = out + np.asarray(self.perturb, dtype=out.dtype)
            elif isinstance(out, np.ndarray) and out.dtype.kind == "i" and self.flip_labels:
                outputs[i] = out + 1
        return outputs


SessionFactory = Callable[[Path, Any, list[str], Any], Any]


def _simulate(
    monkeypatch: pytest.MonkeyPatch, host: list[str], make: Callable[[Any, str], Any]
) -> dict[str, Any]:
    """Claim `host` providers; each session is `make(real_cpu_session, requested_provider)`."""
    real_new_session: SessionFactory = providers._new_session
    built: dict[str, Any] = {}

    def fake_new_session(path: Path, options: Any, requested: list[str], provider_options: Any) -> Any:
        session = make(real_new_session(path, options, [CPU_PROVIDER], None), requested[0])
        built[requested[0]] = session
        return session

    monkeypatch.setattr(providers, "_host_providers", lambda: list(host))
    monkeypatch.setattr(providers, "_new_session", fake_new_session)
    return built


def _no_real_cuda() -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this host's onnxruntime really offers CUDA")


def test_preference_order_lists_known_providers_cpu_last() -> None:
    assert PROVIDER_PREFERENCE[0] == "TensorrtExecutionProvider"
    assert PROVIDER_PREFERENCE[-1] == CPU_PROVIDER
    assert {"CUDAExecutionProvider", "ROCMExecutionProvider", "OpenVINOExecutionProvider"} <= set(
        PROVIDER_PREFERENCE
    )
    assert {"CoreMLExecutionProvider", "DmlExecutionProvider"} <= set(PROVIDER_PREFERENCE)


def test_default_candidates_are_host_providers_in_preference_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        providers,
        "_host_providers",
        lambda: ["AzureExecutionProvider", CPU_PROVIDER, CUDA, "TensorrtExecutionProvider"],
    )
    assert providers.default_candidates() == ["TensorrtExecutionProvider", CUDA, CPU_PROVIDER]


def test_cpu_only_host_selects_cpu_and_lists_its_trial(
    mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(providers, "_host_providers", lambda: [CPU_PROVIDER])
    session, choice = select_session(mlp_onnx)
    assert choice.provider == CPU_PROVIDER
    assert session.get_providers()[0] == CPU_PROVIDER
    assert [t.provider for t in choice.trials] == [CPU_PROVIDER]
    trial = choice.trials[0]
    assert trial.ok
    assert trial.p50_ms is not None and trial.p50_ms > 0
    assert choice.p50_ms == trial.p50_ms
    assert choice.p99_ms >= choice.p50_ms
    assert choice.max_abs_deviation == 0.0
    (y,) = session.run(None, {"x": np.ones((2, 8), dtype=np.float32)})
    assert y.shape == (2, 3)


def test_default_candidates_on_this_host_end_with_cpu(mlp_onnx: Path) -> None:
    _session, choice = select_session(mlp_onnx, runs=3, warmup=1)
    assert choice.trials[0].provider == CPU_PROVIDER
    assert any(t.ok and t.provider == choice.provider for t in choice.trials)
    assert all(t.provider in PROVIDER_PREFERENCE for t in choice.trials)


def test_candidate_not_on_host_is_rejected_with_reason(mlp_onnx: Path) -> None:
    _no_real_cuda()
    session, choice = select_session(mlp_onnx, candidates=[CUDA, CPU_PROVIDER], runs=3, warmup=1)
    assert choice.provider == CPU_PROVIDER
    assert session.get_providers()[0] == CPU_PROVIDER
    by_name = {t.provider: t for t in choice.trials}
    assert set(by_name) == {CPU_PROVIDER, CUDA}
    assert not by_name[CUDA].ok
    assert "not available" in by_name[CUDA].reason
    assert by_name[CUDA].p50_ms is None


def test_cpu_is_reference_and_fallback_even_when_not_listed(mlp_onnx: Path) -> None:
    _no_real_cuda()
    _session, choice = select_session(mlp_onnx, candidates=[CUDA], runs=3, warmup=1)
    assert choice.provider == CPU_PROVIDER
    assert [t.provider for t in choice.trials] == [CPU_PROVIDER, CUDA]


def test_silent_onnxruntime_fallback_counts_as_rejection(
    mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider the host lists but cannot start: onnxruntime quietly runs on CPU instead."""
    _no_real_cuda()
    monkeypatch.setattr(providers, "_host_providers", lambda: [CUDA, CPU_PROVIDER])
    _session, choice = select_session(mlp_onnx, runs=3, warmup=1)  # default candidates now include CUDA
    assert choice.provider == CPU_PROVIDER
    cuda = next(t for t in choice.trials if t.provider == CUDA)
    assert not cuda.ok
    assert "fell back" in cuda.reason
    assert CPU_PROVIDER in cuda.reason


def test_session_creation_error_is_rejection_with_first_line(
    mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def make(inner: Any, provider: str) -> Any:
        if provider == CUDA:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected\ndetails follow")
        return inner

    _simulate(monkeypatch, [CUDA, CPU_PROVIDER], make)
    _session, choice = select_session(mlp_onnx, runs=3, warmup=1)
    assert choice.provider == CPU_PROVIDER
    cuda = next(t for t in choice.trials if t.provider == CUDA)
    assert not cuda.ok
    assert "no CUDA-capable device" in cuda.reason
    assert "details follow" not in cuda.reason


def test_accelerator_with_deviating_outputs_is_rejected(
    mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _simulate(
        monkeypatch,
        [CUDA, CPU_PROVIDER],
        lambda inner, p: FakeAccelerator(inner, p, perturb=1e-2) if p == CUDA else inner,
    )
    _session, choice = select_session(mlp_onnx, runs=3, warmup=1)
    assert choice.provider == CPU_PROVIDER
    cuda = next(t for t in choice.trials if t.provider == CUDA)
    assert not cuda.ok
    assert "'y'" in cuda.reason and "differs" in cuda.reason
    assert cuda.max_abs_deviation == pytest.approx(1e-2, rel=1e-2)
    assert cuda.p50_ms is not None  # it was timed, so the report can say what it would have gained


def test_deviation_within_tolerance_is_accepted(mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _simulate(
        monkeypatch,
        [CUDA, CPU_PROVIDER],
        lambda inner, p: FakeAccelerator(inner, p, perturb=1e-2) if p == CUDA else inner,
    )
    _session, choice = select_session(mlp_onnx, atol=5e-2, runs=3, warmup=1)
    cuda = next(t for t in choice.trials if t.provider == CUDA)
    assert cuda.ok
    assert cuda.max_abs_deviation == pytest.approx(1e-2, rel=1e-2)


def test_fastest_accepted_provider_is_chosen(mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(inner: Any, provider: str) -> Any:
        fake = FakeAccelerator(inner, provider)
        if provider == CPU_PROVIDER:
            fake.delay_s = 0.02  # the CPU reference is made far slower than the "accelerator"
        return fake

    built = _simulate(monkeypatch, [CUDA, CPU_PROVIDER], make)
    session, choice = select_session(mlp_onnx, runs=3, warmup=1)
    assert choice.provider == CUDA
    assert session is built[CUDA]
    assert all(t.ok for t in choice.trials)
    assert choice.max_abs_deviation == 0.0


def test_integer_label_output_must_match_exactly(iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _simulate(
        monkeypatch,
        [CUDA, CPU_PROVIDER],
        lambda inner, p: FakeAccelerator(inner, p, flip_labels=True) if p == CUDA else inner,
    )
    _session, choice = select_session(iris_model, atol=10.0, rtol=10.0, runs=3, warmup=1)
    assert choice.provider == CPU_PROVIDER
    cuda = next(t for t in choice.trials if t.provider == CUDA)
    assert not cuda.ok
    assert "label" in cuda.reason


def test_skl2onnx_model_with_int64_label_loads_on_cpu(iris_model: Path) -> None:
    session, choice = select_session(iris_model, runs=3, warmup=1)
    assert choice.provider in PROVIDER_PREFERENCE
    label, probabilities = session.run(None, {"input": np.zeros((3, 4), dtype=np.float32)})
    assert label.dtype == np.int64 and label.shape == (3,)
    assert probabilities.shape == (3, 3)


def test_dynamic_dims_get_synthetic_batch_of_one(mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = _simulate(monkeypatch, [CPU_PROVIDER], lambda inner, p: FakeAccelerator(inner, p))
    select_session(mlp_onnx, runs=3, warmup=1)
    feeds = built[CPU_PROVIDER].feeds
    assert feeds
    assert all(set(f) == {"x"} for f in feeds)
    assert all(f["x"].shape == (1, 8) and f["x"].dtype == np.float32 for f in feeds)


def test_batch_size_parameter_sizes_dynamic_dims(mlp_onnx: Path) -> None:
    session = ort.InferenceSession(str(mlp_onnx), providers=[CPU_PROVIDER])
    assert synthetic_inputs(session)["x"].shape == (1, 8)
    feeds = synthetic_inputs(session, batch_size=4)
    assert feeds["x"].shape == (4, 8)
    assert feeds["x"].dtype == np.float32
    with pytest.raises(ValueError, match="batch_size"):
        synthetic_inputs(session, batch_size=0)


def test_user_sample_inputs_are_used(mlp_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = _simulate(
        monkeypatch,
        [CUDA, CPU_PROVIDER],
        lambda inner, p: FakeAccelerator(inner, p),
    )
    sample = np.linspace(-1, 1, 5 * 8, dtype=np.float32).reshape(5, 8)
    select_session(mlp_onnx, sample_inputs={"x": sample}, runs=3, warmup=1)
    for provider in (CPU_PROVIDER, CUDA):
        feeds = built[provider].feeds
        assert feeds
        assert all(f["x"] is sample for f in feeds)


def test_sample_inputs_with_wrong_names_are_refused(mlp_onnx: Path) -> None:
    with pytest.raises(ValueError, match="missing \\['x'\\], unknown \\['z'\\]"):
        select_session(mlp_onnx, sample_inputs={"z": np.zeros((1, 8), dtype=np.float32)}, runs=3, warmup=1)


def test_sample_inputs_that_do_not_run_on_cpu_raise_model_load_error(mlp_onnx: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"mlp\.onnx"):
        select_session(mlp_onnx, sample_inputs={"x": np.zeros((1, 5), dtype=np.float32)}, runs=3, warmup=1)


def test_invalid_model_file_raises_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match=r"not-a-model\.onnx") as info:
        select_session(bad)
    assert isinstance(info.value, ValueError)


def test_missing_model_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx"):
        select_session(tmp_path / "absent.onnx")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"runs": 0}, "runs"), ({"warmup": -1}, "warmup"), ({"threads": -2}, "threads")],
)
def test_bad_arguments_are_refused(mlp_onnx: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_session(mlp_onnx, **kwargs)


def test_threads_and_options_are_applied(mlp_onnx: Path) -> None:
    session, _choice = select_session(mlp_onnx, threads=1, runs=3, warmup=1)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.log_severity_level == 4  # fatal only: a failed run raises, and the agent reports it


def test_choice_is_json_ready(mlp_onnx: Path) -> None:
    _session, choice = select_session(mlp_onnx, runs=3, warmup=1)
    data = json.loads(json.dumps(choice.as_dict()))
    assert data["provider"] == choice.provider
    assert data["trials"][0]["provider"] == CPU_PROVIDER
    assert isinstance(choice, ProviderChoice)


def test_compare_handles_strings_sequences_and_nan() -> None:
    names = ["a", "b", "c"]
    ref = [np.array(["x", "y"], dtype=object), [{"k": 1.0}], np.array([np.nan, 1.0], dtype=np.float32)]
    same = [np.array(["x", "y"], dtype=object), [{"k": 1.0}], np.array([np.nan, 1.0], dtype=np.float32)]
    assert providers._compare(ref, same, names, 1e-3, 1e-4) == (0.0, None)
    other_text = [np.array(["x", "z"], dtype=object), *same[1:]]
    assert providers._compare(ref, other_text, names, 1e-3, 1e-4)[1] == "output 'a' differs from CPU"
    other_map = [same[0], [{"k": 2.0}], same[2]]
    assert providers._compare(ref, other_map, names, 1e-3, 1e-4)[1] == "output 'b' differs from CPU"
    nan_vs_number = [*same[:2], np.array([0.0, 1.0], dtype=np.float32)]
    deviation, reason = providers._compare(ref, nan_vs_number, names, 1e-3, 1e-4)
    assert deviation == float("inf")
    assert reason is not None and "'c'" in reason
    reshaped = [*same[:2], np.array([[np.nan, 1.0]], dtype=np.float32)]
    assert "shape" in str(providers._compare(ref, reshaped, names, 1e-3, 1e-4)[1])
