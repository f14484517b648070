"""Cluster YAML: loading and validation.

Validation collects *every* problem as ``(path, message)`` before raising one ``ConfigError``
(Patroni's validator style), so an operator fixes a file in one pass.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bknr_cluster.cluster.affinity import check_spec
from bknr_cluster.cluster.yamlfile import load_yaml
from bknr_cluster.errors import ConfigError, UnknownNode, UsageError
from bknr_cluster.vocabulary import ROLE_CHOICES, ROLES, DataDirLayout, Role

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
STORE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

DEFAULT_TIMING = {"election_timeout_ms": 1000, "heartbeat_ms": 100}
DEFAULT_SNAPSHOT = {"threshold": 10000, "trailing": 2000, "keep": 3}
DEFAULT_BATCH = {"max_count": 512, "max_bytes": 1 << 20}
APP_KEYS = {"asgi", "wsgi", "threads", "port", "drain_s"}
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
# consistency checkpoints through the log every N applied entries (0: only on demand)
DEFAULT_CHECKPOINT = {"every": 10000}


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


# --- validation -------------------------------------------------------------------------------


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _check_host(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a host name or IP address"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", value):
        return f"{value!r} is not a valid host name or IP address"
    return None


def validate(data: Any, base_dir: Path) -> list[tuple[str, str]]:
    """Every problem in a parsed cluster YAML, as ``(path, message)``; empty when valid."""
    out: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        return [("", "the configuration must be a mapping with 'group', 'store' and 'nodes'")]
    known = {"group", "store", "token_file", "raft_secret_file", "timing", "snapshot", "batch", "nodes",
             "python_cpu", "app", "checkpoint", "tls_dir", "insecure", "api_client_certs"}
    for key in sorted(set(data) - known):
        out.append((str(key), "unknown key"))

    group = data.get("group")
    if group is None:
        out.append(("group", "required"))
    elif not isinstance(group, str) or not NAME_RE.match(group):
        out.append(("group", "must be a name of letters, digits, '_', '.', '-' (max 63)"))

    store = data.get("store")
    if store is None:
        out.append(("store", "required (module:attribute of a StoreDefinition)"))
    elif not isinstance(store, str) or not STORE_RE.match(store):
        out.append(("store", f"{store!r} must look like 'package.module:definition'"))

    for key in ("token_file", "raft_secret_file", "tls_dir"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            out.append((key, "must be a file path"))
    for key in ("insecure", "api_client_certs"):
        if key in data and not isinstance(data[key], bool):
            out.append((key, "must be true or false"))

    if (msg := _check_python_cpu(data.get("python_cpu"))):
        out.append(("python_cpu", msg))
    out += _validate_section(data.get("timing"), "timing", {
        "election_timeout_ms": (20, 600_000), "heartbeat_ms": (1, 60_000),
        "priority_settle_ms": (0, 3_600_000)})
    timing = {**DEFAULT_TIMING, **(data.get("timing") or {})} if isinstance(data.get("timing"), dict | None) \
        else DEFAULT_TIMING
    et, hb = timing.get("election_timeout_ms"), timing.get("heartbeat_ms")
    if _int_in(et, 20, 600_000) and _int_in(hb, 1, 60_000) and hb * 2 > et:
        out.append(("timing.heartbeat_ms",
                    f"{hb} ms must be at most half the election timeout ({et} ms)"))
    out += _validate_section(data.get("snapshot"), "snapshot", {
        "threshold": (2, 10**9), "trailing": (0, 10**9), "keep": (1, 1000)})
    out += _validate_section(data.get("batch"), "batch", {
        "max_count": (1, 65536), "max_bytes": (1024, 1 << 30)})
    out += _validate_section(data.get("checkpoint"), "checkpoint", {"every": (0, 10**9)})

    app = data.get("app")
    out += _validate_app(app)
    nodes = data.get("nodes")
    if nodes is None:
        out.append(("nodes", "required: a list of nodes"))
    elif not isinstance(nodes, list) or not nodes:
        out.append(("nodes", "must be a non-empty list of nodes"))
    else:
        out += _validate_nodes(nodes, app if isinstance(app, dict) else None)
    return out


def _validate_app(app: Any) -> list[tuple[str, str]]:
    """The ``app`` section's own keys; per-node ports are checked with the nodes."""
    if app is None:
        return []
    if not isinstance(app, dict):
        return [("app", "must be a mapping, e.g. {asgi: 'package.module:app', port: 9101}")]
    out = [(f"app.{key}", "unknown key") for key in sorted(set(app) - APP_KEYS)]
    kinds = [k for k in ("asgi", "wsgi") if k in app]
    if len(kinds) != 1:
        out.append(("app", "needs exactly one of 'asgi' or 'wsgi' (module:attribute)"))
    for kind in kinds:
        if not isinstance(app[kind], str) or not STORE_RE.match(app[kind]):
            out.append((f"app.{kind}", f"{app[kind]!r} must look like 'package.module:app'"))
    if "threads" in app:
        if "wsgi" not in app:
            out.append(("app.threads", "only for a 'wsgi' application (ASGI runs on the event loop)"))
        elif not _int_in(app["threads"], 1, 1024):
            out.append(("app.threads", "must be an integer in [1, 1024]"))
    if "port" in app and not _int_in(app["port"], 1, 65535):
        out.append(("app.port", "must be a port number in [1, 65535]"))
    drain = app.get("drain_s")
    if drain is not None and (isinstance(drain, bool) or not isinstance(drain, int | float)
                              or not 0 <= drain <= 3600):
        out.append(("app.drain_s", "must be a number of seconds in [0, 3600]"))
    return out


