"""TLS and secure-by-default rules of a cluster YAML (docs/security.md).

Layout of ``tls_dir`` (created by ``bknrctl init``, see ``certs.py``): ``ca.crt`` (the cluster
CA), ``ca.key`` (needed only where certificates are issued: the operator's host),
``<node>.crt``/``<node>.key`` per node (raft transport, API and app server, and the node's own
API calls to the leader) and ``client.crt``/``client.key`` (``bknrctl`` and other clients,
used when ``api_client_certs: true``).

Everything here reads the configuration only; ``security_problems`` is what ``bknrctl
validate`` and ``bknr-node`` report, ``require_secure`` is the start-up gate.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from pathlib import Path
from typing import Any

from bknr_cluster.cluster import certs
from bknr_cluster.engine import TlsFiles
from bknr_cluster.errors import ConfigError

CLIENT = "client"  # the name of the client certificate in tls_dir
MIN_TOKEN = 32     # characters; bknrctl init writes token_urlsafe(32) (43 characters)
MIN_SECRET = 32


def _tls_dir(cfg: Any) -> Path | None:
    return getattr(cfg, "tls_dir", None)


def raft_tls_files(cfg: Any, node: Any) -> TlsFiles | None:
    """The PEM files of `node`'s TLS raft transport, or None when the cluster has no tls_dir."""
    d = _tls_dir(cfg)
    if d is None:
        return None
    return TlsFiles(d / certs.CA_CERT, d / certs.node_cert_name(node.name),
                    d / certs.node_key_name(node.name))


def server_ssl_context(cfg: Any, node: Any) -> ssl.SSLContext | None:
    """TLS for `node`'s HTTP servers (admin API, hosted app): its own certificate; client
    certificates of the cluster CA are verified when offered, and required when the YAML says
    ``api_client_certs: true``. None without a tls_dir."""
    files = raft_tls_files(cfg, node)
    if files is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(files.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if getattr(cfg, "api_client_certs", False) else ssl.CERT_OPTIONAL
    return ctx


def app_ssl_context(cfg: Any, node: Any) -> ssl.SSLContext | None:
    """TLS for `node`'s hosted application: the same certificate as its API, but no client
    certificate is asked for (customers' browsers and the load balancer hold none; who may do
    what there is the application's business). None without a tls_dir."""
    ctx = server_ssl_context(cfg, node)
    if ctx is not None:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_ssl_context(cfg: Any, node: Any | None = None) -> ssl.SSLContext | None:
    """TLS for calls to the cluster's API: the server must present a certificate of the cluster
    CA naming the host we dial. Offers a client certificate when ``api_client_certs`` is on:
    `node`'s own (a node calling the leader) or ``client.crt`` (bknrctl, clients)."""
    d = _tls_dir(cfg)
    if d is None or not (d / certs.CA_CERT).is_file():
        # before `bknrctl init`: https clients fall back to the system trust store, which does
        # not know the cluster CA, so they refuse the nodes rather than trust them blindly
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(d / certs.CA_CERT))
    if getattr(cfg, "api_client_certs", False):
        name = node.name if node is not None else CLIENT
        ctx.load_cert_chain(d / certs.node_cert_name(name), d / certs.node_key_name(name))
    return ctx


def tls_upload(cfg: Any, node: Any) -> list[str]:
    """The TLS files `node` needs on its own host, relative to the YAML (what bknrctl uploads
    over SSH): the CA certificate, the node's certificate and key. Empty when the cluster has
    no tls_dir or it is an absolute path (then the operator deploys it)."""
    rel = cfg.raw.get("tls_dir") if isinstance(getattr(cfg, "raw", None), dict) else None
    if not isinstance(rel, str) or not rel or os.path.isabs(os.path.expanduser(rel)):
        return []
    return [f"{rel.rstrip('/')}/{f}" for f in (certs.CA_CERT, certs.node_cert_name(node.name),
                                              certs.node_key_name(node.name))]


# --- checks -------------------------------------------------------------------------------------


# A problem is (path, message, missing): `missing` marks files not created yet, which
# `bknrctl init` makes; validate lists them as warnings, a node refuses to start without them.
Problem = tuple[str, str, bool]


