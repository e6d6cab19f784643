"""Resource model (quantiles, calibration, ONNX), VPA-style baseline, and the Bitbrains / Nezha evaluations."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from foedus.client_sdk.agent.history import HISTORY_METRICS  # noqa: E402
from foedus.federation.evaluation import bitbrains, nezha  # noqa: E402
from foedus.federation.resources import (  # noqa: E402
    MAX_AGENT_WINDOW,
    OUTPUT_NAMES,
    DecayingHistogram,
    ResourceConfig,
    ResourceModel,
    UsageSeries,
    adaptive_limits,
    agent_columns_of,
    build_features,
    calibrate_margin,
    next_window_peaks,
    pinball_loss,
    recommendation_metrics,
    train_from_matrix,
    vpa_bucket_edges,
    vpa_recommendations,
)

DATA_DIR = Path(os.environ.get("FOEDUS_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
SMALL = ResourceConfig(lags=3, horizon=4, day=48, hidden=16, epochs=10, patience=3, lr=3e-3)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(rng: np.random.Generator, n: int = 1_200, day: int = 48, level: float = 20.0) -> UsageSeries:
    """A daily cycle plus skewed noise; memory follows more slowly; load tracks CPU."""
    t = np.arange(n, dtype=np.float64)
    cycle = 1.0 + 0.5 * np.sin(2.0 * np.pi * t / day)
    cpu = level * cycle + rng.gamma(2.0, level / 20.0, n)
    memory = 0.5 * level * cycle + rng.normal(0.0, level / 40.0, n) + level / 4.0
    load = np.stack([cpu * 10.0 * rng.lognormal(0.0, 0.2, n) for _ in range(4)], axis=1)
    return UsageSeries(cpu, np.maximum(memory, 0.0), load, 300.0 * t, name=f"synthetic-{level:g}")


@pytest.fixture(scope="module")
def fitted() -> tuple[ResourceModel, list[UsageSeries]]:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    series = [synthetic(rng, level=level) for level in (5.0, 10.0, 20.0, 40.0)]
    model = ResourceModel.fit(series, validation_fraction=0.25, config=SMALL, search=False, seed=0)
    held_out = [synthetic(np.random.default_rng(1), level=level) for level in (8.0, 30.0)]
    return model, held_out


# ---------------------------------------------------------------------------- quantiles


def test_pinball_loss_is_minimised_by_the_quantile() -> None:
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.exponential(1.0, 4_000))
    for q in (0.5, 0.9):
        grid = torch.linspace(0.0, 5.0, 501, dtype=torch.float64)
        losses = torch.stack([pinball_loss(p.expand_as(y), y, q) for p in grid])
        best = float(grid[int(torch.argmin(losses))])
        assert best == pytest.approx(float(np.quantile(y.numpy(), q)), abs=0.02)
    # the loss of an under-prediction by d is q * d, of an over-prediction (1 - q) * d
    assert float(pinball_loss(torch.tensor([1.0]), torch.tensor([3.0]), 0.9)) == pytest.approx(1.8)
    assert float(pinball_loss(torch.tensor([3.0]), torch.tensor([1.0]), 0.9)) == pytest.approx(0.2)


def test_quantiles_are_calibrated_on_held_out_workloads(
    fitted: tuple[ResourceModel, list[UsageSeries]],
) -> None:
    model, held_out = fitted
    exceed90, exceed50 = [], []
    for s in held_out:
        p = model.predict(s)
        peaks = next_window_peaks(s, model.config.horizon)
        for i, r in enumerate(("cpu", "memory")):
            ok = np.isfinite(p[f"{r}_p90_next"]) & np.isfinite(peaks[:, i])
            assert ok.sum() > 500
            exceed90.append(float((peaks[ok, i] > p[f"{r}_p90_next"][ok]).mean()))
            exceed50.append(float((peaks[ok, i] > p[f"{r}_p50_next"][ok]).mean()))
            assert np.all(p[f"{r}_p90_next"][ok] >= p[f"{r}_p50_next"][ok])
    # the p90 is exceeded about 10% of the time, the p50 about half the time
    assert 0.03 <= float(np.mean(exceed90)) <= 0.18, exceed90
    assert 0.3 <= float(np.mean(exceed50)) <= 0.7, exceed50


def test_fit_is_deterministic_and_searches(fitted: tuple[ResourceModel, list[UsageSeries]]) -> None:
    model, held_out = fitted
    rng = np.random.default_rng(0)
    series = [synthetic(rng, level=level) for level in (5.0, 10.0, 20.0, 40.0)]
    again = ResourceModel.fit(series, validation_fraction=0.25, config=SMALL, search=False, seed=0)
    x = build_features(held_out[0], model.spec)
    x = x[np.isfinite(x).all(axis=1)]
    np.testing.assert_array_equal(model.predict_features(x), again.predict_features(x))

    messages: list[str] = []
    searched = ResourceModel.fit(
        series,
        validation_fraction=0.25,
        config=SMALL,
        search_space={"hidden": [8, 16], "relative": [True, False]},
        search_iter=3,
        seed=0,
        progress=messages.append,
    )
    assert len(searched.info["search"]) == 3
    best = min(searched.info["search"], key=lambda r: r["validation_loss"])
    assert (searched.config.hidden, searched.config.relative) == (best["hidden"], best["relative"])
    assert any(m.startswith("search 3/3") for m in messages)


def test_features_use_only_the_past() -> None:
    s = synthetic(np.random.default_rng(3), n=300)
    spec = SMALL.feature_spec()
    x = build_features(s, spec)
    changed = UsageSeries(s.cpu.copy(), s.memory.copy(), s.load.copy(), s.times_s)
    changed.cpu[200:] += 1_000.0
    changed.load[200:] *= 50.0
    y = build_features(changed, spec)
    np.testing.assert_array_equal(x[:200], y[:200])
    assert not np.allclose(x[200], y[200])
    assert np.isnan(x[: spec.warmup]).any(axis=1).all() and np.isfinite(x[spec.warmup :]).all()
    assert x.shape[1] == len(spec.names())
    peaks = next_window_peaks(s, 4)
    assert peaks[10, 0] == pytest.approx(s.cpu[11:15].max())
    assert np.isnan(peaks[-4:]).all()


# ---------------------------------------------------------------------------- export and recommendations


def test_onnx_matches_torch(fitted: tuple[ResourceModel, list[UsageSeries]], tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, held_out = fitted
    path = model.export_onnx(tmp_path / "resource.onnx")
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["foedus.kind"] == "resource"
    assert meta["foedus.features"].split(",") == model.feature_names
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    x = build_features(held_out[1], model.spec)
    x = x[np.isfinite(x).all(axis=1)].astype(np.float32)
    absolute = ResourceModel.fit(
        [synthetic(np.random.default_rng(5), level=10.0)],
        config=dataclasses.replace(SMALL, relative=False, epochs=2),
        search=False,
    )
    for m in (model, absolute):
        session = ort.InferenceSession(
            str(m.export_onnx(tmp_path / "m.onnx")), providers=["CPUExecutionProvider"]
        )
        outputs = session.run(None, {"features": x})
        expected = m.predict_features(x)
        for i, out in enumerate(outputs):
            assert out.shape == (len(x),)
            np.testing.assert_allclose(out, expected[:, i], rtol=1e-4, atol=1e-4)


def test_save_load_and_recommend(fitted: tuple[ResourceModel, list[UsageSeries]], tmp_path: Path) -> None:
    model, held_out = fitted
    model.margins = {"cpu": 0.1, "memory": 0.05}
    loaded = ResourceModel.load(model.save(tmp_path / "resource.pt"))
    assert loaded.config == model.config and loaded.margins == model.margins
    s = held_out[0]
    p = model.predict(s)
    q = loaded.predict(s)
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(p[name], q[name])
    static = model.recommend(s, adaptive=False)
    np.testing.assert_allclose(static.cpu_limit, p["cpu_p90_next"] * 1.1)
    np.testing.assert_array_equal(static.memory_request, p["memory_p50_next"])
    online = model.recommend(s)
    ok = np.isfinite(online.cpu_limit)
    assert ok.sum() > 1_000 and np.all(online.cpu_limit[ok] > 0)


def agent_history(rng: np.random.Generator, n: int, day: int = 48) -> np.ndarray:
    """(n, 6) interval rows of `HISTORY_METRICS`, float32-exact: CPU % of a core, memory in bytes."""
    t = np.arange(n, dtype=np.float64)
    cycle = 1.0 + 0.5 * np.sin(2.0 * np.pi * t / day)
    cpu = 30.0 * cycle + rng.gamma(2.0, 1.5, n)
    memory = 4e8 * cycle + rng.normal(0.0, 1e7, n) + 2e8
    requests = 50.0 * cycle * rng.lognormal(0.0, 0.2, n)
    error_rate = rng.uniform(0.0, 0.05, n)
    p50 = 20.0 + rng.gamma(2.0, 2.0, n)
    p99 = 3.0 * p50 + rng.gamma(2.0, 5.0, n)
    rows = np.column_stack([requests, error_rate, p50, p99, cpu, memory])
    return rows.astype(np.float32).astype(np.float64)


def series_of(rows: np.ndarray, columns: dict[str, str], load_names: tuple[str, ...]) -> UsageSeries:
    """The model's input series read from agent rows as `columns` maps them."""
    col = {name: rows[:, HISTORY_METRICS.index(metric)] for name, metric in columns.items()}
    load = np.column_stack([col[name] for name in load_names])
    return UsageSeries(
        col["cpu"], col["memory"], load, np.asarray(10.0 * np.arange(len(rows)), dtype=np.float64)
    )


