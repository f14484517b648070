"""Bounded fuzzing of the HTTP JSON endpoints (see tests/security/http_fuzz.py)."""

from __future__ import annotations

import pytest
from hypothesis import example, given

from tests.security import fuzzing, http_fuzz


@pytest.fixture(scope="module")
def target():
    t = http_fuzz.HttpTarget()
    try:
        yield t
    finally:
        t.close()


@fuzzing.FUZZ
@given(req=http_fuzz.requests())
@example(req=("POST", "/query/account", b"{}", {"Authorization": f"Bearer {http_fuzz.TOKEN}"}))  # arity
def test_http_endpoints(target, req) -> None:
    target.check(req)


def test_http_target_detects_a_state_change(target):
    """Guard against a fuzz property that cannot fail: a good request does change the digest."""
    before = target.cs.digest()[1]
    status, _ = target.send("POST", "/tx/deposit", b'{"args": ["ann", 1]}',
                            {"Authorization": f"Bearer {http_fuzz.TOKEN}"})
    assert status == 200 and target.cs.digest()[1] != before
