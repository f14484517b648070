"""Cluster YAML: loading (validation: config_check.py).

Validation collects *every* problem as ``(path, message)`` before raising one ``ConfigError``
(Patroni's validator style), so an operator fixes a file in one pass.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bknr_cluster import defaults
from bknr_cluster.cluster.config_check import validate
from bknr_cluster.cluster.yamlfile import load_yaml
from bknr_cluster.errors import ConfigError, UnknownNode
from bknr_cluster.vocabulary import DataDirLayout, Role

# a section's keys left out of the YAML take these values (bknr_cluster/defaults.py)
DEFAULT_TIMING = {"election_timeout_ms": defaults.ELECTION_TIMEOUT_MS,
                  "heartbeat_ms": defaults.HEARTBEAT_MS}
DEFAULT_SNAPSHOT = {"threshold": defaults.SNAPSHOT_THRESHOLD,
                    "trailing": defaults.SNAPSHOT_TRAILING, "keep": defaults.SNAPSHOT_KEEP,
                    "compression": defaults.SNAPSHOT_COMPRESSION}
DEFAULT_BATCH = {"max_count": defaults.BATCH_MAX_COUNT, "max_bytes": defaults.BATCH_MAX_BYTES}
DEFAULT_CHECKPOINT = {"every": defaults.CHECKPOINT_EVERY}
DEFAULT_WSGI_THREADS = 16
DEFAULT_DRAIN_S = 10.0


@dataclass(frozen=True)
class AppConfig:
    """The hosted web application (``app:`` section; bknr_cluster/web.py, docs/web.md)."""

    spec: str                      # "package.module:attribute"
    kind: str                      # "asgi" | "wsgi"
    threads: int = DEFAULT_WSGI_THREADS   # WSGI thread pool size
    drain_s: float = DEFAULT_DRAIN_S      # how long a stopping node waits for in-flight requests

    @property
    def path(self) -> str:
        """The YAML path naming the application (for one-line errors)."""
        return f"app.{self.kind}"


@dataclass(frozen=True)
class SshConfig:
    user: str | None = None
    port: int = 22
    key_file: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: bool = True
    workdir: str | None = None
    python: str | None = None
    config_path: str | None = None  # where the cluster YAML lives on the remote host


@dataclass(frozen=True)
class NodeConfig:
    id: int
    name: str
    host: str
    raft_port: int
    api_port: int
    api_host: str
    data_dir: Path
    role: str = Role.voter.value
    ssh: SshConfig | None = None
    # pin this node's Python threads to one CPU: None (off), "auto" or a CPU number (affinity.py)
    python_cpu: int | str | None = None
    app_port: int | None = None     # the hosted application's port (None: no app)
    app_host: str | None = None

    @property
    def app_url(self) -> str:
        """Where this node serves the hosted application ("" without an ``app`` section); HTTPS
        with the node's certificate, like the API, when the cluster has a tls_dir."""
        return f"{self.api_scheme}://{self.app_host}:{self.app_port}" if self.app_port else ""
    # leadership priority: 1 preferred (takes leadership back), 0 none, -1 avoid (priority.py)
    priority: int = 0
    api_scheme: str = "http"  # "https" when the cluster has a tls_dir (tls_config.py)

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def api_url(self) -> str:
        return f"{self.api_scheme}://{self.api_host}:{self.api_port}"

    @property
    def layout(self) -> DataDirLayout[Path]:
        """Where this node's files are under its data_dir (vocabulary.py)."""
        return DataDirLayout(self.data_dir)

    @property
    def raft_dir(self) -> Path:
        return self.layout.raft_dir

    @property
    def pid_file(self) -> Path:
        return self.layout.pid_file

    @property
    def log_file(self) -> Path:
        return self.layout.log_file

    @property
    def blob_dir(self) -> Path:
        return self.layout.blob_dir

    @property
    def is_local(self) -> bool:
        return self.ssh is None


