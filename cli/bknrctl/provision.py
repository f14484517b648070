"""The files ``init`` creates before a node can start: the API token, the Raft transport secret
and the TLS certificates (CA, one per node, one for clients). Never overwrites one."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from bknr_cluster.cluster import certs
from bknr_cluster.cluster.config import ClusterConfig, NodeConfig
from bknr_cluster.cluster.tls_config import CLIENT
from bknr_cluster.errors import ConfigError

from .output import info


def _create_secret(path: Path, content: str) -> bool:
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL + 0600: never overwrite a secret, never leave it readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content + "\n")
    return True


def ensure_token(cfg: ClusterConfig) -> bool:
    """Create the API token file (and the Raft transport secret and the TLS certificates,
    when the YAML names them)."""
    made = False
    secret = cfg.raw.get("raft_secret_file") if isinstance(cfg.raw, dict) else None
    if isinstance(secret, str) and secret:
        p = Path(os.path.expanduser(secret))
        p = p if p.is_absolute() else cfg.base_dir / p
        if _create_secret(p, secrets.token_hex(32)):
            info(f"created Raft transport secret {p}")
    if cfg.token_file is not None:
        made = _create_secret(cfg.token_file, secrets.token_urlsafe(32))
    ensure_certs(cfg)
    return made


def tls_dir(cfg: ClusterConfig) -> Path:
    if cfg.tls_dir is None:
        raise ConfigError([("tls_dir", "the cluster has no tls_dir: add `tls_dir: tls` to the YAML")])
    return cfg.tls_dir


def node_hosts(node: NodeConfig) -> list[str]:
    """The names a node's certificate carries: its raft, API and application hosts (plus
    localhost on loopback)."""
    hosts = list(dict.fromkeys([node.host, node.api_host, *([node.app_host] if node.app_host else [])]))
    try:
        if any(ipaddress.ip_address(h).is_loopback for h in hosts):
            hosts.append("localhost")
    except ValueError:
        pass
    return hosts


def issue(cfg: ClusterConfig, node: NodeConfig) -> None:
    certs.issue_node_cert(tls_dir(cfg), node.name, node_hosts(node))


def ensure_certs(cfg: ClusterConfig) -> None:
    """Create what is missing in tls_dir: the CA, a certificate per node and one for clients."""
    if cfg.tls_dir is None:
        return
    d = cfg.tls_dir
    if not (d / certs.CA_CERT).exists():
        certs.create_ca(d, cfg.group)
        info(f"created cluster CA {d / certs.CA_CERT}")
    for n in cfg.nodes:
        if not (d / certs.node_cert_name(n.name)).exists():
            issue(cfg, n)
            info(f"created certificate {d / certs.node_cert_name(n.name)} ({', '.join(node_hosts(n))})")
    if not (d / certs.node_cert_name(CLIENT)).exists():
        certs.issue_node_cert(d, CLIENT, ["bknrctl"])
        info(f"created client certificate {d / certs.node_cert_name(CLIENT)}")
