"""TLS on the Raft transport (native/tls_*.cpp, docs/security.md): in-process engine nodes.

A 3-node cluster whose members hold certificates of one CA replicates; each bad input of the
bad-input table (wrong CA, expired certificate, certificate that does not name the claimed
host, a plaintext peer on the TLS port, a handshake that never finishes) is refused with one
log line and a status counter while term, log and leader stay as they were. A raw-socket
capture on loopback shows that a marker written through the cluster never crosses the wire in
clear, and that the same capture does see it without TLS (so the check can fail).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bknr_cluster.cluster import certs
from bknr_cluster.engine import RaftNode, TlsFiles
from bknr_cluster.errors import BknrError
from tests.security import tls_peer
from tests.security.capture import PacketCapture
from tests.support import free_ports, wait_until

TIMEOUT_MS = 800


def _tls_dir(root: Path, names: list[str], hosts: list[str]) -> Path:
    d = root / "tls"
    certs.create_ca(d, "test")
    for n in names:
        certs.issue_node_cert(d, n, hosts)
    return d


class EngineCluster:
    def __init__(self, root: Path, tls: bool) -> None:
        self.root = root
        ports = free_ports(3)
        self.ports = {i + 1: p for i, p in enumerate(ports)}
        conf = [(i, f"127.0.0.1:{p}", "voter") for i, p in self.ports.items()]
        d = _tls_dir(root, ["n1", "n2", "n3"], ["127.0.0.1"]) if tls else None
        self.tls_dir = d
        self.nodes = {}
        for i, a, _ in conf:
            files = TlsFiles(d / "ca.crt", d / f"n{i}.crt", d / f"n{i}.key") if d else None
            self.nodes[i] = RaftNode(i, a, str(root / f"n{i}"), election_timeout_ms=1000, heartbeat_ms=100,
                                     auth_timeout_ms=TIMEOUT_MS, tls=files)
        for n in self.nodes.values():
            n.bootstrap(conf)
            n.start()

    def leader(self) -> RaftNode:
        return wait_until(lambda: [n for n in self.nodes.values() if n.status()["state"] == "leader"],
                          20, "a leader")[0]

    def view(self) -> dict:
        out = {}
        for i, n in self.nodes.items():
            s = n.status()
            out[i] = (s["term"], s["leader_id"], s["last_log_index"], s["commit_index"])
        return out

    def counters(self, key: str) -> int:
        return sum(n.status()["auth"][key] for n in self.nodes.values())

    def stop(self) -> None:
        for n in self.nodes.values():
            n.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EngineCluster(tmp_path_factory.mktemp("tls"), tls=True)
    try:
        leader = c.leader()
        index = leader.submit(b"before").result(10)
        wait_until(lambda: all(n.status()["commit_index"] >= index for n in c.nodes.values()), 10,
                   "replication over TLS")
        yield c
    finally:
        c.stop()


def test_members_replicate_over_tls(cluster):
    leader = cluster.leader()
    index = leader.submit_many([b"x" * 50_000] * 20).result(20)
    wait_until(lambda: all(n.status()["commit_index"] >= index for n in cluster.nodes.values()), 10,
               "a 1 MB window on every member")
    st = leader.status()["auth"]
    assert st["tls"] is True
    assert st["connected"] >= 2 and st["refused_in"] == 0 and st["cert_rejected"] == 0


def _other_ca_cert(root: Path) -> tuple[Path, Path]:
    d = root / "other-ca"
    certs.create_ca(d, "other")
    certs.issue_node_cert(d, "n9", ["127.0.0.1"])
    return d / "n9.crt", d / "n9.key"


def _cert_of_the_ca(cluster: EngineCluster, name: str, hosts: list[str], **kw) -> tuple[Path, Path]:
    """A certificate signed by the cluster's own CA (in a directory of its own)."""
    d = cluster.root / name
    d.mkdir(exist_ok=True)
    for f in ("ca.crt", "ca.key"):
        (d / f).write_bytes((cluster.tls_dir / f).read_bytes())
    certs.issue_node_cert(d, name, hosts, **kw)
    return d / f"{name}.crt", d / f"{name}.key"


@pytest.mark.parametrize("case,log_text", [
    ("wrong_ca", "peer certificate rejected: unable to get local issuer certificate"),
    ("expired", "peer certificate rejected: certificate has expired"),
    ("mismatched", "peer certificate does not name 127.0.0.1, the host it claims"),
])
def test_bad_certificate_is_refused(cluster, capfd, case, log_text):
    before = cluster.view()
    rejected = cluster.counters("cert_rejected")
    three_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    cert, key = {
        "wrong_ca": lambda: _other_ca_cert(cluster.root),
        "expired": lambda: _cert_of_the_ca(cluster, "old", ["127.0.0.1"], days=1, not_before=three_days_ago),
        "mismatched": lambda: _cert_of_the_ca(cluster, "elsewhere", ["10.66.0.9"]),
    }[case]()
    outcome = tls_peer.tls_attempt(cluster.ports[1], cert, key)
    assert outcome != "open", outcome
    wait_until(lambda: cluster.counters("cert_rejected") > rejected, 5, "the cert_rejected counter")
    assert cluster.view() == before
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if log_text in ln]
    assert len(lines) == 1, err


