"""A small bank: accounts, deposits and exactly-once transfers.

Used by the demo, the failover drills and the tests. Every argument and result is a plain JSON
type so the HTTP API can call it directly (``POST /tx/transfer {"args": ["ann", "bob", 5, "t-1"]}``).

Money is conserved: only ``open_account`` and ``deposit`` change ``total_balance()``. A transfer
carries a client-chosen ``transfer_id``; re-submitting the same id (a client retrying after a
lost acknowledgement) is answered from the recorded ``Transfer`` and never moves money twice,
so a checker can verify that every acknowledged transfer was applied exactly once.
"""

from __future__ import annotations

from typing import Any

from bknr_cluster.store import Index, StoreDefinition, StoreObject, context, query, transaction


class Account(StoreObject):
    owner: str = Index(unique=True)
    balance: int = 0


class Transfer(StoreObject):
    transfer_id: str = Index(unique=True)
    src: Any = None            # Account
    dst: Any = None            # Account
    amount: int = 0
    at_ns: int = 0             # the transaction's timestamp (leader clock, replayed identically)


def _account(owner: str) -> Account:
    acct = Account.by_owner(owner)
    if acct is None:
        raise KeyError(f"no account {owner!r}")
    return acct


def _check_amount(amount: int) -> None:
    if type(amount) is not int or amount <= 0:
        raise ValueError(f"amount must be a positive integer, got {amount!r}")


def _view(acct: Account) -> dict[str, Any]:
    return {"id": acct.id, "owner": acct.owner, "balance": acct.balance}


@transaction("open_account")
def open_account(owner: str, balance: int = 0) -> dict[str, Any]:
    """Create an account; an existing owner raises IntegrityError (unique index)."""
    if type(balance) is not int or balance < 0:
        raise ValueError(f"opening balance must be a non-negative integer, got {balance!r}")
    return _view(Account(owner=owner, balance=balance))


@transaction("deposit")
def deposit(owner: str, amount: int) -> int:
    """Add money to an account; returns the new balance."""
    _check_amount(amount)
    acct = _account(owner)
    acct.balance += amount
    return acct.balance


@transaction("transfer")
def transfer(src_owner: str, dst_owner: str, amount: int, transfer_id: str) -> dict[str, Any]:
    """Move ``amount`` once per ``transfer_id``; raises ValueError on insufficient funds."""
    done = Transfer.by_transfer_id(transfer_id)
    if done is not None:
        if (done.src.owner, done.dst.owner, done.amount) != (src_owner, dst_owner, amount):
            # an idempotency key names one transfer: a different one under it is a client bug
            raise ValueError(f"transfer id {transfer_id!r} was already used for another transfer")
        return {"transfer_id": transfer_id, "duplicate": True, "amount": done.amount}
    _check_amount(amount)
    if src_owner == dst_owner:
        raise ValueError("cannot transfer to the same account")
    src, dst = _account(src_owner), _account(dst_owner)
    if src.balance < amount:
        raise ValueError(f"insufficient funds: {src_owner} has {src.balance}, needs {amount}")
    src.balance -= amount
    dst.balance += amount
    Transfer(transfer_id=transfer_id, src=src, dst=dst, amount=amount, at_ns=context().timestamp_ns)
    return {"transfer_id": transfer_id, "duplicate": False, "amount": amount,
            "src_balance": src.balance, "dst_balance": dst.balance}


@query("total_balance")
def total_balance() -> int:
    return sum(a.balance for a in Account.all())


@query("account")
def account(owner: str) -> dict[str, Any] | None:
    acct = Account.by_owner(owner)
    return None if acct is None else _view(acct)


@query("accounts")
def accounts() -> list[dict[str, Any]]:
    return [_view(a) for a in Account.all()]


@query("applied_transfers")
def applied_transfers() -> list[str]:
    """Every applied transfer id, in the order they were applied."""
    return [t.transfer_id for t in Transfer.all()]


@query("has_transfer")
def has_transfer(transfer_id: str) -> bool:
    return Transfer.by_transfer_id(transfer_id) is not None


@query("count")
def count() -> dict[str, int]:
    return {"accounts": Account.count(), "transfers": Transfer.count()}


definition = StoreDefinition(
    name="bank",
    classes=[Account, Transfer],
    transactions=[open_account, deposit, transfer],
    queries=[total_balance, account, accounts, applied_transfers, has_transfer, count],
)
