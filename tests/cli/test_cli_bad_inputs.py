"""Every bad input of issue 16 with its exit code and the first stderr line.

The same cases are the table "Bad inputs and what bknrctl answers" in docs/administration.md;
``test_the_docs_table_lists_every_case`` keeps the two in step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from bknrctl.main import app

from tests.cli.conftest import write_yaml
from tests.support import ROOT, free_ports

DOCS = ROOT / "docs" / "administration.md"


def _yaml(tmp: Path, n: int = 3, **kw) -> Path:
    return write_yaml(tmp, free_ports(2 * n), n=n, **kw)


def _edit(path: Path, old: str, new: str, count: int = 1) -> Path:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))
    return path


def missing_token(tmp: Path) -> list[str]:
    path = _yaml(tmp)
    (tmp / "token").unlink()
    (tmp / "data" / "n1" / "raft").mkdir(parents=True)       # initialised: the node needs it
    (tmp / "data" / "n1" / "raft" / "metadata1").write_bytes(b"x")
    return ["-c", str(path), "validate"]


def missing_token_before_init(tmp: Path) -> list[str]:
    path = _yaml(tmp)
    (tmp / "token").unlink()
    return ["-c", str(path), "validate", "--strict"]


def weak_secret(tmp: Path) -> list[str]:
    path = _edit(_yaml(tmp), "token_file: token", "token_file: token\nraft_secret_file: raft.secret")
    (tmp / "raft.secret").write_text("abc")
    (tmp / "raft.secret").chmod(0o644)
    return ["-c", str(path), "validate"]


def store_not_importable(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp, store="no_such_app_module:definition")), "validate"]


def _n2_raft_port_on(tmp: Path, host: str) -> Path:
    """A YAML whose n2 listens on n1's raft port, under another spelling of the host."""
    path = _yaml(tmp)
    port = re.search(r"n1, host: 127.0.0.1, raft_port: (\d+)", path.read_text()).group(1)
    path.write_text(re.sub(r"(n2, host: )127.0.0.1(, raft_port: )\d+", rf"\g<1>{host}\g<2>{port}",
                           path.read_text()))
    return path


def localhost_alias(tmp: Path) -> list[str]:
    return ["-c", str(_n2_raft_port_on(tmp, "localhost")), "validate"]


def wildcard_alias(tmp: Path) -> list[str]:
    return ["-c", str(_n2_raft_port_on(tmp, "0.0.0.0")), "validate"]


def duplicate_key(tmp: Path) -> list[str]:
    return ["-c", str(_edit(_yaml(tmp), "group: test-cluster", "group: test-cluster\ngroup: other")),
            "validate"]


def quoted_boolean(tmp: Path) -> list[str]:
    path = _yaml(tmp, ssh={"user": "bknr", "strict_host_key_checking": "no"})
    return ["-c", str(path), "validate"]


def one_voter(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp, n=1)), "validate"]


def two_voters_strict(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp, n=2)), "validate", "--strict"]


def four_voters(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp, n=4)), "validate"]


def negative_interval(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp)), "status", "--interval", "-1"]


def unknown_option(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp)), "status", "--bogus"]


def zero_log_lines(tmp: Path) -> list[str]:
    path = _yaml(tmp)
    log = tmp / "data" / "n1" / "node.log"
    log.parent.mkdir(parents=True)
    log.write_text("one\ntwo\n")
    return ["-c", str(path), "logs", "n1", "-n", "0"]


def version(tmp: Path) -> list[str]:
    return ["--version"]


def snapshot_all_stopped(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp)), "snapshot", "--all"]


def status_stopped(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp)), "status"]


def drill_unknown_node(tmp: Path) -> list[str]:
    return ["-c", str(_yaml(tmp)), "failover", "--drill", "--node", "zz", "--yes"]