@dataclass(frozen=True)
class ClusterConfig:
    path: Path | None
    group: str
    store: str
    token_file: Path | None
    election_timeout_ms: int
    heartbeat_ms: int
    snapshot_threshold: int
    snapshot_trailing: int
    snapshot_keep: int
    batch_max_count: int
    batch_max_bytes: int
    nodes: tuple[NodeConfig, ...]
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    raft_secret_file: Path | None = None
    app: AppConfig | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT["every"]
    snapshot_compression: int = defaults.SNAPSHOT_COMPRESSION
    # how long a node of higher priority must stay caught up before the leader hands over
    priority_settle_ms: int | None = None
    # TLS and the secure-by-default rule (tls_config.py, docs/security.md)
    tls_dir: Path | None = None
    insecure: bool = False
    api_client_certs: bool = False

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClusterConfig:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ConfigError([("", f"configuration file {p} not found")]) from None
        except OSError as exc:
            raise ConfigError([("", f"cannot read {p}: {exc.strerror}")]) from None
        data = load_yaml(text, str(p))  # refuses a key written twice (yamlfile.py)
        return cls.from_dict(data, base_dir=p.resolve().parent, path=p.resolve())

    @classmethod
    def from_dict(cls, data: Any, base_dir: Path, path: Path | None = None) -> ClusterConfig:
        problems = validate(data, base_dir)
        if problems:
            raise ConfigError(problems)
        timing = {**DEFAULT_TIMING, **(data.get("timing") or {})}
        snap = {**DEFAULT_SNAPSHOT, **(data.get("snapshot") or {})}
        batch = {**DEFAULT_BATCH, **(data.get("batch") or {})}
        checkpoint = {**DEFAULT_CHECKPOINT, **(data.get("checkpoint") or {})}
        token = data.get("token_file")
        return cls(
            path=path,
            group=data["group"],
            store=data["store"],
            token_file=_resolve(base_dir, token) if token else None,
            election_timeout_ms=int(timing["election_timeout_ms"]),
            heartbeat_ms=int(timing["heartbeat_ms"]),
            snapshot_threshold=int(snap["threshold"]),
            snapshot_trailing=int(snap["trailing"]),
            snapshot_keep=int(snap["keep"]),
            batch_max_count=int(batch["max_count"]),
            batch_max_bytes=int(batch["max_bytes"]),
            nodes=tuple(_node(n, base_dir, data.get("python_cpu"), data.get("app"),
                              "https" if data.get("tls_dir") else "http")
                        for n in data["nodes"]),
            raw=data,
            raft_secret_file=_resolve(base_dir, data["raft_secret_file"])
            if data.get("raft_secret_file") else None,
            app=_app(data.get("app")),
            checkpoint_every=int(checkpoint["every"]),
            snapshot_compression=int(snap["compression"]),
            priority_settle_ms=timing.get("priority_settle_ms"),
            tls_dir=_resolve(base_dir, data["tls_dir"]) if data.get("tls_dir") else None,
            insecure=bool(data.get("insecure", False)),
            api_client_certs=bool(data.get("api_client_certs", False)),
        )

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def node(self, key: str | int) -> NodeConfig:
        """A node by name or numeric id (``"n2"``, ``2`` or ``"2"``)."""
        for n in self.nodes:
            if n.name == key or str(n.id) == str(key):
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise UnknownNode(f"unknown node {key!r} (known: {known})")

    def node_by_id(self, node_id: int) -> NodeConfig | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def token(self) -> str | None:
        """The API bearer token, or None when the cluster runs without one."""
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError([("token_file", f"cannot read {self.token_file}: {exc.strerror}")]) from None

    def raft_secret(self) -> bytes | None:
        """The shared secret of the authenticated raft transport (docs/security.md), or None."""
        f = self.raft_secret_file
        if f is None:
            return None
        where = "raft_secret_file"
        try:
            st = f.stat()
            data = f.read_bytes().strip()
        except OSError as exc:
            raise ConfigError([(where, f"cannot read {f}: {exc.strerror}")]) from None
        problems = []
        if not stat.S_ISREG(st.st_mode):
            problems.append((where, f"{f} is not a regular file"))
        if st.st_mode & 0o077:
            problems.append((where, f"{f} has mode {st.st_mode & 0o777:04o}; it must not be readable "
                             f"by group or others (chmod 600 {f})"))
        if st.st_uid != os.geteuid():
            problems.append((where, f"{f} is not owned by the user running the node"))
        if len(data) < 32:
            problems.append((where, f"{f} holds {len(data)} bytes; at least 32 are required "
                             "(bknrctl init generates one)"))
        if problems:
            raise ConfigError(problems)
        return data

    def initial_configuration(self) -> list[tuple[int, str, str]]:
        """The engine bootstrap configuration: every node listed with its role."""
        return [(n.id, n.raft_address, n.role) for n in self.nodes]

    def peers_string(self) -> str:
        return ",".join(f"{n.raft_address}:{n.id}" for n in self.nodes)


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else (base / p).resolve()


def _app(section: dict | None) -> AppConfig | None:
    if not section:
        return None
    kind = "asgi" if section.get("asgi") else "wsgi"
    return AppConfig(spec=section[kind], kind=kind,
                     threads=int(section.get("threads", DEFAULT_WSGI_THREADS)),
                     drain_s=float(section.get("drain_s", DEFAULT_DRAIN_S)))


def _node(n: dict, base_dir: Path, python_cpu: int | str | None = None,
          app: dict | None = None, api_scheme: str = "http") -> NodeConfig:
    ssh = n.get("ssh")
    ssh_cfg = None
    if ssh is not None:
        ssh_cfg = SshConfig(
            user=ssh.get("user"), port=int(ssh.get("port", 22)), key_file=ssh.get("key_file"),
            known_hosts=ssh.get("known_hosts"),
            strict_host_key_checking=bool(ssh.get("strict_host_key_checking", True)),
            workdir=ssh.get("workdir"), python=ssh.get("python"), config_path=ssh.get("config_path"))
    # A remote node's data_dir is a path on that host, so it is not resolved against this machine.
    data_dir = Path(n["data_dir"]) if ssh_cfg and Path(n["data_dir"]).is_absolute() \
        else _resolve(base_dir, n["data_dir"])
    api_host = n.get("api_host") or n["host"]
    app_port = (n.get("app_port") or app.get("port")) if app else None
    return NodeConfig(id=int(n["id"]), name=n["name"], host=n["host"], raft_port=int(n["raft_port"]),
                      api_port=int(n["api_port"]), api_host=api_host,
                      data_dir=data_dir, role=n.get("role", Role.voter.value), ssh=ssh_cfg,
                      python_cpu=n.get("python_cpu", python_cpu), priority=int(n.get("priority", 0)),
                      app_port=int(app_port) if app_port else None,
                      app_host=(n.get("app_host") or api_host) if app_port else None,
                      api_scheme=api_scheme)


__all__ = ["AppConfig", "ClusterConfig", "NodeConfig", "SshConfig", "validate"]
