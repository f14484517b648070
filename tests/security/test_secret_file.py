"""The ``raft_secret_file`` validation rule (docs/security.md, Integration step 3).

Pins the rule of ``ClusterConfig.raft_secret()``: a regular file owned
by the node's user, no group/other permission bits, at least 32 bytes after stripping whitespace;
every violation is a ``ConfigError`` at the path ``raft_secret_file``.
"""

from __future__ import annotations

import os

import pytest
import yaml

from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.errors import ConfigError


def test_the_rule_is_implemented():
    # No module-level skip: a missing method must fail the suite, not hide these tests.
    assert callable(getattr(ClusterConfig, "raft_secret", None))


def _config(tmp_path, secret: bytes | None, mode: int = 0o600):
    if secret is not None:
        f = tmp_path / "raft.secret"
        f.write_bytes(secret)
        f.chmod(mode)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "group": "g", "store": "examples.bank.app:definition", "raft_secret_file": "raft.secret",
        "nodes": [{"id": 1, "name": "n1", "host": "127.0.0.1", "raft_port": 7101, "api_port": 8101,
                   "data_dir": "d1"}]}))
    return ClusterConfig.load(tmp_path / "c.yaml")


def test_good_secret_is_the_stripped_content(tmp_path):
    assert _config(tmp_path, b"a" * 64 + b"\n").raft_secret() == b"a" * 64


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_secret_is_refused(tmp_path, mode):
    cfg = _config(tmp_path, b"a" * 64, mode)
    with pytest.raises(ConfigError) as info:
        cfg.raft_secret()
    assert info.value.problems[0][0] == "raft_secret_file"
    assert "chmod 600" in str(info.value)


def test_short_secret_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="at least 32"):
        _config(tmp_path, b"short-secret\n").raft_secret()


def test_missing_secret_file_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, None).raft_secret()
    assert info.value.problems[0][0] == "raft_secret_file"


def test_secret_file_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    cfg = _config(tmp_path, b"a" * 64)
    os.chown(tmp_path / "raft.secret", 65534, 65534)
    with pytest.raises(ConfigError, match="not owned"):
        cfg.raft_secret()
