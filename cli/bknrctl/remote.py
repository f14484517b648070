"""Nodes on other machines, controlled over SSH with paramiko.

Host keys are checked by default against ``ssh.known_hosts`` (or the user's
``~/.ssh/known_hosts``); ``strict_host_key_checking: false`` accepts unknown keys, with a warning.
Authentication uses ``ssh.key_file`` when given, otherwise the SSH agent and default keys.

When ``ssh.config_path`` is not set, bknrctl uploads the cluster YAML (and a relative token file)
to ``<workdir>/cluster.yaml`` before starting or initialising the node, so the node and the
operator always read the same file.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import time
from collections.abc import Iterator
from pathlib import PurePosixPath

import paramiko

from bknr_cluster.cluster.tls_config import tls_upload
from bknr_cluster.errors import BknrError, Unreachable

from .control import NODE_MODULE, NodeControl
from .output import info


class SshControl(NodeControl):
    def __init__(self, cfg, node) -> None:  # noqa: ANN001 (same signature as the base)
        super().__init__(cfg, node)
        self.ssh = node.ssh
        self._client: paramiko.SSHClient | None = None

    # --- remote paths -----------------------------------------------------------------------
    @property
    def workdir(self) -> str:
        return self.ssh.workdir or "."

    @property
    def remote_config(self) -> str:
        return self.ssh.config_path or posixpath.join(self.workdir, "cluster.yaml")

    @property
    def python(self) -> str:
        return self.ssh.python or "python3"

    def _raw_node(self) -> dict:
        for n in self.cfg.raw.get("nodes") or []:
            if isinstance(n, dict) and n.get("name") == self.node.name:
                return n
        return {}

    @property
    def data_dir(self) -> PurePosixPath:
        # Relative data dirs are relative to the YAML *on the remote host*.
        raw = str(self._raw_node().get("data_dir") or self.node.data_dir)
        if posixpath.isabs(raw):
            return PurePosixPath(raw)
        return PurePosixPath(posixpath.dirname(self.remote_config) or ".") / raw

    # --- connection ---------------------------------------------------------------------------
    def connect(self) -> paramiko.SSHClient:
        if self._client is not None:
            return self._client
        client = paramiko.SSHClient()
        known = self.ssh.known_hosts
        try:
            if known:
                client.load_host_keys(os.path.expanduser(known))
            else:
                client.load_system_host_keys()
        except OSError as exc:
            raise BknrError(f"{self.node.name}: cannot read known_hosts {known}: {exc}") from None
        if self.ssh.strict_host_key_checking:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.WarningPolicy())
        key = os.path.expanduser(self.ssh.key_file) if self.ssh.key_file else None
        try:
            client.connect(self.node.host, port=self.ssh.port, username=self.ssh.user,
                           key_filename=key, allow_agent=True, look_for_keys=key is None,
                           timeout=10, banner_timeout=10, auth_timeout=10)
        except paramiko.SSHException as exc:
            client.close()
            # RejectPolicy raises SSHException naming the host: surface it as is
            raise BknrError(f"{self.node.name}: ssh {self.ssh.user or ''}@{self.node.host}:"
                            f"{self.ssh.port}: {exc}") from None
        except OSError as exc:
            client.close()
            raise Unreachable(f"{self.node.name}: ssh to {self.node.host}:{self.ssh.port} failed: "
                              f"{exc}") from None
        self._client = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def exec(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        client = self.connect()
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        rc = stdout.channel.recv_exit_status()
        return rc, out + err

    def _check(self, command: str, timeout: float = 60.0) -> str:
        rc, out = self.exec(command, timeout)
        if rc != 0:
            raise BknrError(f"{self.node.name}: remote command failed ({rc}): {out.strip()[-300:]}")
        return out

    # --- config upload ------------------------------------------------------------------------
    def ensure_config(self) -> None:
        if self.ssh.config_path or self.cfg.path is None:
            return  # the operator deploys the YAML on that host
        self._check(f"mkdir -p {shlex.quote(self.workdir)}")
        sftp = self.connect().open_sftp()
        try:
            sftp.put(str(self.cfg.path), self.remote_config)
            # secrets named relative to the YAML travel with it, mode 0600 on the other side
            # and so do this node's TLS files (never the CA key: it stays on the operator's host)
            secrets = [self.cfg.raw.get(key) for key in ("token_file", "raft_secret_file")]
            for rel in [*secrets, *tls_upload(self.cfg, self.node)]:
                if not isinstance(rel, str) or not rel or os.path.isabs(os.path.expanduser(rel)):
                    continue
                src = self.cfg.base_dir / rel
                if not src.exists():
                    continue
                dest = posixpath.join(posixpath.dirname(self.remote_config), rel)
                self._check(f"mkdir -p {shlex.quote(posixpath.dirname(dest))}")
                sftp.put(str(src), dest)
                sftp.chmod(dest, 0o600)
        finally:
            sftp.close()

    def _node_cmd(self, *extra: str) -> str:
        args = [self.python, "-m", NODE_MODULE, "--config", self.remote_config, "--node",
                self.node.name, *extra]
        # exec: the process started is the node itself, so "$!" below is the node's pid
        return f"cd {shlex.quote(self.workdir)} && exec " + " ".join(shlex.quote(a) for a in args)

    # --- NodeControl ----------------------------------------------------------------------------
    def pid(self) -> int | None:
        pf = shlex.quote(str(self.pid_file))
        rc, out = self.exec(
            f"p=$(cat {pf} 2>/dev/null) && kill -0 \"$p\" 2>/dev/null && "
            f"grep -q bknr /proc/\"$p\"/cmdline 2>/dev/null && "
            f"! grep -q '^State:.*Z' /proc/\"$p\"/status && echo \"$p\"")
        try:
            return int(out.strip()) if rc == 0 else None
        except ValueError:
            return None

    def spawn(self) -> int:
        self.ensure_config()
        dd, log, pf = (shlex.quote(str(p)) for p in (self.data_dir, self.out_file, self.pid_file))
        # setsid + nohup + redirected stdio: the node outlives this SSH session.
        cmd = (f"mkdir -p {dd} && ({self._node_cmd()}) >> {log} 2>&1 < /dev/null & "
               f"echo $! > {pf}; cat {pf}")
        out = self._check(f"setsid sh -c {shlex.quote(cmd)}")
        try:
            return int(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BknrError(f"{self.node.name}: could not read the remote pid: {out!r}") from None

    def signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is not None:
            self.exec(f"kill -{int(sig)} {pid}")

    def run_node(self, *extra: str, timeout: float = 120.0) -> tuple[int, str]:
        self.ensure_config()
        self._check(f"mkdir -p {shlex.quote(str(self.data_dir))}")
        return self.exec(self._node_cmd(*extra), timeout)

    def has_raft_state(self) -> bool:
        rc, out = self.exec(f"ls -A {shlex.quote(str(self.raft_dir))} 2>/dev/null | head -1")
        return bool(out.strip())

    def wipe_raft_state(self) -> None:
        self._check(f"rm -rf {shlex.quote(str(self.raft_dir))}")

    def retain_snapshots(self, keep: int) -> dict[str, int]:
        # the node's own module on that host: the same rule as the node's SnapshotKeeper
        args = [self.python, "-m", "bknr_cluster.cluster.retention", str(self.data_dir), str(int(keep))]
        out = self._check(f"cd {shlex.quote(self.workdir)} && " + " ".join(shlex.quote(a) for a in args))
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BknrError(f"{self.node.name}: unexpected answer from snapshot retention: "
                            f"{out.strip()[-200:]}") from None

    def tail(self, lines: int = 50) -> str:
        _, out = self.exec(f"tail -n {int(lines)} {shlex.quote(str(self.log_file))} 2>/dev/null")
        return out.rstrip("\n")

    def follow(self, lines: int = 20) -> Iterator[str]:
        chan = self.connect().get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command(f"tail -n {int(lines)} -F {shlex.quote(str(self.log_file))}")
        buf = b""
        try:
            while not chan.exit_status_ready() or chan.recv_ready():
                if chan.recv_ready():
                    buf += chan.recv(65536)
                    *done, buf = buf.split(b"\n")
                    for ln in done:
                        yield ln.decode(errors="replace")
                else:
                    time.sleep(0.1)
        finally:
            chan.close()


def warn_unchecked(node_name: str) -> None:
    info(f"warning: {node_name}: host key checking is disabled")
