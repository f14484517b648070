"""The store the chaos workloads run against: registers, append-only lists and a small bank, all
in one definition so a single cluster serves all three workloads at once.

Loaded by the node processes as ``tests.chaos.chaos_app:definition``.  Transfers are recorded
with the client's transfer id in a *non-unique* index on purpose: a transfer applied twice must
show up twice for the checker, not be masked by a uniqueness error.
"""

from __future__ import annotations

import os

from bknr_cluster.store import Index, StoreDefinition, StoreObject, query, transaction


class ChaosRegister(StoreObject):
    key: str = Index(unique=True)
    value: int | None = None


class ChaosItem(StoreObject):
    list: str = Index()
    value: int = 0


class ChaosAccount(StoreObject):
    name: str = Index(unique=True)
    balance: int = 0


class ChaosPad(StoreObject):
    key: str = Index(unique=True)
    text: str = ""


class ChaosTransfer(StoreObject):
    tid: str = Index()
    frm: str = ""
    to: str = ""
    amount: int = 0


# --- register ------------------------------------------------------------------------------

@transaction("write")
def write(key: str, value: int) -> None:
    reg = ChaosRegister.by_key(key)
    if reg is None:
        ChaosRegister(key=key, value=value)
    else:
        reg.value = value


@transaction("cas")
def cas(key: str, expected: int | None, new: int) -> bool:
    """Compare-and-set; answers False (not an exception) on mismatch, so a failed CAS is an
    acknowledged operation whose result the linearizability checker can use."""
    reg = ChaosRegister.by_key(key)
    current = reg.value if reg is not None else None
    if current != expected:
        return False
    if reg is None:
        ChaosRegister(key=key, value=new)
    else:
        reg.value = new
    return True


@query("read")
def read(key: str) -> int | None:
    reg = ChaosRegister.by_key(key)
    return reg.value if reg is not None else None


# --- append ----------------------------------------------------------------------------------

@transaction("append")
def append(key: str, value: int) -> None:
    ChaosItem(list=key, value=value)


@query("list")
def list_values(key: str) -> list[int]:
    # ids grow in apply order, so id order is the list order on every replica
    return [it.value for it in ChaosItem.where(list=key)]


@query("lists")
def all_lists() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for it in ChaosItem.all():
        out.setdefault(it.list, []).append(it.value)
    return out


# --- bank ------------------------------------------------------------------------------------

@transaction("open_account")
def open_account(name: str, balance: int) -> None:
    if ChaosAccount.by_name(name) is not None:
        raise ValueError(f"account {name} exists")
    ChaosAccount(name=name, balance=balance)


@transaction("transfer")
def transfer(tid: str, frm: str, to: str, amount: int) -> None:
    a, b = ChaosAccount.by_name(frm), ChaosAccount.by_name(to)
    if a is None or b is None:
        raise ValueError("unknown account")
    if a.balance < amount:
        raise ValueError("insufficient funds")
    a.balance -= amount
    b.balance += amount
    ChaosTransfer(tid=tid, frm=frm, to=to, amount=amount)


@query("bank")
def bank_state() -> dict:
    """Balances and the applied transfer ids, read together under one reader lock."""
    return {"balances": {a.name: a.balance for a in ChaosAccount.all()},
            "applied": [t.tid for t in ChaosTransfer.all()]}


@query("balances")
def balances() -> dict[str, int]:
    return {a.name: a.balance for a in ChaosAccount.all()}


@transaction("pad")
def pad(key: str, text: str) -> None:
    """Large entries on demand: the disk-full fault needs the log to grow fast."""
    p = ChaosPad.by_key(key)
    if p is None:
        ChaosPad(key=key, text=text)
    else:
        p.text = text


@query("ping")
def ping() -> bool:
    return True


# The nemesis's ``old_version`` fault restarts a node with BKNR_CHAOS_APP_VERSION=1: the
# previous version of this application, which does not have ``append`` yet (same classes, so
# the checkpoint digests stay comparable). Read at import, as a deployment picks up new code.
VERSION = os.environ.get("BKNR_CHAOS_APP_VERSION", "2")

definition = StoreDefinition(
    name="chaos",
    classes=[ChaosRegister, ChaosItem, ChaosAccount, ChaosTransfer, ChaosPad],
    transactions=[write, cas, open_account, transfer, pad] + ([append] if VERSION != "1" else []),
    queries=[read, list_values, all_lists, bank_state, balances, ping],
    version=f"{VERSION}.0",
)
