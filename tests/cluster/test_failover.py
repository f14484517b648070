"""Integration tests that kill, restart, add and remove real node processes."""

from __future__ import annotations

import threading
import time

import pytest

from bknr_cluster.errors import BknrError, LeadershipLost, NotLeader, Timeout, Unreachable
from tests.cluster.harness import LocalCluster
from tests.support import wait_until


def start_cluster(tmp_path, procs, n=3, **kw) -> tuple[LocalCluster, str]:
    c = LocalCluster(tmp_path, procs, n, **kw)
    c.init()
    c.start_all()
    return c, c.wait_leader()


def transfer(cl, src: str, dst: str, amount: int, tid: str, attempts: int = 5) -> dict:
    """A bank transfer that survives a leader change: forwarded from any node, and re-sent with
    the same id after an unknown outcome (the bank applies one id at most once)."""
    for attempt in range(attempts):
        try:
            return cl.tx("transfer", src, dst, amount, tid, forward=True)
        except (LeadershipLost, NotLeader, Timeout, Unreachable):
            if attempt == attempts - 1:
                raise
            threading.Event().wait(0.2)
    raise AssertionError("unreachable")


def open_accounts(c: LocalCluster, leader: str, n: int, balance: int = 100) -> None:
    cl = c.client(leader)
    for i in range(n):
        cl.tx("open_account", f"acct{i}", balance, forward=True)


def test_init_twice_exits_2_with_a_message(tmp_path, procs):
    c = LocalCluster(tmp_path, procs, 1)
    c.init()
    r = c.run_node_cmd("n1", "--init")
    assert r.returncode == 2 and "already bootstrapped" in r.stderr


@pytest.mark.parametrize("raft_secret", [False, True], ids=["plain", "auth-transport"])
def test_kill_leader_new_leader_and_old_node_catches_up(tmp_path, procs, raft_secret):
    c, leader = start_cluster(tmp_path, procs, raft_secret=raft_secret)
    open_accounts(c, leader, 5)
    c.kill(leader)
    t0 = time.monotonic()
    new = c.wait_leader(timeout=15)
    took = time.monotonic() - t0
    assert new != leader and took < 15
    cl = c.client(new)
    for i in range(20):
        transfer(cl, "acct0", "acct1", 1, f"after-kill-{i}")
    c.start(leader)
    st = c.wait_converged(timeout=30, names=c.names)
    assert {s["applied_index"] for s in st.values()} == {st[new]["applied_index"]}
    q = c.client(leader).query("account", "acct1")
    assert q["result"]["balance"] == 120
    auth = c.status(new)["auth"]
    if raft_secret:  # the nodes really ran the authenticated transport
        assert auth and auth["accepted"] + auth["connected"] > 0 and auth["refused_in"] == 0
    else:
        assert not auth


def test_sigterm_on_the_leader_hands_over_and_removes_the_pid_file(tmp_path, procs):
    c, leader = start_cluster(tmp_path, procs)
    pid_file = c.data_dir(leader) / "node.pid"
    assert pid_file.read_text().strip() == str(c.running[leader].pid)
    assert c.stop(leader) == 0
    assert not pid_file.exists()
    new = c.wait_leader(timeout=10)
    assert new != leader
    assert "leadership transferred" in (c.data_dir(leader) / "node.log").read_text()


def test_fourth_node_joins_by_snapshot_install_then_a_node_is_removed(tmp_path, procs):
    c, leader = start_cluster(tmp_path, procs, snapshot_threshold=32, snapshot_trailing=8)
    open_accounts(c, leader, 3, balance=1000)
    cl = c.client(leader)
    for i in range(120):  # several snapshots' worth: the log no longer starts at 1
        transfer(cl, "acct0", "acct1", 1, f"t{i}")
    wait_until(lambda: c.status(leader)["snapshot_index"] > 8, 20, "a leader snapshot")
    n4 = c.add_node("voter")
    st = c.wait_converged(timeout=30)
    assert c.status(n4)["restores"] >= 1, "n4 must have been installed from a snapshot"
    conf = {m["id"]: m["role"] for m in c.status(leader)["configuration"]}
    assert conf.get(c.node_id(n4)) == "voter"
    assert c.client(n4).query("account", "acct1")["result"]["balance"] == 1120
    # remove one of the original followers; the cluster keeps committing
    victim = next(n for n in c.names if n not in (leader, n4))
    cl.call("DELETE", f"/peers/{c.node_id(victim)}")
    wait_until(lambda: c.node_id(victim) not in
               {m["id"] for m in c.status(leader)["configuration"]}, 10, "victim removed")
    c.stop(victim)
    res = cl.tx("deposit", "acct2", 5, forward=True)
    st = c.wait_converged(min_index=res["index"])
    assert set(st) == {n for n in c.names if n != victim}


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_restart_all_keeps_every_acknowledged_transaction(tmp_path, procs, stop):
    c, leader = start_cluster(tmp_path, procs, snapshot_threshold=64, snapshot_trailing=16)
    open_accounts(c, leader, 4, balance=1000)
    acked: list[str] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        cl = c.client(leader)
        for i in range(40):  # bounded: 4 writers x 40 transfers
            tid = f"w{k}-{i}"
            try:
                transfer(cl, f"acct{k}", f"acct{(k + 1) % 4}", 1, tid)
            except BknrError:
                continue
            with lock:
                acked.append(tid)
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(acked) == 160
    before = c.wait_converged()
    digest = next(iter(before.values()))["digest"]
    if stop == "sigterm":
        codes = c.stop_all()
        assert set(codes.values()) == {0}
    else:  # no clean shutdown: the state must come back from what was fsync'd
        for name in list(c.running):
            c.kill(name)
    c.start_all()
    leader = c.wait_leader()
    after = c.wait_converged(timeout=30, min_index=next(iter(before.values()))["applied_index"])
    assert {s["digest"] for s in after.values()} == {digest}
    for name in c.names:
        applied = set(c.client(name).query("applied_transfers")["result"])
        assert set(acked) <= applied
        assert c.client(name).query("total_balance")["result"] == 4000