def _check_python_cpu(value: Any) -> str | None:
    try:
        check_spec(value)  # the one rule, shared with ClusterStore (affinity.py)
    except UsageError:
        return "must be 'auto', a CPU number or null"
    return None


def _check_app_port(n: dict, p: str, app: dict | None,
                    binds: list[tuple[str, str, str, int]]) -> list[tuple[str, str]]:
    """The node's application port: required with an ``app`` section; added to ``binds``, the
    listeners checked for clashes together with the raft and API ports."""
    if app is None:
        return [(f"{p}.{key}", "needs an 'app' section") for key in ("app_port", "app_host") if key in n]
    port = n.get("app_port", app.get("port"))
    where = f"{p}.app_port" if "app_port" in n else "app.port"
    if port is None:
        return [(f"{p}.app_port", "required with an 'app' section (or set app.port)")]
    if not _int_in(port, 1, 65535):
        return [] if where == "app.port" else [(where, "must be a port number in [1, 65535]")]
    host = n.get("app_host") or n.get("api_host") or n.get("host")
    binds.append((f"{p}.app_port", _machine(n, n.get("host")), host, port))
    return []


def _validate_section(section: Any, name: str, fields: dict[str, tuple[int, int]]) -> list:
    if section is None:
        return []
    if not isinstance(section, dict):
        return [(name, "must be a mapping")]
    out = []
    for key in sorted(set(section) - set(fields)):
        out.append((f"{name}.{key}", "unknown key"))
    for key, (lo, hi) in fields.items():
        if key in section and not _int_in(section[key], lo, hi):
            out.append((f"{name}.{key}", f"must be an integer in [{lo}, {hi}]"))
    return out


NODE_KEYS = {"id", "name", "host", "raft_port", "api_port", "api_host", "data_dir", "role", "ssh",
             "python_cpu", "app_port", "app_host", "priority"}
SSH_KEYS = {"user", "port", "key_file", "known_hosts", "strict_host_key_checking", "workdir",
            "python", "config_path"}


