"""bknrctl managing a node over SSH: a real sshd (Debian openssh-server) on a loopback port.

The test generates a host key and a user key, writes its own sshd_config and known_hosts, and
drives a one-node cluster whose node has an ``ssh`` section: init, start, status, logs, stop all go
through paramiko. A known_hosts with the wrong host key must be refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import write_yaml
from tests.cli.realcluster import client, invoke, kill_started
from tests.cli.sshd import SSHD, write_sshd_config
from tests.support import free_ports, wait_until

pytestmark = pytest.mark.skipif(not (os.path.exists(SSHD) and shutil.which("ssh-keygen")
                                     and os.geteuid() == 0), reason="needs openssh-server and root")


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip() if path.suffix else \
        Path(str(path) + ".pub").read_text().strip()


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent has not reaped it yet is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def sshd(tmp_path: Path, procs):
    d = tmp_path / "sshd"
    d.mkdir()
    host_pub = _keygen(d / "host_key")
    user_pub = _keygen(d / "user_key")
    (d / "authorized_keys").write_text(user_pub + "\n")
    os.chmod(d / "authorized_keys", 0o600)
    port = free_ports(1)[0]
    write_sshd_config(d / "sshd_config", d, "127.0.0.1", port, d / "sshd.pid")
    p = procs.start([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], log=d / "sshd.log")
    import socket

    def listening() -> bool:
        if p.poll() is not None:
            raise AssertionError((d / "sshd.log").read_text())
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_until(listening, 10, "sshd listening")
    known = d / "known_hosts"
    kind, key = host_pub.split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {kind} {key}\n")
    return {"port": port, "key_file": str(d / "user_key"), "known_hosts": str(known), "dir": d}


def test_start_status_logs_stop_over_ssh(runner, tmp_path: Path, sshd) -> None:
    remote = tmp_path / "remote"   # the "other machine's" working directory
    ssh = {"user": "root", "port": sshd["port"], "key_file": sshd["key_file"],
           "known_hosts": sshd["known_hosts"], "workdir": str(remote), "python": sys.executable}
    local = tmp_path / "local"
    local.mkdir()
    path = write_yaml(local, free_ports(2), n=1, ssh=ssh)
    assert invoke(runner, path, "validate").exit_code == 0
    started: set[int] = set()
    pid_file = remote / "data" / "n1" / "node.pid"
    try:
        r = invoke(runner, path, "init")
        assert r.exit_code == 0, r.output
        # the YAML and token were uploaded, the node was bootstrapped on the remote side
        assert (remote / "cluster.yaml").read_text() == path.read_text()
        assert (remote / "token").read_text() == (local / "token").read_text()
        assert (remote / "data" / "n1" / "raft").is_dir()
        assert not (local / "data").exists()

        r = invoke(runner, path, "start")
        assert r.exit_code == 0, r.output
        pid = int(pid_file.read_text())
        started.add(pid)
        assert f"n1: running (pid {pid}" in r.stderr
        r = invoke(runner, path, "start")
        assert r.exit_code == 0 and "already running" in r.stderr

        def leader() -> dict | None:
            r = invoke(runner, path, "status", "-o", "json")
            return json.loads(r.stdout) if r.exit_code == 0 else None
        st = wait_until(leader, 20, "the remote node leads its one-node cluster")
        assert st["leader"] == "n1" and st["summary"] == "healthy"

        r = invoke(runner, path, "logs", "n1", "-n", "20")
        assert r.exit_code == 0 and "node n1 (id 1) started" in r.stdout

        # snapshot --keep works over SSH: the remote archive keeps exactly N snapshots
        archive = remote / "data" / "n1" / "snapshots"
        for i in range(3):
            client(path, "n1").tx("open_account", f"ssh-{i}", 1)   # a new index to snapshot at
            r = invoke(runner, path, "snapshot", "-q", "--keep", "1")
            assert r.exit_code == 0 and r.stdout == "" and r.stderr == "", r.output
        assert len(list(archive.glob("snapshot-*.meta"))) == 1

        r = invoke(runner, path, "stop")
        assert r.exit_code == 0, r.output
        assert "n1: stopped" in r.stderr
        assert not pid_file.exists()
        assert not _alive(pid)
        assert invoke(runner, path, "status").exit_code == 3
    finally:
        if pid_file.exists():
            started.add(int(pid_file.read_text()))
        kill_started(path, started)


def test_unknown_host_key_is_refused(runner, tmp_path: Path, sshd) -> None:
    other = tmp_path / "other_key"
    _keygen(other)
    kind, key = Path(str(other) + ".pub").read_text().split()[:2]
    bad_known = tmp_path / "bad_known_hosts"
    bad_known.write_text(f"[127.0.0.1]:{sshd['port']} {kind} {key}\n")
    for known in (bad_known, tmp_path / "empty_known_hosts"):
        known.touch()
        ssh = {"user": "root", "port": sshd["port"], "key_file": sshd["key_file"],
               "known_hosts": str(known), "workdir": str(tmp_path / "remote"), "python": sys.executable}
        local = tmp_path / f"local-{known.name}"
        local.mkdir()
        path = write_yaml(local, free_ports(2), n=1, ssh=ssh)
        r = invoke(runner, path, "start")
        assert r.exit_code == 1, r.output
        assert "ssh root@127.0.0.1" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "remote").exists()  # nothing ran on the host
