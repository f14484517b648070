"""HTTPS on the hosted application's port (issue 18): a secure cluster serves the bank with each
node's certificate of the cluster CA; customers verify it; plain HTTP and clients that do not
know the CA get nothing; the haproxy.cfg of ``bknrctl lb haproxy`` talks TLS to the application
and to the health checks, and still follows the leader (docs/security.md, docs/load-balancing.md)."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bknr_cluster.cluster.client import ApiClient
from bknr_cluster.cluster.tls_config import client_ssl_context
from tests.support import free_ports, wait_until
from tests.web.secure import ca_context, https, secure_app_cluster
from tests.web.test_haproxy import HAPROXY, lb_haproxy, start_haproxy
from tests.web.test_hosted_app import http


def _plaintext_answer(host: str, port: int) -> bytes:
    """What a plain-HTTP request to ``host:port`` gets back before the server closes."""
    got = b""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /accounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
    return got


@pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs haproxy (scripts/install-deps.sh)")
def test_app_port_is_https_verified_and_haproxy_talks_tls(tmp_path: Path, procs) -> None:
    with secure_app_cluster(tmp_path) as cfg:
        ctx = ca_context(cfg)
        assert all(n.app_url.startswith("https://127.0.0.1:") for n in cfg.nodes)
        api = ApiClient(cfg.nodes[0].api_url, cfg.token(), ssl_context=client_ssl_context(cfg))
        st, body = https(cfg.nodes[0].app_url + "/accounts", ctx)
        assert st == 200 and body["node"] == "n1", body

        # writes over HTTPS, on the leader and forwarded from a follower
        for n, owner in zip(cfg.nodes, ("ann", "bob", "cy"), strict=True):
            st, body = https(n.app_url + "/accounts", ctx, {"owner": owner, "balance": 100})
            assert st == 200, (n.name, body)
        st, body = https(cfg.nodes[1].app_url + "/transfers", ctx,
                         {"from": "ann", "to": "bob", "amount": 7}, {"Idempotency-Key": "tls-1"})
        assert st == 200 and body["duplicate"] is False, body

        # a client that does not know the cluster CA refuses the node
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(cfg.nodes[0].app_url + "/accounts", timeout=10,
                                   context=ssl.create_default_context())
        # plain HTTP to the TLS port gets no HTTP answer at all: dropped in the handshake
        host, port = cfg.nodes[0].app_host, cfg.nodes[0].app_port
        assert not _plaintext_answer(host, port).startswith(b"HTTP/")
        assert https(cfg.nodes[0].app_url + "/accounts", ctx)[0] == 200   # still serving
        log = (cfg.nodes[0].data_dir / "node.log").read_text(errors="replace")
        assert "Traceback" not in log and "Fatal error" not in log

        # HAProxy in front: TLS to the application ports and to the /leader checks
        write, read = free_ports(2)
        conf = tmp_path / "haproxy.cfg"
        text = lb_haproxy(cfg.path, conf, write, read)
        ca = cfg.tls_dir / "ca.crt"
        # handshakes must fit the check interval and the connect timeout (docs/load-balancing.md)
        assert "default-server inter 100ms fastinter 50ms" in text and "timeout connect 400ms" in text
        for n in cfg.nodes:
            assert (f"server {n.name} 127.0.0.1:{n.app_port} check addr 127.0.0.1 port {n.api_port} "
                    f"check-ssl ssl verify required ca-file {ca}") in text
            assert f"server {n.name}-any 127.0.0.1:{n.app_port} backup ssl verify required" in text
        start_haproxy(procs, conf, write)
        front, replicas = f"http://127.0.0.1:{write}", f"http://127.0.0.1:{read}"

        def served_by(url: str) -> str:
            st, body, _ = http(url + "/accounts")
            return body["node"] if st == 200 else ""

        def leader_now() -> str:
            return cfg.node_by_id(api.status(False)["leader_id"]).name  # type: ignore[union-attr]
        old = leader_now()
        wait_until(lambda: served_by(front) == old, 10, "the write frontend on the leader")
        st, body, _ = http(front + "/transfers", {"from": "ann", "to": "bob", "amount": 3},
                           {"Idempotency-Key": "tls-lb-1"})
        assert st == 200 and body["duplicate"] is False, body
        followers = {n.name for n in cfg.nodes} - {old}
        wait_until(lambda: {served_by(replicas) for _ in range(6)} == followers, 10,
                   "reads spread over both replicas (their /replica checks pass over TLS)")
        # the checks keep working: the write frontend follows a switchover
        on_leader = ApiClient(cfg.node(old).api_url, cfg.token(), ssl_context=client_ssl_context(cfg))
        new = on_leader.call("POST", "/transfer", {"to": 0})["leader_id"]
        new_name = cfg.node_by_id(new).name  # type: ignore[union-attr]
        assert new_name != old
        wait_until(lambda: served_by(front) == new_name, 10, "the write frontend on the new leader")
        st, body, _ = http(front + "/transfers", {"from": "ann", "to": "bob", "amount": 3},
                           {"Idempotency-Key": "tls-lb-1"})
        assert st == 200 and body["duplicate"] is True, body
