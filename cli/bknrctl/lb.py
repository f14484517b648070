"""``bknrctl lb haproxy|nginx``: load-balancer configurations written from the cluster YAML.

HAProxy (docs/load-balancing.md explains every line): a *write* frontend whose backend is every
node's application port (the admin API port when the YAML has no ``app``), health-checked with
``GET /leader`` on the admin port, so customers reach the leader; a *read* frontend over the
caught-up replicas (``GET /replica?lag=N``). Check intervals are sized from the election timeout
so the balancer follows a failover within a few intervals of the election.
nginx: the two templates in ``configs/`` (open-source nginx has no active health checks).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from bknr_cluster.cluster.config import ClusterConfig, NodeConfig
from bknr_cluster.errors import BknrError, UsageError

from .app import ConfigOpt, app, cluster_for
from .output import guarded, info
from .poll import poll

lb_app = typer.Typer(help="Load balancers in front of the cluster: haproxy.cfg, nginx.conf.",
                     no_args_is_help=True)
app.add_typer(lb_app, name="lb")


# A check over TLS is a full handshake on a new connection (HAProxy 2.6 keeps none open), and it
# must finish within the check interval: with 20 ms checks a loaded 2-core host timed them out
# ("Layer6 timeout"), every node was marked down and all traffic went the forwarding way.
TLS_MIN_INTER_MS = 100
# The same for customers' requests: `timeout connect` covers the TLS handshake with the
# application. With 100 ms, 64 clients' first requests (64 handshakes at once on the leader's
# loop) timed out, were retried with new handshakes, and the retries never caught up (6 req/s).
TLS_MIN_CONNECT_MS = 400


@dataclass(frozen=True)
class CheckTiming:
    """HAProxy health-check timing derived from the election timeout (ms)."""

    inter: int       # between checks of a server whose state is settled
    fastinter: int   # while a server is changing state
    timeout: int     # one check's deadline
    fall: int = 3    # consecutive failed checks before a server is taken out
    rise: int = 1    # one success puts it back: a new leader must get traffic at once

    @classmethod
    def from_election(cls, election_timeout_ms: int, tls: bool = False) -> CheckTiming:
        # A tenth of the election timeout: the balancer notices the new leader about one
        # interval after it is elected, small next to the election itself. HAProxy gives a
        # check's connection min(timeout connect, interval) to be set up, TLS handshake
        # included: over TLS at least TLS_MIN_INTER_MS (docs/load-balancing.md).
        inter = max(10, election_timeout_ms // 10)
        if tls:
            inter = max(inter, TLS_MIN_INTER_MS)
        return cls(inter=inter, fastinter=max(5, inter // 2), timeout=max(100, 3 * inter))

    @classmethod
    def for_reads(cls, election_timeout_ms: int) -> CheckTiming:
        # The read backend needs no such haste: a follower that became leader still answers
        # reads, and one that falls behind is taken out within about two election timeouts.
        # Every check is a connection and a request the node's Python serves (~0.9 ms of CPU
        # each on the 2-core test host): a tenth of the election timeout on both backends was
        # 100 checks/s per node, 4-5 % of a core each with no load at all.
        inter = max(100, election_timeout_ms)
        return cls(inter=inter, fastinter=max(50, inter // 4),
                   timeout=cls.from_election(election_timeout_ms).timeout)

    def server_options(self) -> str:
        # observe layer4 ... on-error mark-down: a connection refused by real traffic (a killed
        # node) takes the server out at once, before the next check; the retry then goes
        # elsewhere.
        return (f"inter {self.inter}ms fastinter {self.fastinter}ms downinter {self.inter}ms "
                f"fall {self.fall} rise {self.rise} observe layer4 error-limit 1 on-error mark-down")


# A POST/PATCH is repeated after it reached a server only when it carries an Idempotency-Key
# (the application applies it once per key); without one, only connection failures retry.
UNSAFE_RETRY = [
    "    http-request disable-l7-retry if METH_POST !{ req.hdr(Idempotency-Key) -m found }",
    "    http-request disable-l7-retry if { method PATCH } !{ req.hdr(Idempotency-Key) -m found }",
]


def _target(n: NodeConfig) -> tuple[str, int]:
    """Where customers' requests go on a node: the application, else the admin API."""
    return (n.app_host or n.api_host, n.app_port) if n.app_port else (n.api_host, n.api_port)


def _servers(cfg: ClusterConfig) -> list[str]:
    """Every node, checked on its admin port; then every node again as an unchecked backup,
    used while no node passes the check (docs/load-balancing.md)."""
    checked, backups = [], []
    # A TLS cluster's nodes serve both the application and the admin API over HTTPS with their
    # node certificates: HAProxy verifies them against the cluster CA, for the traffic and for
    # the checks (`check-ssl`: with an explicit check `port`, TLS is not inherited from `ssl`).
    ca = cfg.tls_dir / "ca.crt" if getattr(cfg, "tls_dir", None) else None
    tls = f" ssl verify required ca-file {ca}" if ca is not None else ""
    for n in cfg.nodes:
        host, port = _target(n)
        checked.append(f"    server {n.name} {host}:{port} check addr {n.api_host} port {n.api_port}"
                       + (" check-ssl" if tls else "") + tls)
        backups.append(f"    server {n.name}-any {host}:{port} backup{tls}")
    return checked + backups


