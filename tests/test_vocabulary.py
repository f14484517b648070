"""bknr_cluster/vocabulary.py: what node, clients and bknrctl agree on is spelled there only."""

from __future__ import annotations

import ast
from pathlib import Path, PurePosixPath

import pytest

from bknr_cluster import errors
from bknr_cluster.vocabulary import (
    ROLE_CHOICES,
    ROLES,
    DataDirLayout,
    Role,
    error_body,
    error_from_body,
    error_status,
    parse_engine_snapshot,
)

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "bknr_cluster", ROOT / "cli" / "bknrctl"]


def test_roles_are_spelled_only_in_the_vocabulary() -> None:
    # before: the role names were written in engine.py, config.py, api.py, node.py and bknrctl
    spelled = []
    for folder in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            if path.name == "vocabulary.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in ROLES:
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not spelled, f"use bknr_cluster.vocabulary.Role: {spelled}"
    assert ROLES == ("voter", "standby", "spare") and ROLE_CHOICES == "voter, standby, spare"
    assert Role("standby") is Role.standby and f"{Role.spare}" == "spare"


@pytest.mark.parametrize("exc", [
    errors.NotLeader(2, "127.0.0.1:7002", leader_api="http://127.0.0.1:8002"),
    errors.NoLeader(message="no leader"),
    errors.TransactionFailed("ValueError", "no such account"),
    errors.NotCapable("n2 runs an older definition", [{"id": 2}]),
    errors.UnknownTransaction("unknown transaction 'x'"),
    errors.UnknownNode("unknown node 'n9'"),
    errors.MembershipError("refusing to remove the last voter"),
    errors.ReplicaHalted("halted at 12"),
    errors.Timeout("no answer"),
    errors.Shutdown("stopping"),
    errors.UsageError("bad argument"),
    errors.CorruptData("checksum mismatch"),
])
def test_an_error_survives_the_round_trip(exc: errors.BknrError) -> None:
    back = error_from_body(error_status(exc), error_body(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    assert back.exit_code == exc.exit_code  # what bknrctl exits with is the node's verdict
    if isinstance(exc, errors.NotLeader):
        assert (back.leader_id, back.leader_api) == (exc.leader_id, exc.leader_api)  # type: ignore[attr-defined]


def test_answers_outside_the_error_format() -> None:
    assert isinstance(error_from_body(401, "nope", "n1"), errors.Unauthorized)
    assert "n1: " in str(error_from_body(401, {"error": "wrong token"}, "n1"))
    page = error_from_body(502, "<html>bad gateway</html>", "n1")
    assert type(page) is errors.BknrError and str(page).startswith("n1: HTTP 502: ")
    assert type(error_from_body(404, {"error": "?"})) is errors.UnknownTransaction
    assert type(error_from_body(413, {"error": "too large"})) is errors.UsageError
    assert type(error_from_body(500, {"error": "boom", "type": "NoSuchClass"})) is errors.BknrError


def test_data_dir_layout_keeps_the_path_type() -> None:
    local = DataDirLayout(Path("/srv/n1"))
    assert local.raft_dir == Path("/srv/n1/raft") and isinstance(local.raft_dir, Path)
    remote = DataDirLayout(PurePosixPath("/srv/n2"))
    assert type(remote.log_file) is PurePosixPath and str(remote.pid_file) == "/srv/n2/node.pid"
    names = {a: str(getattr(local, a)).rsplit("/", 1)[1] for a in (
        "raft_dir", "blob_dir", "snapshot_archive", "store_snapshot_dir", "history_file",
        "pid_file", "log_file", "out_file")}
    assert len(set(names.values())) == len(names), names  # no two parts share a name


def test_engine_snapshot_names() -> None:
    assert parse_engine_snapshot("snapshot-3-1200-1733300000000") == (3, 1200, 1733300000000)
    assert parse_engine_snapshot("snapshot-3-1200-1733300000000.meta") is None
    assert parse_engine_snapshot("snapshot-00000000000000000001.snap") is None