def onnx_session(path: Path) -> Any:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


AGENT_COLUMNS = {"cpu": "process_cpu_percent", "memory": "process_memory_bytes", "requests": "requests"}


def test_agent_export_matches_predict_and_the_agent_loader(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from foedus.client_sdk.agent.ops_models import MAX_WINDOW, ResourcePredictor
    from foedus.client_sdk.agent.serving import LoadedModel

    assert MAX_AGENT_WINDOW == MAX_WINDOW
    rows = agent_history(np.random.default_rng(6), 700)
    series = series_of(rows, AGENT_COLUMNS, ("requests",))
    rng = np.random.default_rng(7)
    for relative in (True, False):
        config = dataclasses.replace(SMALL, epochs=2, relative=relative, load_names=("requests",))
        model = ResourceModel.fit([series], config=config, search=False)
        path = model.export_agent_onnx(tmp_path / f"agent-{relative}.onnx", columns=AGENT_COLUMNS)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        w = model.spec.window
        assert w == SMALL.day
        assert [i.name for i in session.get_inputs()] == ["metrics"]
        assert session.get_inputs()[0].shape == ["N", w, 3]
        assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
        meta = dict(session.get_modelmeta().custom_metadata_map)
        assert meta["foedus.kind"] == "resource" and meta["foedus.window"] == str(w)
        # the agent's order, not the mapping's
        assert meta["foedus.features"] == "requests,process_cpu_percent,process_memory_bytes"

        expected = model.predict(series)
        ends = rng.choice(np.arange(w - 1, len(rows)), size=40, replace=False)
        cols = [HISTORY_METRICS.index(m) for m in meta["foedus.features"].split(",")]
        windows = np.stack([rows[t - w + 1 : t + 1][:, cols] for t in ends]).astype(np.float32)
        outputs = session.run(None, {"metrics": windows})
        for name, out in zip(OUTPUT_NAMES, outputs, strict=True):
            assert out.shape == (len(ends),)
            np.testing.assert_allclose(out, expected[name][ends], rtol=1e-4, atol=1e-4)

        predictor = ResourcePredictor(LoadedModel.from_session("ops", "1", session), "ops", {})
        assert predictor.window == w and predictor.features == tuple(meta["foedus.features"].split(","))
        for t in ends[:3]:
            got = predictor.predict(rows[: t + 1])
            assert list(got) == list(OUTPUT_NAMES)
            for name in OUTPUT_NAMES:
                assert got[name] == pytest.approx(expected[name][t], rel=1e-4, abs=1e-4)
            assert got["cpu_p90_next"] >= got["cpu_p50_next"]
        # before W intervals exist the agent pads with the first row: predict on that padded series
        padded = np.concatenate([np.repeat(rows[:1], w - 5, axis=0), rows[:5]])
        got = predictor.predict(rows[:5])
        want = model.predict(series_of(padded, AGENT_COLUMNS, ("requests",)))
        for name in OUTPUT_NAMES:
            assert got[name] == pytest.approx(want[name][-1], rel=1e-4, abs=1e-4)


def test_agent_export_maps_every_input_and_checks_the_mapping(
    fitted: tuple[ResourceModel, list[UsageSeries]], tmp_path: Path
) -> None:
    model, _ = fitted
    assert model.spec.inputs() == ("cpu", "memory", *model.spec.load_names)
    # four load proxies read from three agent metrics, one of them twice
    columns = {
        "cpu": "process_cpu_percent",
        "memory": "process_memory_bytes",
        "disk_read_kbps": "requests",
        "disk_write_kbps": "latency_p99_ms",
        "net_rx_kbps": "requests",
        "net_tx_kbps": "error_rate",
    }
    session = onnx_session(model.export_agent_onnx(tmp_path / "m.onnx", columns=columns))
    meta = dict(session.get_modelmeta().custom_metadata_map)
    features = meta["foedus.features"].split(",")
    assert features == [
        "requests",
        "error_rate",
        "latency_p99_ms",
        "process_cpu_percent",
        "process_memory_bytes",
    ]
    assert json.loads(meta["foedus.columns"]) == columns
    rows = agent_history(np.random.default_rng(8), 300)
    rows[:, 4] = rows[:, 4] / 3.0  # CPU and memory in the model's training range (%)
    rows[:, 5] = rows[:, 5] / 2e7
    rows = rows.astype(np.float32).astype(np.float64)
    expected = model.predict(series_of(rows, columns, model.spec.load_names))
    w = model.spec.window
    ends = np.arange(w - 1, len(rows), 17)
    cols = [HISTORY_METRICS.index(m) for m in features]
    windows = np.stack([rows[t - w + 1 : t + 1][:, cols] for t in ends]).astype(np.float32)
    outputs = session.run(None, {"metrics": windows})
    for name, out in zip(OUTPUT_NAMES, outputs, strict=True):
        np.testing.assert_allclose(out, expected[name][ends], rtol=1e-4, atol=1e-4)

    with pytest.raises(ValueError, match="missing net_tx_kbps"):
        model.export_agent_onnx(
            tmp_path / "x.onnx", columns={k: v for k, v in columns.items() if k != "net_tx_kbps"}
        )
    with pytest.raises(ValueError, match="not inputs of this model: gpu"):
        model.export_agent_onnx(tmp_path / "x.onnx", columns={**columns, "gpu": "requests"})
    with pytest.raises(ValueError, match="cpu_temperature not agent metric"):
        model.export_agent_onnx(tmp_path / "x.onnx", columns={**columns, "cpu": "cpu_temperature"})
    # the features need a day of history; agents feed at most 1024 intervals
    long_day = ResourceModel(model.net, dataclasses.replace(model.config, day=MAX_AGENT_WINDOW + 1))
    assert long_day.spec.window == MAX_AGENT_WINDOW + 1
    with pytest.raises(ValueError, match="window of 1025 intervals"):
        long_day.export_agent_onnx(tmp_path / "x.onnx", columns=columns)
    assert not (tmp_path / "x.onnx").exists()


def test_train_from_matrix_on_an_agent_history_writes_an_agent_model(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from foedus.client_sdk.agent.ops_models import ResourcePredictor
    from foedus.client_sdk.agent.serving import LoadedModel

    rows = agent_history(np.random.default_rng(9), 1_000, day=120)
    # the columns in another order, with a column agents do not have: found by name, ignored
    order = [5, 0, 2, 4, 1, 3]
    names = [HISTORY_METRICS[i] for i in order] + ["node_id"]
    x = np.column_stack([rows[:, order], np.ones(len(rows))])
    messages: list[str] = []
    summary = train_from_matrix(x, names, tmp_path / "r.onnx", search=False, progress=messages.append)
    json.dumps(summary)  # plain values
    assert summary["agent_servable"] is True and summary["kind"] == "resource"
    assert summary["features"] == "requests,process_cpu_percent,process_memory_bytes"
    # horizon 6 intervals, day a quarter of the rows (at most 360)
    assert (summary["horizon"], summary["day"], summary["window"]) == (6, 250, 250)
    assert {"lags", "hidden", "lr", "relative", "validation_pinball"} <= set(summary)
    assert summary["validation_pinball"] > 0 and messages
    session = onnx_session(tmp_path / "r.onnx")
    predictor = ResourcePredictor(LoadedModel.from_session("ops", "1", session), "ops", {})
    assert predictor.window == 250
    got = predictor.predict(rows)
    assert list(got) == list(OUTPUT_NAMES)
    # in the data's units: CPU percent of a core, memory bytes
    assert 10.0 < got["cpu_p50_next"] <= got["cpu_p90_next"] < 150.0
    assert 1e8 < got["memory_p50_next"] <= got["memory_p90_next"] < 2e9
    assert agent_columns_of(["process_cpu_percent", "process_memory_bytes"]) == {
        "cpu": "process_cpu_percent",
        "memory": "process_memory_bytes",
    }
    with pytest.raises(ValueError, match="too few"):
        train_from_matrix(rows[:30], list(HISTORY_METRICS), tmp_path / "x.onnx", search=False)


def test_train_from_matrix_on_other_columns_keeps_the_feature_export(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    s = synthetic(np.random.default_rng(4), n=800)
    names = ["disk", "net", "in", "out", "cpu_usage_pct", "memory_percent"]
    x = np.column_stack([s.load, s.cpu, s.memory])
    summary = train_from_matrix(x, names, tmp_path / "r.onnx", search=False, horizon=4)
    assert summary["cpu"] == "cpu_usage_pct" and summary["memory"] == "memory_percent"
    assert summary["agent_servable"] is False
    assert summary["day"] == 200 and summary["rows"] == 800 and summary["horizon"] == 4
    assert summary["features"] == "cpu_usage_pct,memory_percent,disk,net,in,out"
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "r.onnx")).metadata_props}
    assert meta["foedus.kind"] == "resource" and "disk_mean_window" in meta["foedus.features"]
    with pytest.raises(ValueError, match=r"no cpu column.*process_cpu_percent"):
        train_from_matrix(x[:, :2], ["a", "b"], tmp_path / "x.onnx")