def haproxy_config(cfg: ClusterConfig, *, bind: str = "127.0.0.1", write_port: int = 8080,
                   read_port: int | None = 8081, max_lag: int = 100, pid_file: str | None = None,
                   source: str = "", log_errors: bool = False,
                   shutdown_sessions: bool = False) -> str:
    """The haproxy.cfg text for ``cfg`` (docs/load-balancing.md walks through it).
    ``log_errors``: log failed or retried requests to stdout (a HAProxy in the foreground).
    ``shutdown_sessions``: Patroni's ``on-marked-down shutdown-sessions`` on the write backend
    (fast errors instead of requests hanging on a frozen leader; docs/load-balancing.md)."""
    tls = getattr(cfg, "tls_dir", None) is not None
    t = CheckTiming.from_election(cfg.election_timeout_ms, tls=tls)
    check = t.server_options()
    lines = [
        f"# haproxy.cfg for bknr_cluster group {cfg.group!r}, written by `bknrctl lb haproxy`"
        + (f" from {source}" if source else ""),
        f"# election timeout {cfg.election_timeout_ms} ms -> leader checks every {t.inter} ms "
        "(docs/load-balancing.md explains every line)",
        "global",
        "    maxconn 4096",
        *([f"    pidfile {pid_file}"] if pid_file else []),
        *(["    log stdout format raw local0"] if log_errors else []),
        "",
        "defaults",
        "    mode http",
        *(["    log global", "    option httplog", "    option dontlog-normal"] if log_errors else []),
        "    option http-keep-alive",
        f"    timeout connect {max(TLS_MIN_CONNECT_MS if tls else 100, cfg.election_timeout_ms // 2)}ms",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-keep-alive 30s",
        f"    timeout check {t.timeout}ms",
        "    retries 10",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response junk-response 503",
        "",
        "frontend bknr_write",
        f"    bind {bind}:{write_port}",
        "    default_backend bknr_leader",
        "",
        "backend bknr_leader",
        *UNSAFE_RETRY,
        "    option httpchk GET /leader",
        "    http-check expect status 200",
        "    option allbackups",
        f"    default-server {check}" + (" on-marked-down shutdown-sessions" if shutdown_sessions else ""),
    ]
    lines += _servers(cfg)
    if read_port is not None:
        lines += [
            "",
            "frontend bknr_read",
            f"    bind {bind}:{read_port}",
            "    default_backend bknr_replicas",
            "",
            "backend bknr_replicas",
            *UNSAFE_RETRY,
            "    balance roundrobin",
            "    option allbackups",
            f"    option httpchk GET /replica?lag={max_lag}",
            "    http-check expect status 200",
            f"    default-server {CheckTiming.for_reads(cfg.election_timeout_ms).server_options()}",
            *_servers(cfg),
        ]
    return "\n".join(lines) + "\n"


