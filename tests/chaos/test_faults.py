"""Short chaos suite: kill, pause, partitions and full restart on a 3-node cluster whose nodes
live in their own network namespaces, with all three workloads running and checked."""

from __future__ import annotations

import subprocess
import threading

from tests.chaos.client import call
from tests.chaos.conftest import report_on_failure
from tests.chaos.history import OK
from tests.chaos.runner import chaos_run, print_table, verdict_problems
from tests.support import wait_until


def write_acked(c, node, key, value):
    """Write until acknowledged; writing the same value again is harmless for a register."""
    wait_until(lambda: call(c.nodes[node].url, "/tx/write", {"args": [key, value]}, c.token,
                            5).status == OK, 30, f"write {key}={value} on {node}")


def request_queued(c, name) -> bool:
    """Is a request waiting, unread, in a connection to ``name``'s API port?"""
    p = subprocess.run([*c.net.exec_prefix(name), "ss", "-Htn", "state", "established",
                        f"( sport = :{c.nodes[name].api_port} )"], capture_output=True, text=True)
    return any(int(line.split()[0]) > 0 for line in p.stdout.splitlines() if line.strip())


def run_checked(cluster, tmp_path, kinds, faults, seconds, seed, check_each=False):
    report = chaos_run(cluster, seconds=seconds, max_faults=faults, seed=seed, kinds=kinds,
                       workdir=tmp_path, check_each=check_each)
    print_table(report)
    assert set(report["faults_by_kind"]) == set(kinds), report["faults_by_kind"]
    assert report["acked"] > 0, "no operation was acknowledged at all"
    assert report["faults_not_recovered"] == 0, report_on_failure(report, cluster)
    assert verdict_problems(report) == [], report_on_failure(report, cluster)
    assert report["lost"] == 0 and report["linearizable"] is True and report["digests_match"]
    return report


def test_kill_leader_and_random_node_under_load(cluster3, tmp_path):
    run_checked(cluster3, tmp_path, ["kill_leader", "kill_random"], faults=3, seconds=12, seed=1)


def test_full_cluster_crash_and_restart_under_load(cluster3, tmp_path):
    run_checked(cluster3, tmp_path, ["full_restart"], faults=2, seconds=10, seed=2)


def test_restart_then_crash_applies_nothing_twice(cluster3, tmp_path):
    """A node killed, restarted, and crashed with everyone else while it catches up: the
    pattern of the 22-minute run's silent double apply (libraft 0.22.1 lowered the restarted
    node's commit index and filed its next snapshot under it; native/DESIGN.md §1). After every
    fault the load pauses, digests are compared at one applied index, no applier may have
    refused a replayed entry, and no snapshot file may hold state past its Raft index."""
    report = run_checked(cluster3, tmp_path, ["restart_then_crash"], faults=8, seconds=40, seed=11,
                         check_each=True)
    assert report["diverged_after"] is None, report["diverged_after"]


def test_a_node_restarted_on_the_previous_version_loses_nothing_and_never_diverges(
        cluster3, tmp_path):
    """The ``old_version`` fault (issue 13): a node runs the previous version of the
    application (without ``append``) for a while under load, then the current one again. The
    leader refuses ``append`` while it knows, the old node halts on one it committed before it
    knew; after each fault the load pauses and digests are compared."""
    report = run_checked(cluster3, tmp_path, ["old_version"], faults=3, seconds=30, seed=13,
                         check_each=True)
    assert report["diverged_after"] is None, report["diverged_after"]
    assert not report["halted_at_end"] and not report["checkpoint_disagreements"]


def test_partitions_under_load(cluster3, tmp_path):
    run_checked(cluster3, tmp_path, ["isolate_leader", "majority_minority"], faults=3, seconds=12,
                seed=3)


def test_paused_leader_steps_down_and_acknowledges_nothing_stale(cluster3):
    c = cluster3
    bound = 20 * c.election_timeout_ms / 1000
    old = c.wait_leader()
    term = c.status(old)["term"]
    write_acked(c, old, "p", 1)
    answer: dict = {}
    c.pause(old)
    try:
        others = [n for n in c.nodes if n != old]
        new = c.wait_leader(bound, among=others)
        write_acked(c, new, "p", 2)       # acknowledged by the majority while the old one sleeps
        # A write sent to the sleeping leader waits in its socket until it wakes up.
        sender = threading.Thread(target=lambda: answer.update(out=call(
            c.nodes[old].url, "/tx/write", {"args": ["p", 3]}, c.token, 15)))
        sender.start()
        wait_until(lambda: c.net and request_queued(c, old), 10,
                   "the request to the paused leader to sit in its socket")
    finally:
        c.resume(old)
    # Right after waking up the old leader must not answer a consistent read with the old value.
    out = call(c.nodes[old].url, "/query/read", {"args": ["p"], "consistent": True}, c.token, 10)
    assert out.status != OK or out.result in (2, 3), f"stale read from the old leader: {out}"
    wait_until(lambda: c.status(old)["role"] != "leader" or c.status(old)["term"] > term, bound,
               "the old leader to step down")
    sender.join(30)
    late = answer["out"]
    final = c.query(c.wait_leader(), "read", "p", consistent=True)
    if late.status == OK:
        assert final == 3, f"the write acknowledged by the old leader is missing: {final}"
    elif late.status == "fail":
        assert final == 2, f"a write refused by the old leader took effect: {final}"
    else:
        assert final in (2, 3)
    sts = c.converge(60)
    digests = {n: (st["applied_index"], st["digest"]) for n, st in sts.items()}
    assert len(set(digests.values())) == 1, digests


def test_isolated_leader_acknowledges_nothing(cluster3):
    c, net = cluster3, cluster3.net
    bound = 20 * c.election_timeout_ms / 1000
    old = c.wait_leader()
    write_acked(c, old, "q", 1)
    net.isolate(old)
    try:
        others = [n for n in c.nodes if n != old]
        new = c.wait_leader(bound, among=others)
        assert new != old
        cut_off = call(c.nodes[old].url, "/tx/write", {"args": ["q", 9]}, c.token, 3)
        assert cut_off.status != OK, "an isolated leader acknowledged a write"
        stale = call(c.nodes[old].url, "/query/read", {"args": ["q"], "consistent": True}, c.token, 3)
        assert stale.status != OK, f"an isolated leader served a consistent read: {stale}"
        write_acked(c, new, "q", 2)
    finally:
        net.heal()
    # The isolated leader's entry was never committed and is overwritten once it rejoins.
    assert c.query(c.wait_leader(), "read", "q", consistent=True) == 2
    sts = c.converge(60)
    for n in c.nodes:
        assert c.query(n, "read", "q") == 2, n
    digests = {n: (st["applied_index"], st["digest"]) for n, st in sts.items()}
    assert len(set(digests.values())) == 1, digests
