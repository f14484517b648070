"""sshd for the SSH tests: Debian's openssh-server with a config of the test's own (key-only
login, no PAM, internal sftp for bknrctl's uploads)."""

from __future__ import annotations

from pathlib import Path

SSHD = "/usr/sbin/sshd"


def write_sshd_config(conf: Path, d: Path, listen: str, port: int, pid_file: Path) -> None:
    """A config for an sshd on `listen`:`port` with `d`/host_key and `d`/authorized_keys."""
    conf.write_text(f"""
Port {port}
ListenAddress {listen}
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {pid_file}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd requires