def nginx_config(cfg: ClusterConfig, directory: Path, front_port: int, gate_ports: list[int]) -> str:
    """nginx.conf from configs/nginx-leader.conf.template + one gate per node (writes go to the
    node whose /leader answers 200; docs/failover.md)."""
    if len(gate_ports) != len(cfg.nodes):
        raise UsageError(f"--gate-ports needs one port per node ({len(cfg.nodes)})")
    root = Path(__file__).resolve().parents[2] / "configs"
    main = (root / "nginx-leader.conf.template").read_text()
    gate = (root / "nginx-gate.conf.template").read_text()
    gates = "\n".join(f"        server 127.0.0.1:{port} max_fails=0;" for port in gate_ports)
    servers = "\n".join(gate.format(name=n.name, api=f"{n.api_host}:{n.api_port}", gate_port=port)
                        for n, port in zip(cfg.nodes, gate_ports, strict=True))
    return main.format(dir=directory, front_port=front_port, gates=gates, gate_servers=servers)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class HaproxyProcess:
    """A local HAProxy for drills and the demo: config from the YAML, free loopback ports,
    started detached, its pid in ``<dir>/haproxy.pid``, stopped by that pid only."""

    def __init__(self, cfg: ClusterConfig, directory: Path, *, bind: str = "127.0.0.1",
                 write_port: int | None = None, read_port: int | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(directory)
        self.bind = bind
        # ports we picked ourselves may be taken by someone else before HAProxy binds them;
        # those (and only those) are picked again when the bind fails
        self._pick_ports = write_port is None and read_port is None
        self.write_port = write_port or _free_port(bind)
        self.read_port = read_port or _free_port(bind)
        self.pid_file = self.dir / "haproxy.pid"
        self.proc: subprocess.Popen | None = None

    @property
    def write_url(self) -> str:
        return f"http://{self.bind}:{self.write_port}"

    @property
    def read_url(self) -> str:
        return f"http://{self.bind}:{self.read_port}"

    def start(self, timeout: float = 15.0, bind_attempts: int = 3) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(exe).exists():
            raise BknrError("haproxy is not installed (scripts/install-deps.sh installs it); "
                            "or drill through your own load balancer with --via URL")
        self.dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, bind_attempts + 1):
            log_start = self._launch(exe)
            outcome = poll(self._listening_or_exited, timeout, interval=0.02)
            if outcome == "listening":
                return
            if outcome is None:
                self.stop()
                raise BknrError(f"haproxy did not listen on {self.write_url} within {timeout:.0f} s")
            status = self.proc.returncode if self.proc is not None else None
            self.proc = None
            self.pid_file.unlink(missing_ok=True)
            if not (self._pick_ports and attempt < bind_attempts and self._bind_failed(log_start)):
                raise BknrError(f"haproxy exited with status {status}; see {self.dir / 'haproxy.log'}")
            info(f"haproxy could not bind {self.write_port}/{self.read_port} (taken meanwhile); "
                 "trying other free ports")
            self.write_port = _free_port(self.bind)
            self.read_port = _free_port(self.bind)

    def _launch(self, exe: str) -> int:
        """Write the config and start HAProxy; returns where this run's log output begins."""
        conf = self.dir / "haproxy.cfg"
        conf.write_text(haproxy_config(self.cfg, bind=self.bind, write_port=self.write_port,
                                       read_port=self.read_port, source=str(self.cfg.path or ""),
                                       log_errors=True))
        log = self.dir / "haproxy.log"
        with open(log, "ab") as out:
            log_start = out.tell()
            self.proc = subprocess.Popen([exe, "-f", str(conf), "-db"], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pid_file.write_text(f"{self.proc.pid}\n")
        return log_start

    def _listening_or_exited(self) -> str | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return "exited"
        with socket.socket() as s:
            if s.connect_ex((self.bind, self.write_port)) == 0:
                return "listening"
        return None

    def _bind_failed(self, log_start: int) -> bool:
        try:
            with open(self.dir / "haproxy.log", "rb") as f:
                f.seek(log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        return "cannot bind" in text or "Address already in use" in text

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None
            self.pid_file.unlink(missing_ok=True)
        else:
            stop_pid_file(self.pid_file)


def stop_pid_file(pid_file: Path) -> bool:
    """Stop the HAProxy a previous run left behind (``demo --keep``), by its recorded pid."""
    try:
        pid = int(pid_file.read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"haproxy" not in f.read():
                return False        # a recycled pid: not ours
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return False
    finally:
        pid_file.unlink(missing_ok=True)
    return True


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    info(f"wrote {output}")


@lb_app.command("haproxy")
@guarded
def haproxy_cmd(ctx: typer.Context, config: ConfigOpt = None,
                output: Annotated[Path | None, typer.Option("-o", "--output-file", help="Write here "
                                                            "instead of stdout.")] = None,
                bind: Annotated[str, typer.Option(help="Address the frontends listen on.")] = "127.0.0.1",
                write_port: Annotated[int, typer.Option(min=1, max=65535, help="Write (leader) "
                                                        "frontend port.")] = 8080,
                read_port: Annotated[int, typer.Option(min=0, max=65535, help="Read (replicas) "
                                                       "frontend port; 0: none.")] = 8081,
                max_lag: Annotated[int, typer.Option(min=0, help="Replicas at most this many "
                                                     "entries behind serve reads.")] = 100,
                pid_file: Annotated[str | None, typer.Option(help="HAProxy's pidfile.")] = None,
                shutdown_sessions: Annotated[bool, typer.Option(
                    help="Close the connections of a leader marked down (fast errors instead of "
                         "requests hanging on a frozen leader; docs/load-balancing.md).")] = False,
                ) -> None:
    """Write a haproxy.cfg: writes to the leader (GET /leader), reads to caught-up replicas."""
    cluster = cluster_for(ctx, config)
    _write(haproxy_config(cluster.cfg, bind=bind, write_port=write_port,
                          read_port=read_port or None, max_lag=max_lag, pid_file=pid_file,
                          source=str(cluster.cfg.path or ""), shutdown_sessions=shutdown_sessions),
           output)


@lb_app.command("nginx")
@guarded
def nginx_cmd(ctx: typer.Context, config: ConfigOpt = None,
              output: Annotated[Path | None, typer.Option("-o", "--output-file")] = None,
              directory: Annotated[Path, typer.Option("--dir", help="nginx's writable directory "
                                                      "(pid, temp files, error log).")] = Path("nginx"),
              port: Annotated[int, typer.Option(min=1, max=65535, help="Front port.")] = 8080,
              gate_ports: Annotated[str, typer.Option(help="One gate port per node, comma-separated "
                                                      "(default: port+1..).")] = "") -> None:
    """Write an nginx.conf that sends every request to the leader (through per-node gates)."""
    cluster = cluster_for(ctx, config)
    n = len(cluster.cfg.nodes)
    try:
        gates = [int(p) for p in gate_ports.split(",")] if gate_ports else \
            [port + i for i in range(1, n + 1)]
    except ValueError:
        raise UsageError(f"--gate-ports must be comma-separated port numbers, got {gate_ports!r}") \
            from None
    _write(nginx_config(cluster.cfg, directory.resolve(), port, gates), output)
