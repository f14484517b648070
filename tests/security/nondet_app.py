"""A deliberately broken store definition for the non-determinism row of the bad-input table.

``stamp`` writes a value that differs on every replica (``os.urandom`` instead of
``context().random``), so each replica that applies the same log entry reaches a different state;
``flaky`` succeeds or fails depending on a process-global switch (think: a feature flag read from
the environment), so a standalone store that logged it cannot replay it.
"""

from __future__ import annotations

import os

from bknr_cluster.store import Index, StoreDefinition, StoreObject, query, transaction

FAIL_ON_REPLAY = {"on": False}


class Note(StoreObject):
    key: str = Index(unique=True)
    value: str = ""


@transaction("put")
def put(key: str, value: str) -> str:
    """Deterministic: the baseline every replica agrees on."""
    Note(key=key, value=value)
    return value


@transaction("stamp")
def stamp(key: str) -> str:
    value = os.urandom(8).hex()  # WRONG on purpose: must be context().random
    Note(key=key, value=value)
    return value


@transaction("flaky")
def flaky(key: str) -> str:
    if FAIL_ON_REPLAY["on"]:  # WRONG on purpose: depends on process state, not on the store
        raise RuntimeError("feature switched off")
    Note(key=key, value="flaky")
    return key


@query("notes")
def notes() -> dict[str, str]:
    return {n.key: n.value for n in Note.all()}


definition = StoreDefinition(name="nondet", classes=[Note], transactions=[put, stamp, flaky],
                             queries=[notes])
