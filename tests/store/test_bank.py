"""The bank example used by the demo, the failover drills and the cluster tests."""

import pytest

from bknr_cluster.errors import IntegrityError
from bknr_cluster.store import Store, TxContext, from_json, to_json
from examples.bank.app import definition


@pytest.fixture
def bank():
    s = Store(None, definition=definition)
    for i, (owner, balance) in enumerate([("ann", 100), ("bob", 50)], 1):
        s.apply_record(s.encode_transaction("open_account", owner, balance), TxContext(index=i))
    return s


def test_transfer_moves_money_once(bank):
    r = bank.execute("transfer", "ann", "bob", 30, "t-1")
    assert r == {"transfer_id": "t-1", "duplicate": False, "amount": 30, "src_balance": 70, "dst_balance": 80}
    again = bank.execute("transfer", "ann", "bob", 30, "t-1")
    assert again["duplicate"] is True
    assert bank.run_query("account", "ann")["balance"] == 70
    assert bank.run_query("applied_transfers") == ["t-1"]
    assert bank.run_query("has_transfer", "t-1") and not bank.run_query("has_transfer", "t-2")
    assert bank.run_query("total_balance") == 150
    assert bank.run_query("count") == {"accounts": 2, "transfers": 1}


@pytest.mark.parametrize("args, error, message", [
    (("ann", "bob", 1000, "t"), ValueError, "insufficient funds"),
    (("ann", "zed", 1, "t"), KeyError, "no account 'zed'"),
    (("ann", "ann", 1, "t"), ValueError, "same account"),
    (("ann", "bob", 0, "t"), ValueError, "positive integer"),
])
def test_failing_transfers_change_nothing(bank, args, error, message):
    before = bank.digest()
    with pytest.raises(error, match=message):
        bank.execute("transfer", *args)
    assert bank.digest() == before and not bank.run_query("has_transfer", "t")


def test_open_and_deposit(bank):
    with pytest.raises(IntegrityError):
        bank.execute("open_account", "ann")
    assert bank.execute("deposit", "bob", 5) == 55
    assert bank.run_query("total_balance") == 155
    assert [a["owner"] for a in bank.run_query("accounts")] == ["ann", "bob"]


def test_results_are_plain_json(bank):
    result = bank.execute("transfer", "ann", "bob", 1, "t-9")
    assert to_json(result) == result and from_json(result, bank) == result
    assert bank.run_query("account", "nobody") is None