def test_plaintext_peer_on_the_tls_port_is_refused(cluster, capfd):
    before = cluster.view()
    refused = cluster.counters("refused_in")
    s = tls_peer.connect(cluster.ports[2])
    try:
        s.sendall(b"BKNRAUC1" + b"\0" * 32 + b"raft message in clear" * 10)
        wait_until(lambda: cluster.counters("refused_in") > refused, 5, "the refused_in counter")
    finally:
        s.close()
    assert cluster.view() == before
    err = capfd.readouterr().err
    assert "the peer does not speak TLS 1.3" in err, err


def test_stalled_handshake_times_out(cluster, capfd):
    before = cluster.view()
    timeouts = cluster.counters("timeouts")
    s = tls_peer.connect(cluster.ports[3])  # preamble, then silence
    try:
        wait_until(lambda: cluster.counters("timeouts") > timeouts, 5 + TIMEOUT_MS / 1000,
                   "the handshake deadline")
        s.settimeout(2)
        assert s.recv(100) == b""  # the node hung up
    finally:
        s.close()
    assert cluster.view() == before
    assert "handshake timed out" in capfd.readouterr().err


def test_a_node_with_a_bad_key_or_expired_certificate_does_not_start(tmp_path):
    d = _tls_dir(tmp_path, ["n1", "n2"], ["127.0.0.1"])
    def start(where: str, cert: str, key: str) -> None:
        RaftNode(1, "127.0.0.1:1", str(tmp_path / where), tls=TlsFiles(d / "ca.crt", d / cert, d / key)) \
            .bootstrap([(1, "127.0.0.1:1", "voter")])

    with pytest.raises(BknrError, match="does not match certificate"):
        start("a", "n1.crt", "n2.key")
    certs.issue_node_cert(d, "old", ["127.0.0.1"], days=1,
                          not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    with pytest.raises(BknrError, match="has expired"):
        start("b", "old.crt", "old.key")


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext-control"])
def test_marker_never_crosses_loopback_in_clear(tmp_path, tls):
    c = EngineCluster(tmp_path, tls=tls)
    try:
        leader = c.leader()
        cap = PacketCapture("lo", set(c.ports.values()))
        marker = b"MARKER-7f3e9c-do-not-leak"
        try:
            index = leader.submit(b"account:" + marker).result(10)
            wait_until(lambda: all(n.status()["commit_index"] >= index for n in c.nodes.values()), 10,
                       "replication of the marker")
            wait_until(lambda: len(cap.data) > 0, 5, "captured raft traffic")
        finally:
            seen = cap.close()
        assert len(seen) > len(marker)
        if tls:
            assert marker not in seen
        else:
            assert marker in seen  # the control: the capture does see clear text
    finally:
        c.stop()


def test_a_peer_going_away_closes_the_encrypted_connection(tmp_path):
    """The TLS link passes a peer's disconnect on to libraft (and counts it): a stopped member
    shows as closed_by_peer on the others, and the remaining two keep a leader and commit."""
    c = EngineCluster(tmp_path, tls=True)
    try:
        leader = c.leader()
        index = leader.submit(b"x").result(10)
        wait_until(lambda: all(n.status()["commit_index"] >= index for n in c.nodes.values()), 10,
                   "replication")
        victim = next(i for i in c.nodes if i != leader.node_id)
        others = [n for i, n in c.nodes.items() if i != victim]
        before = sum(n.status()["auth"]["closed_by_peer"] for n in others)
        c.nodes[victim].stop()
        wait_until(lambda: sum(n.status()["auth"]["closed_by_peer"] for n in others) > before, 10,
                   "the members to see the encrypted connections closed by the stopped peer")
        assert leader.submit(b"y").result(10) > index
    finally:
        c.stop()


def test_a_member_posing_as_another_host_is_refused_both_ways(tmp_path):
    """A real engine node with a certificate of the cluster's CA that names another host than
    the one it runs on (and claims) campaigns against the members: they refuse it during the
    handshake (cert_rejected), it learns why on its side (refused_out: the peer rejected our
    certificate), and the cluster's term, leader and log are unaffected."""
    c = EngineCluster(tmp_path / "cluster", tls=True)
    rogue = None
    try:
        c.leader()
        before = c.view()
        cert, key = _cert_of_the_ca(c, "elsewhere", ["10.66.0.9"])
        port = free_ports(1)[0]
        conf = [(i, f"127.0.0.1:{p}", "voter") for i, p in c.ports.items()] + \
            [(4, f"127.0.0.1:{port}", "voter")]
        rogue = RaftNode(4, f"127.0.0.1:{port}", str(tmp_path / "rogue"), election_timeout_ms=300,
                         heartbeat_ms=30, auth_timeout_ms=TIMEOUT_MS,
                         tls=TlsFiles(c.tls_dir / "ca.crt", cert, key))
        rogue.bootstrap(conf)
        rogue.start()
        wait_until(lambda: rogue.status()["auth"]["refused_out"] >= 2, 15, "the rogue's connections refused")
        assert rogue.status()["auth"]["cert_rejected"] >= 2
        wait_until(lambda: c.counters("cert_rejected") >= 2, 10, "the members' cert_rejected")
        after = c.view()
        assert {i: v[:3] for i, v in after.items()} == {i: v[:3] for i, v in before.items()}
    finally:
        if rogue is not None:
            rogue.stop()
        c.stop()
