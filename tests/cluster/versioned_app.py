"""Two versions of one application, for rolling-upgrade and divergence tests (issue 13).

The version is read from the environment **at import**, as a real deployment would pick up new
code on restart: ``BKNR_TEST_APP_VERSION=1`` or ``2`` (default 2). Version 2 adds the
transaction ``incr`` and the class ``Tag`` (with the transaction ``tag``) to version 1.

``flaky`` is non-deterministic on purpose: it raises when the process was started with
``BKNR_TEST_FLAKY=1`` (a feature flag read from the environment), so a replica started that way
skips what the others apply -- a silent divergence that only the consistency checkpoints catch.

In-process tests build both versions side by side with ``make_definition(1)`` / ``(2)``.
"""

from __future__ import annotations

import os

from bknr_cluster.store import Index, StoreDefinition, StoreObject, query, transaction


class Counter(StoreObject):
    name: str = Index(unique=True)
    value: int = 0


class Tag(StoreObject):  # version 2 only
    label: str = Index(unique=True)


@transaction("put")
def put(name: str, value: int) -> int:
    c = Counter.by_name(name)
    if c is None:
        Counter(name=name, value=value)
    else:
        c.value = value
    return value


@transaction("incr")  # version 2 only
def incr(name: str) -> int:
    c = Counter.by_name(name)
    if c is None:
        c = Counter(name=name, value=0)
    c.value = c.value + 1
    return c.value


@transaction("tag")  # version 2 only
def tag(label: str) -> str:
    Tag(label=label)
    return label


@transaction("flaky")
def flaky(name: str) -> int:
    if os.environ.get("BKNR_TEST_FLAKY") == "1":  # WRONG on purpose: process state, not store
        raise RuntimeError("feature switched off on this node")
    return put.fn(name, 100)


@query("get")
def get(name: str) -> int | None:
    c = Counter.by_name(name)
    return None if c is None else c.value


@query("ping")
def ping() -> bool:
    return True


def make_definition(version: int) -> StoreDefinition:
    classes: list[type] = [Counter] + ([Tag] if version >= 2 else [])
    txs = [put, flaky] + ([incr, tag] if version >= 2 else [])
    return StoreDefinition(name="versioned", classes=classes, transactions=txs,
                           queries=[get, ping], version=f"{version}.0")


VERSION = int(os.environ.get("BKNR_TEST_APP_VERSION", "2"))
definition = make_definition(VERSION)
