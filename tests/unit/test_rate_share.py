"""Rate limits shared among server processes: each enforces 1/N of the rate and burst, N the live
members of the store's members table."""

from __future__ import annotations

from pathlib import Path

import pytest

from foedus.server.store.sql import SqlStore
from foedus.server.tenancy.limits import Membership, RateLimiter


def test_a_limiter_enforces_its_share_of_the_rate_and_burst() -> None:
    now = [0.0]
    limiter = RateLimiter(4.0, 6, clock=lambda: now[0])
    limiter.share(2)
    assert (limiter.local_rate, limiter.local_burst) == (2.0, 3.0)
    assert (limiter.rate, limiter.burst) == (4.0, 6.0)  # the limits of the whole control plane
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # a token every 0.5 s at 2/s
    now[0] = 0.5
    assert limiter.take("a") == 0.0
    limiter.share(1)  # the other process left: the whole rate and burst
    now[0] = 10.0
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert limiter.take("a") == pytest.approx(0.25)


def test_a_share_keeps_at_least_one_token_of_burst() -> None:
    limiter = RateLimiter(2.0, 3, clock=lambda: 0.0)
    limiter.share(8)
    assert limiter.local_rate == 0.25
    assert limiter.local_burst == 1.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(4.0)
    limiter.share(0)  # never fewer than this process
    assert (limiter.local_rate, limiter.local_burst) == (2.0, 3.0)


def test_a_smaller_share_caps_the_tokens_a_bucket_holds() -> None:
    now = [0.0]
    limiter = RateLimiter(10.0, 20, clock=lambda: now[0])
    assert limiter.take("a") == 0.0  # 19 left
    limiter.share(4)  # a burst of 5 from now on
    assert [limiter.take("a") for _ in range(5)] == [0.0] * 5
    assert limiter.take("a") > 0


def test_members_share_the_limits_and_expire(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'foedus.db'}")
    now = [1000.0]
    calls, ingest = RateLimiter(6.0), RateLimiter(30.0)
    a = Membership(store, [calls, ingest], timeout_s=15.0, clock=lambda: now[0])
    b = Membership(store, [], timeout_s=15.0, clock=lambda: now[0])
    c = Membership(store, [], timeout_s=15.0, clock=lambda: now[0])
    try:
        assert a.renew() == 1
        assert calls.local_rate == 6.0
        b.renew(), c.renew()
        now[0] += 5.0
        assert a.renew() == 3
        assert (calls.local_rate, ingest.local_rate, calls.local_burst) == (2.0, 10.0, 4.0)
        c.leave()  # a process that stops leaves at once
        assert b.renew() == 2
        assert a.renew() == 2
        assert calls.local_rate == 3.0
        now[0] += 14.0
        assert a.renew() == 2  # b renewed 14 s ago: still live
        now[0] += 2.0
        assert a.renew() == 1  # b died without leaving: dropped after the timeout
        assert (calls.local_rate, calls.local_burst) == (6.0, 12.0)
    finally:
        store.close()
