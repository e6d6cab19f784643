"""Per-metric drift compensation: what moves a metric's weight, what does not, and how it is read
from a model's metadata."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.client_sdk.agent.compensation import (
    BLOCK_KEY,
    BLOCKS_KEY,
    LEVELS_KEY,
    DriftCompensation,
    from_metadata,
    reference_levels,
)

BLOCK = 50


def _terms(blocks: int, seed: int, f: int = 3) -> np.ndarray:
    """Per-metric terms below 0.5, as a model scores normal data."""
    return np.random.default_rng(seed).uniform(0.0, 0.5, size=(blocks * BLOCK, f))


def _train(blocks: int = 6) -> np.ndarray:
    """Training terms whose every block peaks at exactly 1.0 on every metric: reference 1.0."""
    out = _terms(blocks, seed=0)
    out[BLOCK // 2 :: BLOCK] = 1.0
    return out


def test_reference_levels_are_median_block_maxima_per_metric() -> None:
    terms = np.zeros((3 * BLOCK + 7, 2))  # the partial first block (7 steps) is dropped
    terms[0, 0] = 100.0
    for i, peak in enumerate([1.0, 5.0, 3.0]):
        terms[7 + i * BLOCK + 10, 0] = peak
        terms[7 + i * BLOCK + 20, 1] = 2.0 * peak
    np.testing.assert_allclose(reference_levels(terms, BLOCK), [3.0, 6.0])
    np.testing.assert_allclose(reference_levels(terms[:10], BLOCK), [100.0, 0.0])  # under one block: the max
    with pytest.raises(ValueError, match="shape"):
        reference_levels(np.zeros(5), BLOCK)


def test_a_metric_above_its_level_in_every_recent_block_is_scaled_back_to_it() -> None:
    train = _train()
    ref = reference_levels(train, BLOCK)
    np.testing.assert_allclose(ref, 1.0)
    state = DriftCompensation(ref, block=BLOCK, blocks=3)
    np.testing.assert_allclose(state.update(train), train.sum(axis=1))  # nothing drifts in training
    drifted = _terms(4, seed=1)
    drifted[:, 1] += 4.0  # metric 1's error is 4 higher from now on
    out = state.update(drifted)
    # the first three drifted blocks are scored as they are; the fourth with metric 1 scaled
    np.testing.assert_allclose(out[: 3 * BLOCK], drifted[: 3 * BLOCK].sum(axis=1))
    maxima = drifted[:, 1].reshape(4, BLOCK).max(axis=1)
    level = maxima[:3].min()
    weights = state.weights  # now from the last three blocks
    assert weights[0] == weights[2] == 1.0
    assert weights[1] == pytest.approx(ref[1] / maxima[1:].min())
    expected = drifted[3 * BLOCK :] @ np.array([1.0, ref[1] / level, 1.0])
    np.testing.assert_allclose(out[3 * BLOCK :], expected)
    assert out[3 * BLOCK :].max() < drifted[3 * BLOCK :].sum(axis=1).max() - 2.0


def test_an_incident_that_spares_one_recent_block_changes_nothing() -> None:
    state = DriftCompensation(reference_levels(_train(), BLOCK), block=BLOCK, blocks=3)
    state.update(_train())
    terms = _terms(6, seed=2)
    for b in (0, 1, 3, 4):  # a fault on metric 2 in four of six blocks, never three in a row
        terms[b * BLOCK + 5 : b * BLOCK + 15, 2] += 10.0
    np.testing.assert_allclose(state.update(terms), terms.sum(axis=1))
    np.testing.assert_array_equal(state.weights, np.ones(3))


def test_metrics_below_their_level_are_never_scaled_up_and_chunks_do_not_matter() -> None:
    ref = np.array([1.0, 1.0])
    quiet = np.full((5 * BLOCK, 2), 0.1)
    a = DriftCompensation(ref, block=BLOCK, blocks=2)
    np.testing.assert_allclose(a.update(quiet), quiet.sum(axis=1))
    np.testing.assert_array_equal(a.weights, [1.0, 1.0])
    # the same steps in uneven chunks, row by row included, give the same scores
    terms = _terms(5, seed=3, f=2) * 6.0
    whole = DriftCompensation(ref, block=BLOCK, blocks=2).update(terms)
    pieces = DriftCompensation(ref, block=BLOCK, blocks=2)
    parts = [pieces.update(terms[i : i + 37]) for i in range(0, 3 * BLOCK, 37)]
    parts += [pieces.update(row) for row in terms[len(np.concatenate(parts)) :]]
    np.testing.assert_allclose(np.concatenate(parts), whole)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="reference"):
        DriftCompensation([1.0, np.nan], block=BLOCK)
    with pytest.raises(ValueError, match="reference"):
        DriftCompensation([-1.0], block=BLOCK)
    with pytest.raises(ValueError, match="positive"):
        DriftCompensation([1.0], block=0)
    with pytest.raises(ValueError, match=r"\(T, 2\)"):
        DriftCompensation([1.0, 1.0], block=BLOCK).update(np.zeros((4, 3)))


def test_metadata_turns_the_compensation_on_and_is_checked() -> None:
    meta = {LEVELS_KEY: "0.5,2.0", BLOCK_KEY: "60", BLOCKS_KEY: "4"}
    state = from_metadata(meta, 2)
    assert state is not None
    assert (state.block, state.blocks) == (60, 4)
    np.testing.assert_array_equal(state.reference, [0.5, 2.0])
    assert from_metadata({**meta, BLOCKS_KEY: "0"}, 2) is None
    assert from_metadata({BLOCK_KEY: "60"}, 2) is None
    with pytest.raises(ValueError, match="3 metrics"):
        from_metadata(meta, 3)
    with pytest.raises(ValueError, match="not numbers"):
        from_metadata({**meta, LEVELS_KEY: "0.5,x"}, 2)
    with pytest.raises(ValueError, match="not numbers"):
        from_metadata({**meta, BLOCKS_KEY: "five"}, 2)
