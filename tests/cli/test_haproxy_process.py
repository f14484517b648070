"""``HaproxyProcess``: the local HAProxy of drills and the demo, started on ports it picked
itself. Such a port can be taken by someone else between the pick and HAProxy's bind; HAProxy
then exits ("cannot bind") and the ports are picked again. Ports the caller chose are not."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml
from bknrctl.lb import HaproxyProcess

from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.errors import BknrError
from tests.cli.conftest import write_yaml
from tests.support import free_ports

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
                                reason="haproxy is installed by scripts/install-deps.sh")


def _config(tmp_path: Path) -> ClusterConfig:
    ports = free_ports(9)
    path = write_yaml(tmp_path, ports[:6])
    data = yaml.safe_load(path.read_text())
    data["app"] = {"asgi": "examples.bank.web:app"}
    for node, port in zip(data["nodes"], ports[6:], strict=True):
        node["app_port"] = port
    path.write_text(yaml.safe_dump(data))
    return ClusterConfig.load(path)


def _squat(port: int) -> socket.socket:
    """Hold ``port`` the way an outgoing connection does: bound, not listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    return s


def test_picked_ports_taken_meanwhile_are_picked_again(tmp_path: Path) -> None:
    lb = HaproxyProcess(_config(tmp_path), tmp_path / "lb")
    taken = lb.write_port
    squatter = _squat(taken)
    try:
        lb.start()
        try:
            assert lb.write_port != taken
            with socket.create_connection(("127.0.0.1", lb.write_port), timeout=5):
                pass
            assert "cannot bind" in (tmp_path / "lb" / "haproxy.log").read_text()
        finally:
            lb.stop()
    finally:
        squatter.close()
    assert not (tmp_path / "lb" / "haproxy.pid").exists()


def test_ports_the_caller_chose_are_not_changed(tmp_path: Path) -> None:
    write, read = free_ports(2)
    lb = HaproxyProcess(_config(tmp_path), tmp_path / "lb", write_port=write, read_port=read)
    squatter = _squat(write)
    try:
        with pytest.raises(BknrError, match="haproxy exited with status"):
            lb.start()
    finally:
        squatter.close()
    assert lb.write_port == write and not (tmp_path / "lb" / "haproxy.pid").exists()