def _validate_nodes(nodes: list, app: dict | None = None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: dict[str, dict[Any, str]] = {"id": {}, "name": {}, "data_dir": {}}

    def unique(kind: str, value: Any, path: str, label: str) -> None:
        if value in seen[kind]:
            out.append((path, f"{label} already used by {seen[kind][value]}"))
        else:
            seen[kind][value] = path.rsplit(".", 1)[0]

    voters = 0
    binds: list[tuple[str, str, str, int]] = []  # (path, machine, host, port) of every listener
    for i, n in enumerate(nodes):
        p = f"nodes[{i}]"
        if not isinstance(n, dict):
            out.append((p, "must be a mapping"))
            continue
        for key in sorted(set(n) - NODE_KEYS):
            out.append((f"{p}.{key}", "unknown key"))
        for key in ("id", "name", "host", "raft_port", "api_port", "data_dir"):
            if key not in n:
                out.append((f"{p}.{key}", "required"))
        if "id" in n:
            if not _int_in(n["id"], 1, 2**63 - 1):
                out.append((f"{p}.id", "must be a positive integer"))
            else:
                unique("id", n["id"], f"{p}.id", f"id {n['id']}")
        if "name" in n:
            if not isinstance(n["name"], str) or not NAME_RE.match(n["name"]):
                out.append((f"{p}.name", "must be a name of letters, digits, '_', '.', '-'"))
            else:
                unique("name", n["name"], f"{p}.name", f"name {n['name']!r}")
        for key in ("host", "api_host", "app_host"):
            if key in n and (msg := _check_host(n[key])):
                out.append((f"{p}.{key}", msg))
        host = n.get("host")
        for key, kind in (("raft_port", "raft"), ("api_port", "api")):
            if key in n:
                if not _int_in(n[key], 1, 65535):
                    out.append((f"{p}.{key}", "must be a port number in [1, 65535]"))
                else:
                    bind_host = host if kind == "raft" else (n.get("api_host") or host)
                    binds.append((f"{p}.{key}", _machine(n, host), bind_host, n[key]))
        out += _check_app_port(n, p, app, binds)
        if "data_dir" in n:
            if not isinstance(n["data_dir"], str) or not n["data_dir"]:
                out.append((f"{p}.data_dir", "must be a directory path"))
            else:
                unique("data_dir", (host, n["data_dir"]), f"{p}.data_dir",
                       f"data_dir {n['data_dir']!r} on {host}")
        if (msg := _check_python_cpu(n.get("python_cpu"))):
            out.append((f"{p}.python_cpu", msg))
        if "priority" in n and not (_int_in(n["priority"], -1, 1)):
            out.append((f"{p}.priority", "must be 1 (preferred leader), 0 (no preference) or -1 (avoid)"))
        role = n.get("role", Role.voter.value)
        if role not in ROLES:
            out.append((f"{p}.role", f"must be one of {ROLE_CHOICES}"))
        elif role == Role.voter:
            voters += 1
        ssh = n.get("ssh")
        if ssh is not None:
            if not isinstance(ssh, dict):
                out.append((f"{p}.ssh", "must be a mapping"))
            else:
                for key in sorted(set(ssh) - SSH_KEYS):
                    out.append((f"{p}.ssh.{key}", "unknown key"))
                if "port" in ssh and not _int_in(ssh["port"], 1, 65535):
                    out.append((f"{p}.ssh.port", "must be a port number in [1, 65535]"))
                for key in ("user", "key_file", "known_hosts", "workdir", "python", "config_path"):
                    if key in ssh and not isinstance(ssh[key], str):
                        out.append((f"{p}.ssh.{key}", "must be a string"))
                if "strict_host_key_checking" in ssh and not isinstance(ssh["strict_host_key_checking"],
                                                                        bool):
                    # "no" (quoted) is a non-empty string, i.e. true: refuse instead of guessing
                    out.append((f"{p}.ssh.strict_host_key_checking",
                                f"must be true or false (unquoted), got {ssh['strict_host_key_checking']!r}"))
    out += _port_clashes(binds)
    if nodes and voters == 0 and not any(p.endswith(".role") for p, _ in out):
        out.append(("nodes", "at least one node must be a voter"))
    return out


LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
WILDCARDS = {"0.0.0.0", "::", ""}


def _machine(n: dict, host: Any) -> str:
    """Which machine a node's listeners are on: its host when reached over SSH, else this one."""
    return f"ssh:{host}" if n.get("ssh") is not None else "local"


def _canonical_host(host: Any) -> str:
    """One spelling per address: every loopback name is 'loopback', every wildcard '*'."""
    h = str(host).strip().lower()
    if h in WILDCARDS:
        return "*"
    if h in LOOPBACK_NAMES:
        return "loopback"
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return h
    # 127.0.0.1 and ::1 answer for "localhost"; other 127/8 addresses are distinct listeners
    return "loopback" if str(ip) in ("127.0.0.1", "::1") else str(ip)


def _port_clashes(binds: list[tuple[str, str, str, int]]) -> list[tuple[str, str]]:
    """Two listeners on one machine and port clash when their hosts are the same address
    (``localhost`` is ``127.0.0.1``) or either is a wildcard (``0.0.0.0`` takes every address)."""
    out = []
    for i, (path, machine, host, port) in enumerate(binds):
        for opath, omachine, ohost, oport in binds[:i]:
            a, b = _canonical_host(host), _canonical_host(ohost)
            if machine == omachine and port == oport and (a == b or "*" in (a, b)):
                same = "" if host == ohost else f" (as {ohost})"
                out.append((path, f"port {port} on {host} already used by {opath.rsplit('.', 1)[0]}{same}"))
                break
    return out