# ---------------------------------------------------------------------------- slack, under-rate, margins


def test_slack_and_under_provision_rate_on_a_hand_example() -> None:
    recommended = [10.0, 5.0, 8.0, math.nan, 4.0]
    actual = [7.0, 6.0, 8.0, 1.0, 1.0]
    slack, under = recommendation_metrics(recommended, actual)
    # windows 1, 2, 3, 5 count: slack (3 + 0 + 0 + 3) / 4, one of four under-provisioned
    assert slack == pytest.approx(1.5)
    assert under == pytest.approx(0.25)
    assert all(math.isnan(v) for v in recommendation_metrics([math.nan], [1.0]))


def test_calibrate_margin_hits_the_target_rate() -> None:
    recommended = np.full(10, 10.0)
    actual = np.arange(1.0, 11.0) * 1.5  # ratios 0.15 .. 1.5
    margin = calibrate_margin(recommended, actual, 0.2)
    # the smallest multiplier leaving at most 2 of 10 above: the 8th ratio, 1.2
    assert margin == pytest.approx(0.2)
    assert float((actual > recommended * (1 + margin)).mean()) <= 0.2
    assert float((actual > recommended * (1 + margin - 1e-9)).mean()) > 0.2


def test_adaptive_limits_track_the_target_and_ignore_the_future() -> None:
    rng = np.random.default_rng(0)
    n, horizon = 4_000, 3
    base = np.full(n, 10.0)
    peaks = 10.0 * rng.lognormal(0.5, 0.3, n)  # the static limit 10 is under-provisioned 95% of the time
    limits = adaptive_limits(base, peaks, margin=0.0, target_under_rate=0.1, gamma=0.05, horizon=horizon)
    assert float((peaks[n // 2 :] > limits[n // 2 :]).mean()) == pytest.approx(0.1, abs=0.03)
    changed = peaks.copy()
    changed[1_000:] *= 10.0
    other = adaptive_limits(base, changed, margin=0.0, target_under_rate=0.1, gamma=0.05, horizon=horizon)
    # limit t uses peaks of windows closed by t (k <= t - horizon) only
    np.testing.assert_array_equal(limits[: 1_000 + horizon], other[: 1_000 + horizon])
    assert other[1_100] > limits[1_100]


# ---------------------------------------------------------------------------- VPA-style baseline


def test_vpa_bucket_edges() -> None:
    edges = vpa_bucket_edges(0.01, 1.05, 1000.0)
    assert edges[0] == 0.0 and edges[1] == pytest.approx(0.01) and edges[2] == pytest.approx(0.01 + 0.0105)
    widths = np.diff(edges)
    np.testing.assert_allclose(widths[1:] / widths[:-1], 1.05)
    assert edges[-1] >= 1000.0 > edges[-2]


def test_decaying_histogram_half_life_weighting() -> None:
    h = DecayingHistogram(half_life_s=3_600.0)
    h.add(1.0, 0.0)
    h.add(50.0, 3_600.0)
    h.add(50.0, 7_200.0)
    # relative to the newest sample, the one an hour older weighs 1/2, two hours older 1/4
    w_old, w_new = h.weights[h.bucket(1.0)], h.weights[h.bucket(50.0)]
    assert w_old / w_new == pytest.approx(0.25 / (0.5 + 1.0))
    # far-apart samples rescale the stored weights instead of overflowing; ratios are kept
    h.add(50.0, 3_600.0 * 200)
    assert math.isfinite(h.total_weight)
    assert h.weights[h.bucket(1.0)] / h.weights[h.bucket(50.0)] < 1e-50


def test_decaying_histogram_percentile_is_the_upper_bucket_edge() -> None:
    h = DecayingHistogram()
    for v in range(1, 101):
        h.add(float(v), 0.0)
    # 90% of the weight is reached in the bucket holding 90: its upper edge is returned
    edges = h.edges
    b = h.bucket(90.0)
    assert edges[b] <= 90.0 < edges[b + 1]
    assert h.percentile(0.9) == pytest.approx(edges[b + 1])
    assert DecayingHistogram().percentile(0.9) == 0.0


def test_vpa_target_is_p90_plus_15_percent_and_matches_the_online_histogram() -> None:
    rng = np.random.default_rng(0)
    n = 3_000
    values = rng.gamma(2.0, 5.0, n)
    values[rng.random(n) < 0.05] = np.nan
    times = 300.0 * np.arange(n) + rng.uniform(0, 5, n)
    targets = vpa_recommendations(values, times, half_life_s=86_400.0, block=128)
    h = DecayingHistogram(half_life_s=86_400.0)
    for t in range(n):
        h.add(float(values[t]), float(times[t]))
        expected = 1.15 * h.percentile(0.9) if h.total_weight > 0 else math.nan
        if math.isnan(expected):
            assert math.isnan(targets[t])
        else:
            assert targets[t] == pytest.approx(expected, rel=1e-12)
    # with a short half-life the recommendation forgets an old high level
    step = np.r_[np.full(500, 80.0), np.full(500, 10.0)]
    fast = vpa_recommendations(step, 300.0 * np.arange(1_000), half_life_s=3_600.0)
    slow = vpa_recommendations(step, 300.0 * np.arange(1_000), half_life_s=86_400.0)
    assert fast[-1] < 1.15 * 11.0 < 1.15 * 79.0 < slow[-1]


# ---------------------------------------------------------------------------- Nezha


def _t(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def test_fault_window_matching_on_a_hand_example() -> None:
    t0 = _t("2022-08-22 04:00:00")
    times = t0 + 19.0 + 60.0 * np.arange(30)  # rows end at :19 each minute, 04:00:19 .. 04:29:19
    fault = nezha.Fault(t0 + 130.0, "cart-1-a", "cpu_contention")  # 04:02:10, window to 04:07:10
    other = nezha.Fault(t0 + 1_200.0, "front-1-b", "return")  # another pod, 04:20:00
    alerts = np.zeros(30, dtype=bool)
    alerts[[1, 4, 6, 10, 22, 29]] = (
        True  # 04:01:19 (before), 04:04:19, 04:06:19 (in), 04:10:19, 04:22:19, 04:29:19
    )
    inside = nezha.in_windows(times, [fault.time_s])
    # rows whose minute overlaps it end in (04:02:10, 04:08:10): 04:02:19 .. 04:07:19
    assert list(np.flatnonzero(inside)) == [2, 3, 4, 5, 6, 7]
    match = nezha.match_alerts(times, alerts, [fault], [fault, other])
    assert match.found == [True]
    assert match.ttd_s == [pytest.approx(times[4] - fault.time_s)]
    # 04:22:19 lies in the other pod's fault window (04:20:19 .. 04:25:19), so it is not a false alert
    assert match.false_alerts == 3  # 04:01:19, 04:10:19, 04:29:19
    assert match.normal_hours == pytest.approx((30 - 6 - 6) / 60.0)
    missed = nezha.match_alerts(times, np.zeros(30, dtype=bool), [fault], [fault])
    assert missed.found == [False] and missed.ttd_s == [] and missed.false_alerts == 0
    assert nezha.service_of("productcatalogservice-668d5f85fb-wckp8") == "productcatalogservice"


def test_budget_offset() -> None:
    margins = np.array([-3.0, -2.0, 0.5, 1.0, 2.0])
    # two normal hours, one alert an hour allowed: only margins above the 3rd largest alert
    assert nezha.budget_offset(margins, 2.0, 1.0) == pytest.approx(0.5)
    assert nezha.budget_offset(margins, 10.0, 1.0) == -math.inf


def _write_day(
    root: Path, day: str, start: str, rng: np.random.Generator, faults: list[tuple[int, str, str]]
) -> None:
    """A synthetic day in the Nezha layout: 2 pods, 1-min rows; a fault raises CPU and latencies."""
    folder = root / "nezha" / "rca_data" / day
    (folder / "metric").mkdir(parents=True)
    t0 = _t(start)
    n = 360
    columns = ["Time", "TimeStamp", "PodName", *nezha.POD_METRICS, "NodeCpuUsageRate(%)"]
    for pod in ("cartservice-1a-x", "frontend-2b-y"):
        values = np.abs(rng.normal(1.0, 0.05, (n, len(nezha.POD_METRICS))))
        for minute, target, _ in faults:
            if target == pod:
                # CPU and every latency column jump eightfold for three minutes
                values[minute + 1 : minute + 4, [0, 6, 7, 8, 9, 10, 11]] *= 8.0
        lines = [",".join(columns)]
        for i in range(n):
            stamp = datetime.fromtimestamp(t0 + 60.0 * i + 19.0, UTC).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(
                ",".join([f"{stamp}.1 +0000 UTC m=+0.1", "0", pod, *(f"{v:.5f}" for v in values[i]), "1"])
            )
        (folder / "metric" / f"{pod}_metric.csv").write_text("\n".join(lines) + "\n")
    listing = {
        "00": [
            {
                "inject_time": datetime.fromtimestamp(t0 + 60.0 * m + 5.0, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "inject_timestamp": str(int(t0 + 60.0 * m + 5.0)),
                "inject_pod": pod,
                "inject_type": kind,
            }
            for m, pod, kind in faults
        ]
    }
    (folder / f"{day}-fault_list.json").write_text(json.dumps(listing))


def test_nezha_evaluation_on_a_synthetic_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_day(tmp_path, "2022-01-01", "2022-01-01 10:00:00", rng, [(60, "cartservice-1a-x", "cpu_consumed")])
    _write_day(
        tmp_path,
        "2022-01-02",
        "2022-01-02 10:00:00",
        rng,
        [(90, "frontend-2b-y", "cpu_contention"), (200, "cartservice-1a-x", "network_delay")],
    )
    days = nezha.load_nezha(tmp_path)
    assert [d.name for d in days] == ["2022-01-01", "2022-01-02"]
    assert len(days[1].faults) == 2 and days[1].faults[0].kind == "cpu_contention"
    out = nezha.evaluate_nezha(tmp_path, detectors=("stat", "iforest"))
    assert out["nezha_faults"] == 3 and out["nezha_pod_days"] == 4 and out["nezha_in_sample"] == 0
    for prefix in ("stat_", "iforest_"):
        assert out[f"{prefix}nezha_recall"] == 1.0  # 8x spikes in CPU and latencies are found
        assert 0 < out[f"{prefix}nezha_ttd_median_s"] <= 300
        assert out[f"{prefix}nezha_false_alerts_per_h"] >= 0
    with pytest.raises(FileNotFoundError, match="no Nezha data"):
        nezha.load_nezha(tmp_path / "empty")


class _FakeAnomalyModel:
    """Stands in for `foedus.federation.anomaly.AnomalyModel`: distance from the training mean."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        self.mean, self.scale, self.threshold = mean, scale, 6.0

    @classmethod
    def fit(cls, train: np.ndarray, **kwargs: object) -> _FakeAnomalyModel:
        assert kwargs["feature_names"] == list(nezha.POD_METRICS)
        return cls(train.mean(axis=0), train.std(axis=0) + 1e-9)

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.abs((x - self.mean) / self.scale).max(axis=1)


def test_nezha_runs_our_detector_through_its_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    _write_day(tmp_path, "2022-01-01", "2022-01-01 10:00:00", rng, [(60, "cartservice-1a-x", "cpu_consumed")])
    _write_day(tmp_path, "2022-01-02", "2022-01-02 10:00:00", rng, [(90, "frontend-2b-y", "return")])
    fake = types.ModuleType("foedus.federation.anomaly")
    fake.AnomalyModel = _FakeAnomalyModel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "foedus.federation.anomaly", fake)
    assert nezha.anomaly_model_available()
    out = nezha.evaluate_nezha(tmp_path, detectors=("ours",))
    assert out["nezha_recall"] == 1.0 and out["nezha_recall_return"] == 1.0
    assert out["nezha_ttd_median_s"] > 0 and "stat_nezha_recall" not in out


# ---------------------------------------------------------------------------- Bitbrains


def _write_vm(path: Path, samples: list[tuple[int, float, float, float, float]]) -> None:
    """Synthetic rows in the Bitbrains layout: (timestamp, cpu %, cpu capacity, mem KB, mem capacity)."""
    header = (
        "Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%];\t"
    )
    header += "Memory capacity provisioned [KB];\tMemory usage [KB];\tDisk read throughput [KB/s];\t"
    header += "Disk write throughput [KB/s];\tNetwork received throughput [KB/s];\tNetwork transmitted throughput [KB/s]"
    lines = [header]
    for ts, pct, cap, mem, mem_cap in samples:
        lines.append(
            f"{ts};\t2;\t{cap};\t{cap * pct / 100};\t{pct};\t{mem_cap};\t{mem};\t1.0;\t2.0;\t3.0;\t4.0"
        )
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")


def test_bitbrains_reader_grid_units_and_gaps(tmp_path: Path) -> None:
    folder = tmp_path / "bitbrains" / "2099-1"
    folder.mkdir(parents=True)
    t = 1_000_000
    rows = [(t, 10.0, 2000.0, 1000.0, 4000.0), (t + 300, 20.0, 2000.0, 2000.0, 4000.0)]
    rows.append((t + 900, 30.0, 2000.0, 3000.0, 4000.0))  # one empty slot at +600: filled
    rows.append((t + 1200, 40.0, 0.0, 0.0, 0.0))  # VM off: missing
    rows.append((t + 2700, 50.0, 2000.0, 400.0, 4000.0))  # four empty slots before: left missing
    _write_vm(folder / "7.csv.gz", rows)
    s = bitbrains.read_vm(folder / "7.csv.gz")
    assert s.name == "2099-1/7" and len(s) == 10
    np.testing.assert_allclose(s.cpu[:4], [10.0, 20.0, 20.0, 30.0])
    np.testing.assert_allclose(s.memory[:4], [25.0, 50.0, 50.0, 75.0])
    assert np.isnan(s.cpu[4:9]).all() and s.cpu[9] == 50.0 and s.memory[9] == pytest.approx(10.0)
    np.testing.assert_allclose(s.load[0], [1.0, 2.0, 3.0, 4.0])
    assert bitbrains.bitbrains_files(tmp_path) == [folder / "7.csv.gz"]
    with pytest.raises(FileNotFoundError, match="no usable Bitbrains VM"):
        bitbrains.load_bitbrains(tmp_path)
    with pytest.raises(FileNotFoundError, match="no Bitbrains traces"):
        bitbrains.load_bitbrains(tmp_path / "empty")


def _bitbrains_present() -> bool:
    return bool(bitbrains.bitbrains_files(DATA_DIR))


def _nezha_present() -> bool:
    return any((DATA_DIR / "nezha").rglob("*fault_list.json")) if (DATA_DIR / "nezha").is_dir() else False


@pytest.mark.skipif(
    not _bitbrains_present(), reason=f"Bitbrains traces not found under {DATA_DIR} (FOEDUS_DATA_DIR)"
)
def test_real_bitbrains_vms_load_and_vpa_runs() -> None:
    series = bitbrains.load_bitbrains(DATA_DIR)
    assert len(series) >= 40
    s = series[0]
    assert np.nanmax(s.memory) <= 100.5 and np.nanmin(s.cpu) >= 0.0
    target = vpa_recommendations(s.cpu, s.times_s)
    assert np.isfinite(target[300:]).all() and (target[300:] > 0).all()


@pytest.mark.slow
@pytest.mark.skipif(
    not _bitbrains_present(), reason=f"Bitbrains traces not found under {DATA_DIR} (FOEDUS_DATA_DIR)"
)
def test_real_bitbrains_less_slack_than_vpa() -> None:
    out = bitbrains.evaluate_bitbrains(DATA_DIR, search=False, compare_variants=False)
    assert out["bitbrains_vms"] >= 40
    assert out["bitbrains_slack_reduction"] >= 0.3
    assert out["bitbrains_under_rate"] <= out["vpa_bitbrains_under_rate"] + 0.01


@pytest.mark.slow
@pytest.mark.skipif(not _nezha_present(), reason=f"Nezha data not found under {DATA_DIR} (FOEDUS_DATA_DIR)")
def test_real_nezha_baselines() -> None:
    ours = nezha.anomaly_model_available()
    out = nezha.evaluate_nezha(
        DATA_DIR, detectors=("ours", "stat", "iforest") if ours else ("stat", "iforest")
    )
    assert out["nezha_faults"] == 56 and out["nezha_pod_days"] == 20
    assert out["stat_nezha_recall"] >= 0.5
    assert 0.0 <= out["iforest_nezha_recall"] <= 1.0
    if ours:
        # the learned model finds faults and raises far fewer false alerts than the agent's
        # statistical detector (which fires for as long as a shift lasts)
        assert out["nezha_recall"] >= 0.3
        assert out["nezha_false_alerts_per_h"] < 0.75 * out["stat_nezha_false_alerts_per_h"]


# ------------------------------------------------------------------ federated task
def test_federated_task_standardises_once_then_learns_the_quantiles() -> None:
    from foedus.federation.flower.task import LocalData, set_weights
    from foedus.federation.resources import federated_rows, federated_task, quantile_metrics

    rng = np.random.default_rng(3)
    series = [synthetic(rng, level=level) for level in (10.0, 40.0)]
    rows = federated_rows(series, SMALL, [(0, 900), (0, 900)])
    test = federated_rows(series, SMALL, [(900, 1200), (900, 1200)])
    n_in = len(SMALL.feature_spec().names())
    assert rows.shape[1] == n_in + 2 and np.isfinite(rows).all()
    task = federated_task(hidden=16, lags=3, horizon=4, day=48, lr=3e-3, batch_size=64)
    start = task.initial_arrays()
    assert not start["net.x_mean"].any()  # unset until a node sees its rows

    def metrics(weights: dict[str, np.ndarray]) -> dict[str, float]:
        model = task.build()
        set_weights(model, weights)
        model.eval()
        with torch.no_grad():
            pred = model(torch.from_numpy(test[:, :n_in])).numpy()
        return quantile_metrics(pred, test[:, n_in:])

    standardised, info = task.train(start, LocalData(train=rows), epochs=3)
    assert standardised["net.x_mean"].any() and (standardised["net.x_std"] != 1.0).any()  # from the rows
    np.testing.assert_array_equal(standardised["net.head.weight"], start["net.head.weight"])  # no training
    assert info["num-examples"] == len(rows) and info["train-loss"] == info["train-loss-initial"]
    first, _ = task.train(standardised, LocalData(train=rows), epochs=3)
    second, _ = task.train(first, LocalData(train=rows[: len(rows) // 2]), epochs=1)
    np.testing.assert_array_equal(second["net.x_mean"], standardised["net.x_mean"])  # then fixed
    before, after = metrics(dict(standardised)), metrics(dict(first))
    assert after["pinball"] < 0.5 * before["pinball"]
    assert 0.7 < after["p90_coverage"] <= 1.0
    with pytest.raises(ValueError, match="feature columns"):
        task.train(start, LocalData(train=rows[:, :-1]), epochs=1)
    from foedus.federation.flower.task import DpSgd

    with pytest.raises(ValueError, match="not supported for the resource model"):
        task.train(start, LocalData(train=rows), epochs=1, dp_sgd=DpSgd(1.0, 1.0, 0.01))


def test_quantile_metrics_pinball_and_coverage() -> None:
    from foedus.federation.resources import quantile_metrics

    peaks = np.array([[10.0, 20.0], [30.0, 40.0]])
    exact = np.array([[10.0, 10.0, 20.0, 20.0], [30.0, 30.0, 40.0, 40.0]])
    assert quantile_metrics(exact, peaks) == {"pinball": 0.0, "p90_coverage": 1.0}
    low = exact - 10.0  # every prediction 10 below: pinball q * 10, p90s cover nothing
    got = quantile_metrics(low, peaks)
    assert got["pinball"] == pytest.approx(10.0 * (0.5 + 0.9) / 2) and got["p90_coverage"] == 0.0
