"""Rendering: cluster status and drill reports as tables, summary lines and JSON objects.

Functions here only turn data into text (no node is asked, nothing is printed); commands print.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.vocabulary import Role

from .cluster import DEFAULT_MAX_LAG, ClusterState, status_rows

# --- status -------------------------------------------------------------------------------------


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    return str(v)


def status_table(state: ClusterState, cfg: ClusterConfig | None = None) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("name", "address", "role", "prio", "term", "leader", "commit", "applied", "lag",
                "snapshot", "digest", "match", "version", "reachable"):
        t.add_column(col)
    for r in status_rows(state, cfg):
        role = r["role"] if not r["member_role"] or r["member_role"] == Role.voter \
            else f"{r['role']} ({r['member_role']})"
        if r["halted"]:
            role = f"{role} HALTED@{r['halted'].get('index')}"
        version = f"{r['version'] or '-'} {(r['fingerprint'] or '-')[:8]}" if r["reachable"] else "-"
        t.add_row(r["name"], r["address"], role, _cell(r["priority"]), _cell(r["term"]),
                  _cell(r["leader"]),
                  _cell(r["commit_index"]), _cell(r["applied_index"]), _cell(r["lag"]),
                  _cell(r["snapshot_index"]), (r["digest"] or "-")[:12], _cell(r["digest_match"]),
                  version, _cell(r["reachable"]))
    return t


def summary_line(state: ClusterState, max_lag: int = DEFAULT_MAX_LAG) -> str:
    s = state.summary(max_lag)
    n_ok = sum(1 for x in state.nodes if x.reachable)
    lead = f"leader {state.leader.node.name}" if state.leader else "no leader"
    line = f"{s}: {lead}, {n_ok}/{len(state.nodes)} nodes reachable, " \
           f"{state.reachable_voters}/{len(state.voters)} voters"
    for h in state.halted():
        line += (f"; {h.node.name} HALTED at entry {h.halted.get('index')}: "
                 f"{h.halted.get('reason')}")
    return line


def no_leader_reason(state: ClusterState) -> str:
    """Why no node leads, from what the nodes answered (table mode prints it on stderr)."""
    down = [s for s in state.nodes if not s.reachable]
    if len(down) == len(state.nodes):
        first = down[0].error or "no answer"
        return f"no node is reachable ({first})"
    return (f"{state.reachable_voters} of {len(state.voters)} voters reachable"
            + (f"; unreachable: {', '.join(s.node.name for s in down)}" if down else "")
            + ("; a quorum answers but no leader is elected yet" if state.quorum else "; no quorum"))


# --- drill reports ------------------------------------------------------------------------------


def _drill_cell(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.0f}{unit}"
    return f"{v}{unit}"


def drill_table(rep: dict) -> Table:
    t = Table(box=None, header_style="bold", title=f"failover drill (election timeout "
              f"{rep['election_timeout_ms']} ms)")
    for c in ("round", "fault", "victim", "new leader", "detect", "new leader at", "write gap",
              "acked", "lost", "digests", "total"):
        t.add_column(c)
    for r in rep["rounds"]:
        t.add_row(str(r["round"]), r["fault"], r["victim"], _drill_cell(r["new_leader"]),
                  _drill_cell(r["time_to_detect_ms"], " ms"), _drill_cell(r["time_to_leader_ms"], " ms"),
                  _drill_cell(r["write_gap_ms"], " ms"), str(r["acked"]), str(r["lost"]),
                  _drill_cell(r["digests_match"]), _drill_cell(r["bank_total_ok"]))
    return t


def drill_summary(rep: dict) -> str:
    met = "met" if rep["write_gap_target_met"] else "NOT met"
    return (f"median write gap {_drill_cell(rep['median_write_gap_ms'], ' ms')} (target "
            f"<= {rep['write_gap_target_ms']:.0f} ms: {met}); lost {rep['lost_total']} of "
            f"{rep['acked_total']} acknowledged; digests match: {_drill_cell(rep['digests_match'])}; "
            f"{rep.get('workload', 'bank')} total unchanged: {_drill_cell(rep['bank_total_ok'])}")


def side_by_side(admin: dict[str, Any], users: dict[str, Any]) -> Table:
    """The write gap the admin-API drill measured next to what the customers saw."""
    t = Table(box=None, header_style="bold",
              title=f"what customers saw through HAProxy ({users['url']})")
    for c in ("fault", "rounds", "write gap (API drill)", "write gap (customers)", "requests",
              "user errors", "p50", "p99", "max", "longest stall", "lost"):
        t.add_column(c)

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:.0f} ms"
    api_gap = {"kill": admin.get("median_write_gap_ms"),
               "transfer": admin.get("planned_transfer_gap_ms")}
    for fault in ("kill", "transfer"):
        r = users[fault]
        t.add_row(fault, str(len(r["rounds"])), ms(api_gap[fault]), ms(r["median_gap_ms"]),
                  str(r["requests"]), str(r["user_errors"]), ms(r["p50_ms"]), ms(r["p99_ms"]),
                  ms(r["max_ms"]), ms(r["longest_stall_ms"]), str(r["lost_total"]))
    return t