def _private_file_problems(where: str, f: Path, min_len: int = 0) -> list[Problem]:
    try:
        st = f.stat()
    except FileNotFoundError:
        return [(where, f"{f} is missing (bknrctl init creates it)", True)]
    except OSError as exc:
        return [(where, f"{f}: {exc.strerror}", False)]
    out = []
    if not stat.S_ISREG(st.st_mode):
        out.append((where, f"{f} is not a regular file", False))
    if st.st_mode & 0o077:
        out.append((where, f"{f} has mode {st.st_mode & 0o777:04o}; it must not be readable by group "
                    f"or others (chmod 600 {f})", False))
    if st.st_uid != os.geteuid():
        out.append((where, f"{f} is not owned by the user running the node", False))
    if min_len and stat.S_ISREG(st.st_mode):
        try:
            n = len(f.read_bytes().strip())
        except OSError as exc:
            return out + [(where, f"cannot read {f}: {exc.strerror}", False)]
        if n < min_len:
            out.append((where, f"{f} holds {n} bytes; at least {min_len} are required (bknrctl init "
                        "generates one)", False))
    return out


def _names_host(info: certs.CertInfo, host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
        return any(_same_ip(h, ip) for h in info.hosts)
    except ValueError:
        return host.lower() in (h.lower() for h in info.hosts)


def _same_ip(h: str, ip: Any) -> bool:
    try:
        return ipaddress.ip_address(h) == ip
    except ValueError:
        return False


def _cert_problems(cfg: Any, node: Any) -> list[Problem]:
    files = raft_tls_files(cfg, node)
    if files is None:
        return []
    where = f"tls_dir ({node.name})"
    out: list[Problem] = []
    for f in (Path(files.ca), Path(files.cert)):
        if not f.is_file():
            out.append((where, f"{f} is missing (bknrctl init creates it)", True))
    out += _private_file_problems(where, Path(files.key))
    if out:
        return out
    try:
        info = certs.read_cert(Path(files.cert))
    except ValueError as exc:
        return [(where, f"{files.cert} is not a PEM certificate: {exc}", False)]
    if info.expired:
        out.append((where, f"{files.cert} expired on {info.not_after:%Y-%m-%d} (bknrctl certs rotate)",
                    False))
    if not certs.signed_by(Path(files.cert), Path(files.ca)):
        out.append((where, f"{files.cert} is not signed by the cluster CA {files.ca}", False))
    for host in dict.fromkeys((node.host, node.api_host, *([node.app_host] if node.app_host else []))):
        if not _names_host(info, host):
            out.append((where, f"{files.cert} does not name {host} (its hosts: {', '.join(info.hosts)}); "
                        "bknrctl certs rotate issues one from the YAML", False))
    return out


def check_security(cfg: Any, nodes: list[Any] | None = None) -> list[Problem]:
    """Every security problem of the configuration, for `bknrctl validate` and bknr-node:
    missing or weak token and secret files, wrong modes, node certificates that are missing,
    expired, not of the CA or not naming the node's hosts, and no TLS or no token without
    ``insecure: true``. `nodes` limits the certificate checks (default: every node; their
    files are in tls_dir on the operator's host)."""
    if getattr(cfg, "insecure", False):
        return []  # asked for explicitly: no TLS, no token, and no checks of what is there
    out: list[Problem] = []
    token_file = getattr(cfg, "token_file", None)
    if token_file is not None:
        out += _private_file_problems("token_file", token_file, MIN_TOKEN)
    else:
        out.append(("token_file", "required: the API would accept any caller (bknrctl init creates one; "
                    "or set insecure: true)", False))
    secret_file = getattr(cfg, "raft_secret_file", None)
    if secret_file is not None:
        out += _private_file_problems("raft_secret_file", secret_file, MIN_SECRET)
    if _tls_dir(cfg) is None:
        out.append(("tls_dir", "required: without it raft and API traffic travels in clear "
                    "(bknrctl init creates the CA and node certificates; or set insecure: true)", False))
    else:
        for node in nodes if nodes is not None else cfg.nodes:
            out += _cert_problems(cfg, node)
    return out


def require_secure(cfg: Any, node: Any) -> None:
    """Refuse to run `node` with a configuration that has a security problem (ConfigError)."""
    problems = check_security(cfg, [node])
    if problems:
        raise ConfigError([(p, m) for p, m, _ in problems])