def test_recover_after_quorum_loss_keeps_the_data(tmp_path, procs):
    import json
    c, leader = start_cluster(tmp_path, procs)
    res = c.client(leader).tx("open_account", "ann", 42)
    c.wait_converged(min_index=res["index"])
    survivor = next(n for n in c.names if n != leader)
    for name in c.names:
        if name != survivor:
            c.kill(name)
    c.stop(survivor)
    conf = [{"id": c.node_id(survivor), "address": c.raft_address(survivor), "role": "voter"}]
    bad = c.run_node_cmd(survivor, "--recover", "not json")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    r = c.run_node_cmd(survivor, "--recover", json.dumps(conf))
    assert r.returncode == 0, r.stderr
    c.start(survivor)
    assert c.wait_leader(timeout=15) == survivor
    assert c.client(survivor).query("account", "ann")["result"]["balance"] == 42
    c.client(survivor).tx("deposit", "ann", 1)
    assert [m["id"] for m in c.status(survivor)["configuration"]] == [c.node_id(survivor)]


def test_bootstrap_flag_starts_a_fresh_single_node(tmp_path, procs):
    c = LocalCluster(tmp_path, procs, 1)
    c.start("n1", "--bootstrap")
    assert c.wait_leader(timeout=15) == "n1"
    assert c.client("n1").tx("open_account", "solo")["result"]["owner"] == "solo"
    c.stop("n1")
    c.start("n1", "--bootstrap")  # already bootstrapped: starts with its state
    assert c.wait_leader(timeout=15) == "n1"
    assert c.client("n1").query("account", "solo")["result"]["owner"] == "solo"


def test_backup_restores_into_an_empty_cluster_through_the_log(tmp_path, procs):
    src, leader = start_cluster(tmp_path / "src", procs, n=1)
    for i in range(5):
        src.client(leader).tx("open_account", f"b{i}", i)
    status, (backup, headers) = src.client(leader).request("GET", "/backup", raw=True)
    assert status == 200
    digest = src.status(leader)["digest"]

    dst, dleader = start_cluster(tmp_path / "dst", procs, n=3)
    cl = dst.client(dleader)
    bad = {"X-Bknr-Sha256": "0" * 64}
    status, answer = cl.request("POST", "/restore", data=backup, headers=bad)
    assert status == 400 and "checksum" in answer["error"]
    status, answer = cl.request("POST", "/restore", data=b"garbage")
    assert status == 400
    follower = next(n for n in dst.names if n != dleader)
    status, answer = dst.client(follower).request("POST", "/restore", data=backup)
    assert status == 503 and answer["type"] == "NotLeader"
    ok = {"X-Bknr-Sha256": headers["X-Bknr-Sha256"]}
    answer = cl.call("POST", "/restore", data=backup, headers=ok)
    st = dst.wait_converged(min_index=answer["index"])
    assert {s["digest"] for s in st.values()} == {digest}
    status, answer = cl.request("POST", "/restore", data=backup, headers=ok)
    assert status == 409 and answer["type"] == "UsageError"
    assert cl.query("account", "b4")["result"]["balance"] == 4


def test_api_port_in_use_is_a_clear_error_and_leaves_no_pid_file(tmp_path, procs):
    import socket
    c = LocalCluster(tmp_path, procs, 1)
    c.init()
    with socket.socket() as s:
        s.bind(("127.0.0.1", c.node("n1")["api_port"]))
        s.listen()
        p = c.start("n1", wait=False)
        code = p.wait(30)
    assert code == 1 and "cannot serve the API" in c.log_tail("n1"), c.log_tail("n1")
    assert not (c.data_dir("n1") / "node.pid").exists()
