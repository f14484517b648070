"""Validation of a parsed cluster YAML: every problem as ``(path, message)``.

Collects *every* problem before the loader (config.py) raises one ``ConfigError`` (Patroni's
validator style), so an operator fixes a file in one pass. Defaults used to judge a key left
out come from ``bknr_cluster/defaults.py``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from bknr_cluster import defaults
from bknr_cluster.cluster.affinity import check_spec
from bknr_cluster.errors import UsageError
from bknr_cluster.vocabulary import ROLE_CHOICES, ROLES, Role

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
STORE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
APP_KEYS = {"asgi", "wsgi", "threads", "port", "drain_s"}


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


def validate(data: Any, base_dir: Any = None) -> list[tuple[str, str]]:
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
    default_timing = {"election_timeout_ms": defaults.ELECTION_TIMEOUT_MS,
                      "heartbeat_ms": defaults.HEARTBEAT_MS}
    timing = {**default_timing, **(data.get("timing") or {})} \
        if isinstance(data.get("timing"), dict | None) else default_timing
    et, hb = timing.get("election_timeout_ms"), timing.get("heartbeat_ms")
    if _int_in(et, 20, 600_000) and _int_in(hb, 1, 60_000) and hb * 2 > et:
        out.append(("timing.heartbeat_ms",
                    f"{hb} ms must be at most half the election timeout ({et} ms)"))
    out += _validate_section(data.get("snapshot"), "snapshot", {
        "threshold": (2, 10**9), "trailing": (0, 10**9), "keep": (1, 1000),
        "compression": (0, 19)})
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
