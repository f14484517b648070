"""Transactions, queries and the deterministic transaction context.

A transaction is a plain function registered under a stable name::

    @transaction                       # name = "<module>.<qualname>"
    def deposit(owner: str, amount: int) -> int: ...

    @transaction("bank.transfer")      # explicit name: survives moving/renaming the function
    def transfer(...): ...

It must be deterministic given the store state and its arguments: time comes from
``context().now`` (the timestamp stamped into the record), randomness from ``context().random``
(seeded from the record bytes), ids from the store. Calling a registered transaction while
another runs in the same thread simply calls the function (it becomes part of the outer one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bknr_cluster.errors import NotInTransaction, StoreError, UsageError
from bknr_cluster.store.model import LOCAL

if TYPE_CHECKING:
    from bknr_cluster.store.core import Store

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class TxContext:
    """Where a record is applied: its log/Raft ``index`` plus what the record determines.

    The cluster layer creates ``TxContext(index=i)``; the store fills in the rest while applying.
    """

    __slots__ = ("index", "timestamp_ns", "record", "store", "undo", "_random")

    def __init__(self, index: int = 0):
        self.index = index
        self.timestamp_ns = 0
        self.record = b""
        self.store: Store | None = None
        self.undo: list[tuple] = []
        self._random: random.Random | None = None

    @property
    def now(self) -> dt.datetime:
        """The transaction's timestamp as an aware UTC datetime (same on every replay)."""
        return _EPOCH + dt.timedelta(microseconds=self.timestamp_ns // 1000)

    @property
    def random(self) -> random.Random:
        """A PRNG seeded from the record bytes: identical on every replica and replay."""
        if self._random is None:
            seed = hashlib.blake2b(self.record, digest_size=16).digest()
            self._random = random.Random(int.from_bytes(seed, "big"))
        return self._random


def context() -> TxContext:
    """The context of the transaction running in this thread."""
    tx = LOCAL.tx
    if tx is None:
        raise NotInTransaction("context() is only available inside a transaction")
    return tx


class _Registered:
    def __init__(self, fn: Callable[..., Any], name: str | None):
        if not callable(fn):
            raise UsageError(f"{fn!r} is not callable")
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self._bound: Store | None = None
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        self._signature = inspect.signature(fn)
        params = list(self._signature.parameters.values())
        positional = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        # fast path for the common call shape "positional arguments only": a length check
        # replaces signature binding (which costs microseconds per call)
        self._min_pos = sum(1 for p in params if p.default is p.empty) if positional else 1 << 30
        self._max_pos = len(params) if positional else -1

    def check_args(self, args: tuple, kwargs: dict) -> None:
        """Reject a call that could never bind, before it is encoded and logged."""
        if not kwargs and self._min_pos <= len(args) <= self._max_pos:
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise UsageError(f"bad arguments for {self.name!r}: {exc}") from None

    def _store(self) -> Store:
        store = LOCAL.store if LOCAL.store is not None else self._bound
        if store is None:
            raise StoreError(f"{self.name!r} is not registered with any store")
        return store

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Transaction(_Registered):
    """A registered transaction function. Calling it executes it on the bound store."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if LOCAL.tx is not None:
            return self.fn(*args, **kwargs)       # nested: part of the running transaction
        store = self._bound
        if store is None:
            raise StoreError(f"transaction {self.name!r} is not registered with any store")
        return store.execute(self, *args, **kwargs)


class Query(_Registered):
    """A registered read-only query; runs under the store's reader lock."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if LOCAL.store is not None:
            return self.fn(*args, **kwargs)
        return self._store().run_query(self, *args, **kwargs)


def _decorator(kind: type[_Registered], fn: Any, name: str | None) -> Any:
    if isinstance(fn, str):          # @transaction("explicit.name")
        return lambda f: kind(f, fn)
    if fn is None:                   # @transaction(name="explicit.name")
        return lambda f: kind(f, name)
    return kind(fn, name)            # @transaction


def transaction(fn: Callable[..., Any] | str | None = None, *, name: str | None = None) -> Any:
    """Register a transaction: ``@transaction``, ``@transaction("name")`` or ``@transaction(name=...)``."""
    return _decorator(Transaction, fn, name)


def query(fn: Callable[..., Any] | str | None = None, *, name: str | None = None) -> Any:
    """Register a read-only query (same spellings as ``transaction``)."""
    return _decorator(Query, fn, name)
