"""Reference profiles computed by the SDK, and their validation on the server side."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.client_sdk import compute_reference_profile
from foedus.server import validation
from foedus.server.errors import InvalidArgument
from foedus.server.servicers.convert import profile_from_proto


def test_numeric_bins_follow_quantiles_and_count_every_row() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10_000, 2))
    x[:5, 1] = np.nan
    profile = compute_reference_profile(x, bins=10)
    assert profile.row_count == 10_000
    f0, f1 = profile.features
    assert [f0.name, f1.name] == ["x0", "x1"]
    assert len(f0.numeric.edges) == 11
    assert sum(f0.numeric.counts) == 10_000
    assert f1.missing == 5 and sum(f1.numeric.counts) == 9_995
    # quantile bins hold about equal shares
    assert max(f0.numeric.counts) - min(f0.numeric.counts) < 0.02 * 10_000
    assert f0.numeric.edges[0] == pytest.approx(x[:, 0].min())
    assert f0.numeric.edges[-1] == pytest.approx(x[:, 0].max())


def test_constant_and_categorical_features() -> None:
    data = {
        "const": np.full(100, 3.0),
        "color": np.array(["red"] * 60 + ["blue"] * 30 + ["green"] * 9 + [None]),
    }
    profile = compute_reference_profile(data, max_categories=2)
    const, color = profile.features
    assert list(const.numeric.counts) == [100]
    assert list(color.categorical.categories) == ["red", "blue"]
    assert list(color.categorical.counts) == [60, 30]
    assert color.categorical.other == 9 and color.missing == 1
    validation.reference_profile(profile_from_proto(profile))


def test_profile_rejects_ragged_columns() -> None:
    with pytest.raises(ValueError, match="same length"):
        compute_reference_profile({"a": [1, 2], "b": [1]})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.features[0].numeric.edges.__setitem__(1, -100.0),  # not increasing
        lambda p: p.features[0].numeric.counts.append(1),  # count per bin
        lambda p: p.features[0].numeric.counts.__setitem__(0, -1),  # negative
        lambda p: setattr(p.features[1], "name", p.features[0].name),  # duplicate names
        lambda p: p.features[0].numeric.edges.__setitem__(0, float("nan")),
    ],
)
def test_inconsistent_profiles_are_rejected(mutate: object) -> None:
    profile = compute_reference_profile(np.random.default_rng(0).random((50, 2)))
    mutate(profile)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match="reference profile"):
        validation.reference_profile(profile_from_proto(profile))