# name -> (build the arguments, exit code, regular expression the first stderr line matches)
CASES: dict[str, tuple[Callable[[Path], list[str]], int, str]] = {
    "token file missing": (missing_token, 2, r"error: token_file: cannot read .*token"),
    "token file missing before init, --strict": (missing_token_before_init, 2,
                                                 r"warning: token_file: .*token does not exist yet; "
                                                 r"bknrctl init creates it"),
    "3-byte raft secret, mode 0644": (weak_secret, 2, r"error: raft_secret_file: .* has mode 0644"),
    "store module not importable": (store_not_importable, 2,
                                    r"error: store: cannot import 'no_such_app_module'"),
    "same port as localhost and 127.0.0.1": (localhost_alias, 2,
                                             r"error: nodes\[1\]\.raft_port: port \d+ on localhost "
                                             r"already used by nodes\[0\] \(as 127\.0\.0\.1\)"),
    "same port as 0.0.0.0 and 127.0.0.1": (wildcard_alias, 2,
                                           r"error: nodes\[1\]\.raft_port: port \d+ on 0\.0\.0\.0 "
                                           r"already used by nodes\[0\]"),
    "a key written twice": (duplicate_key, 2, r"error: group: key 'group' written twice \(lines 1 and 2\)"),
    'strict_host_key_checking: "no"': (quoted_boolean, 2,
                                       r"error: nodes\[0\]\.ssh\.strict_host_key_checking: must be "
                                       r"true or false \(unquoted\), got 'no'"),
    "1 voter": (one_voter, 0, r"warning: nodes: 1 voter: "),
    "2 voters with --strict": (two_voters_strict, 2, r"warning: nodes: 2 voters tolerate 0 failure"),
    "4 voters": (four_voters, 0, r"warning: nodes: 4 voters tolerate 1 failure"),
    "status --interval -1": (negative_interval, 2,
                             r"error: Invalid value for '--interval': Input should be greater than "
                             r"or equal to 0"),
    "an unknown option": (unknown_option, 2, r"error: No such option: --bogus \(see: .* status --help\)"),
    "logs NODE -n 0": (zero_log_lines, 0, r"^$"),
    "--version": (version, 0, r"^$"),
    "snapshot --all, cluster stopped": (snapshot_all_stopped, 3, r"error: no node of the cluster is "
                                                                 r"reachable"),
    "status, cluster stopped": (status_stopped, 3, r"no quorum: no node is reachable"),
    "failover --drill --node zz": (drill_unknown_node, 2, r"error: unknown node 'zz' \(known: n1, n2, n3\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(runner, tmp_path: Path, case: str) -> None:
    build, code, first = CASES[case]
    r = runner.invoke(app, build(tmp_path))
    lines = r.stderr.splitlines()
    assert r.exit_code == code, (r.exit_code, r.output)
    assert re.match(first, lines[0] if lines else ""), lines
    if case in ("logs NODE -n 0",):
        assert r.stdout == ""
    if case == "--version":
        assert re.fullmatch(r"bknrctl \S+\n", r.stdout)


def test_the_docs_table_lists_every_case() -> None:
    """Each case is a row of the docs table, with the same exit code."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[1].isdigit():
            rows[cells[0].strip("`")] = int(cells[1])
    for case, (_, code, _) in CASES.items():
        assert rows.get(case.strip("`")) == code, (case, rows.get(case))


def test_validate_json_lists_errors_and_warnings(runner, tmp_path: Path) -> None:
    r = runner.invoke(app, [*four_voters(tmp_path), "-o", "json"])
    j = json.loads(r.stdout)
    assert r.exit_code == 0 and j["valid"] is True and j["problems"] == []
    assert [w["path"] for w in j["warnings"]] == ["nodes"]


def test_a_good_three_node_config_has_no_warning(runner, tmp_path: Path) -> None:
    r = runner.invoke(app, ["-c", str(_yaml(tmp_path)), "validate", "--strict"])
    assert r.exit_code == 0 and "warning" not in r.stderr and "ok (group" in r.stderr


def test_distinct_loopback_addresses_do_not_clash(runner, tmp_path: Path) -> None:
    r = runner.invoke(app, ["-c", str(_n2_raft_port_on(tmp_path, "127.0.0.2")), "validate"])
    assert r.exit_code == 0, r.output


def test_node_refuses_a_duplicate_key_too(tmp_path: Path) -> None:
    from bknr_cluster.cluster.config import ClusterConfig
    from bknr_cluster.errors import ConfigError

    args = duplicate_key(tmp_path)
    with pytest.raises(ConfigError, match="written twice"):
        ClusterConfig.load(args[1])


# --- exit codes of status: the table in docs/administration.md ----------------------------------


@pytest.mark.parametrize("damage, reason", [
    (lambda c: c.down.add(3), "n3 unreachable"),
    (lambda c: c.lags.update({2: 5000}), "n2 lags 5000 entries (more than 1000)"),
    (lambda c: c.digests.update({3: "fff"}), "n3 digest differs"),
    (lambda c: c.halted.update({2: {"index": 40, "reason": "NonDeterminism: digest"}}),
     "n2 halted at index 40: NonDeterminism: digest"),
])
def test_status_degraded_exit_4_with_the_reason_on_stderr(runner, fake, damage, reason) -> None:
    path, cluster, _ = fake
    r = runner.invoke(app, ["-c", str(path), "status"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    damage(cluster)
    r = runner.invoke(app, ["-c", str(path), "status"])
    assert r.exit_code == 4, r.output
    assert r.stderr.splitlines()[0].startswith(f"degraded: {reason}"), r.stderr
    j = json.loads(runner.invoke(app, ["-c", str(path), "status", "-o", "json"]).stdout)
    assert j["summary"] == "degraded" and j["exit_code"] == 4 and j["problems"][0].startswith(reason)


def test_lag_threshold_is_an_option(runner, fake) -> None:
    path, cluster, _ = fake
    cluster.lags[2] = 50
    assert runner.invoke(app, ["-c", str(path), "status"]).exit_code == 0
    r = runner.invoke(app, ["-c", str(path), "status", "--max-lag", "10"])
    assert r.exit_code == 4 and "n2 lags 50 entries (more than 10)" in r.stderr


def test_config_option_after_a_sub_group_name(runner, fake) -> None:
    path, cluster, _ = fake
    cluster.down.discard(4)
    r = runner.invoke(app, ["peer", "-c", str(path), "add", "n4", "--no-wait"])
    assert r.exit_code == 0, r.output
    assert cluster.added and cluster.added[0][0] == 4
    r = runner.invoke(app, ["leader", "-c", str(path), "transfer", "--to", "n2", "-o", "json"])
    assert cluster.transfers, r.output


def test_help_texts_have_no_raw_rst_markup(runner) -> None:
    """Every command's --help, as an operator reads it: no ``double backquotes``."""
    import typer

    root = typer.main.get_command(app)

    def walk(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])
    paths = list(walk(root, []))
    assert len(paths) > 20
    for p in paths:
        r = runner.invoke(app, [*p, "--help"])
        assert r.exit_code == 0, (p, r.output)
        assert "``" not in r.stdout, (p, [ln for ln in r.stdout.splitlines() if "``" in ln])


def test_an_unreachable_spare_does_not_degrade(runner, fake) -> None:
    path, cluster, _ = fake
    cluster.members[4] = "spare"          # n4: a member that neither votes nor gets the log
    r = runner.invoke(app, ["-c", str(path), "status"])
    assert r.exit_code == 0 and r.stderr == "", r.output
    cluster.members[4] = "standby"        # a standby replicates: losing it costs redundancy
    r = runner.invoke(app, ["-c", str(path), "status"])
    assert r.exit_code == 4 and r.stderr.startswith("degraded: n4 unreachable"), r.output
