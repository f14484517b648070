"""Engine snapshots whose store image is a zstd frame (native/fsm.cpp, format 2).

libraft writes a Raft snapshot in one write and one fsync; compressing the store image shrinks
that write (and an install's transfer). A compressed snapshot must mean exactly what an
uncompressed one does: a node installed from one, or restarted onto its own, holds the same
state; a damaged one halts the replica instead of being applied; a cluster whose members do not
all read the format keeps writing the old one (cluster/DESIGN.md, "Compressed snapshots").
"""

from __future__ import annotations

import struct
from pathlib import Path

from bknr_cluster.cluster.definition import COMPRESSED_SNAPSHOTS, Capabilities
from tests.cluster.harness import LocalCluster
from tests.support import wait_until


def _raft_snapshots(c: LocalCluster, name: str) -> list[Path]:
    raft = c.data_dir(name) / "raft"
    return sorted((p for p in raft.glob("snapshot-*") if p.suffix != ".meta"),
                  key=lambda p: int(p.name.split("-")[2]))


def _format(path: Path) -> int:
    head = path.read_bytes()[:16]
    assert head[:8] == b"BKNRSNP1", f"{path.name} is not an engine snapshot"
    return struct.unpack("<Q", head[8:16])[0]


def _load(c: LocalCluster, leader: str, n: int = 300) -> None:
    cl = c.client(leader)
    for i in range(n):
        cl.tx("open_account", f"acct{i}", 10 + i)


def test_compressed_snapshots_install_and_restore_the_same_state(tmp_path, procs):
    c = LocalCluster(tmp_path, procs, 3)
    c.init()
    c.start_all()
    leader = c.wait_leader()
    c.wait_definitions(leader)  # the gate: every member's build publishes that it reads them
    _load(c, leader)
    c.wait_converged(timeout=30)
    c.client(leader).call("POST", "/snapshot", {})
    snaps = _raft_snapshots(c, leader)
    assert snaps and _format(snaps[-1]) == 2
    st = c.status(leader, digest=False)
    assert st["store_snapshot_compress_ms"] is not None and st["store_snapshot_failures"] == 0

    n4 = c.add_node("voter")  # installed from the leader's compressed snapshot
    conv = c.wait_converged(timeout=60)
    assert len({s["digest"] for s in conv.values()}) == 1
    assert c.status(n4, digest=False)["restores"] == 1
    assert c.client(n4).query("account", "acct299")["result"]["balance"] == 309

    # the leader restarts onto its own compressed snapshot (and the log after it)
    c.stop(leader)
    c.start(leader)
    conv = c.wait_converged(timeout=60)
    assert len({s["digest"] for s in conv.values()}) == 1
    again = c.status(leader, digest=False)
    assert again["restores"] >= 1 and again["halted"] is None


def test_compression_off_writes_the_uncompressed_format(tmp_path, procs):
    c = LocalCluster(tmp_path, procs, 3)
    c.data["snapshot"]["compression"] = 0
    c.write()
    c.init()
    c.start_all()
    leader = c.wait_leader()
    c.wait_definitions(leader)
    _load(c, leader, 50)
    c.client(leader).call("POST", "/snapshot", {})
    assert _format(_raft_snapshots(c, leader)[-1]) == 1


def test_a_damaged_compressed_image_halts_the_replica_instead_of_loading(tmp_path, procs):
    c = LocalCluster(tmp_path, procs, 3)
    c.init()
    c.start_all()
    leader = c.wait_leader()
    c.wait_definitions(leader)
    _load(c, leader, 200)
    c.wait_converged(timeout=30)
    victim = next(n for n in c.names if n != leader)
    c.client(victim).call("POST", "/snapshot", {})
    snap = _raft_snapshots(c, victim)[-1]
    assert _format(snap) == 2
    c.stop(victim)
    data = bytearray(snap.read_bytes())
    store_len = struct.unpack("<Q", data[24:32])[0]
    # one byte in the middle of the frame's compressed blocks (its header stays readable)
    data[48 + store_len // 2] ^= 0x5A
    snap.write_bytes(bytes(data))
    c.start(victim, wait=False)
    wait_until(lambda: _halted(c, victim), 30, f"{victim} halted on its damaged snapshot")
    halted = c.status(victim, digest=False)["halted"]
    assert halted["kind"] == "snapshot" and "damaged" in halted["reason"]


def _halted(c: LocalCluster, name: str) -> bool:
    try:
        return c.status(name, digest=False)["halted"] is not None
    except Exception:  # still starting
        return False


def _caps(own_features: list[str], voters: list[int],
          members: dict[int, list[str]]) -> Capabilities:
    own = {"transactions": ["t"], "features": own_features}
    caps = Capabilities(own, node_id=1)
    for node_id, features in members.items():
        caps.publish(node_id, {"transactions": ["t"], "features": features}, index=node_id)
    caps.set_voters(voters)
    return caps


def test_the_gate_needs_every_voter_published_and_reading_the_format():
    f = COMPRESSED_SNAPSHOTS
    assert _caps([f], [1, 2, 3], {1: [f], 2: [f], 3: [f]}).all_have(f)
    assert not _caps([f], [1, 2, 3], {1: [f], 2: [f], 3: []}).all_have(f)  # an older build
    assert not _caps([f], [1, 2, 3], {1: [f], 2: [f]}).all_have(f)  # 3 not published yet
    assert not _caps([f], [1, 2], {1: [f], 2: [f], 4: ["BKB1"]}).all_have(f)  # a non-voter
    assert not _caps([f], [], {1: [f]}).all_have(f)  # the configuration not known yet
    assert _caps([f], [1], {}).all_have(f)  # a single node: its own build decides
