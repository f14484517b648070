"""Rolling upgrades and consistency verification: ``bknrctl upgrade`` and ``bknrctl verify``.

``upgrade`` restarts the nodes one at a time on the code now installed on their hosts (followers
first, the leader last), shows each node's application version and definition fingerprint before
and after, and stops at the first node that halts or does not catch up. ``verify`` logs a
consistency checkpoint and compares every replica's state digest at that index.
See docs/administration.md, "Upgrades".
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from bknr_cluster.cluster.config import NodeConfig
from bknr_cluster.errors import BknrError, ReplicaHalted

from .app import (
    DEFAULT_CATCHUP_S,
    CatchupPerNodeOpt,
    ConfigOpt,
    NodesArg,
    OutputFormat,
    OutputOpt,
    app,
    cluster_for,
    select,
)
from .client import parallel
from .cluster import Cluster
from .nodes import start_nodes, stop_nodes
from .output import emit_json, guarded, info, stdout_console
from .poll import poll


def _definition(st: dict | None) -> dict:
    d = (st or {}).get("definition")
    return d if isinstance(d, dict) else {}


def _label(st: dict | None) -> str:
    d = _definition(st)
    if not d:
        return "-"
    return f"{d.get('version') or '-'} ({(d.get('fingerprint') or '-')[:12]})"


def wait_applied(cluster: Cluster, node: NodeConfig, timeout: float) -> dict:
    """Wait until ``node`` has applied everything the leader had applied when we started,
    failing at once when it halts (a halted node's engine keeps receiving entries, so the
    engine's applied index alone would call it caught up)."""
    target: int | None = None
    last_error = ""

    def applied() -> dict | None:
        nonlocal target, last_error
        try:
            if target is None:
                target = int(cluster.leader_client().status().get("applied_index") or 0)
            st = cluster.clients[node.name].status(timeout=2.0)
        except ReplicaHalted:
            raise
        except BknrError as exc:
            last_error = str(exc)
            return None
        if isinstance(st.get("halted"), dict):
            h = st["halted"]
            raise ReplicaHalted(f"{node.name} HALTED at entry {h.get('index')}: {h.get('reason')}")
        return st if int(st.get("applied_index") or 0) >= target else None

    st = poll(applied, timeout, interval=0.1)
    if st is None:
        raise BknrError(f"{node.name} did not catch up within {timeout:.0f}s"
                        + (f" ({last_error})" if last_error else ""))
    return st


def wait_published(cluster: Cluster, node: NodeConfig, fingerprint: str, timeout: float) -> bool:
    """Until the leader's view of ``node``'s definition (replicated through the log) is current:
    only then does the leader accept the transactions the new version added."""
    def published() -> bool | None:
        try:
            view = cluster.leader_client().status().get("definitions") or {}
        except BknrError:
            return None
        current = (view.get("members") or {}).get(str(node.id), {}).get("fingerprint") == fingerprint
        return True if current else None

    return poll(published, timeout, interval=0.1) is not None


@app.command()
@guarded
def upgrade(ctx: typer.Context, nodes: NodesArg = None, config: ConfigOpt = None,
            catchup_timeout: CatchupPerNodeOpt = DEFAULT_CATCHUP_S,
            output: OutputOpt = OutputFormat.table) -> None:
    """Rolling upgrade onto the code installed now: one node at a time, followers first.

    Shows each node's application version and store-definition fingerprint before and after its
    restart; stops (exit 4) at a node that halts, (exit 1) at one that does not catch up, and
    ends by checking that every node runs one definition (exit 1 otherwise)."""
    cluster = cluster_for(ctx, config)
    targets = select(cluster.cfg, nodes)
    state = cluster.probe(timeout=2.0)
    before = {s.node.name: s.status for s in state.nodes}
    leader_id = state.leader.node.id if state.leader else None
    # halted nodes first (the upgrade is their cure), then followers, the leader last
    targets.sort(key=lambda n: (n.id == leader_id,
                                not (before.get(n.name) or {}).get("halted")))
    report: list[dict[str, Any]] = []
    table = output is OutputFormat.table
    if table:
        for n in targets:
            info(f"{n.name}: before {_label(before.get(n.name))}")
    for n in targets:
        stop_nodes(cluster, [n], quiet=True)
        try:
            start_nodes(cluster, [n], quiet=True)
            cluster.wait_for_leader(timeout=30.0)
            st = wait_applied(cluster, n, catchup_timeout)
        except ReplicaHalted as exc:
            raise ReplicaHalted(f"{exc}; stopped here: the other nodes were not restarted "
                                "(deploy a version that can apply that entry on "
                                f"{n.name}, then run upgrade again)") from None
        except BknrError as exc:
            raise BknrError(f"{n.name} restarted but did not rejoin: {exc}; stopped here") from None
        fp = _definition(st).get("fingerprint") or ""
        published = wait_published(cluster, n, fp, 15.0) if fp else False
        row = {"name": n.name, "before": _definition(before.get(n.name)),
               "after": _definition(st), "applied_index": st.get("applied_index"),
               "published": published}
        report.append(row)
        if table:
            info(f"{n.name}: {_label(before.get(n.name))} -> {_label(st)}, caught up at "
                 f"{st.get('applied_index')}" + ("" if published else
                                                 " (the leader has not seen its definition yet)"))
    final = cluster.probe(timeout=2.0)
    roles = final.member_roles()
    fps = {s.node.name: _definition(s.status).get("fingerprint") for s in final.nodes
           if s.reachable and (not roles or s.node.id in roles)}
    distinct = sorted({f for f in fps.values() if f})
    result = {"nodes": report, "fingerprints": fps, "one_definition": len(distinct) == 1}
    if output is OutputFormat.json:
        emit_json(result)
    if len(distinct) != 1:
        raise BknrError("the members run different store definitions after the upgrade: "
                        + ", ".join(f"{k} {(v or '-')[:12]}" for k, v in sorted(fps.items())))
    if table:
        versions = {_definition(s.status).get("version") for s in final.nodes if s.reachable}
        info(f"upgraded {len(report)} node(s); every member runs version "
             f"{', '.join(sorted(v or '-' for v in versions))}, fingerprint {distinct[0][:12]}")


@app.command()
@guarded
def verify(ctx: typer.Context, config: ConfigOpt = None,
           quick: Annotated[bool, typer.Option("--quick", help="Compare the incremental digests "
                                               "only (no full walk of each store).")] = False,
           timeout: Annotated[float, typer.Option(help="Seconds to wait for every replica.")] = 60.0,
           output: OutputOpt = OutputFormat.table) -> None:
    """Consistency check: a checkpoint through the log, every replica's state digest at exactly
    that index, compared. Exit 0 when all agree, 4 when one differs (it halts) or is halted."""
    cluster = cluster_for(ctx, config)
    leader = cluster.leader_node()
    r = cluster.clients[leader.name].call("POST", "/checkpoint",
                                          {"full": not quick, "wait": min(timeout, 300)},
                                          timeout=timeout + 60)
    c = int(r["index"])
    roles = cluster.probe(timeout=2.0).member_roles()
    members = [n for n in cluster.cfg.nodes if not roles or n.id in roles]
    got: dict[str, dict | None] = {}

    def all_reported() -> bool | None:
        res = parallel(lambda n: cluster.clients[n.name].status(timeout=2.0), members)
        for n, st in zip(members, res, strict=True):
            if isinstance(st, BaseException):
                got[n.name] = {"error": str(st)}
                continue
            rec = (st.get("checkpoints") or {}).get(str(c))
            got[n.name] = {**(rec or {}), "halted": st.get("halted"),
                           "applied_index": st.get("applied_index")}
        return True if all(g.get("digest") or g.get("halted") for g in got.values()) else None

    poll(all_reported, timeout, interval=0.2)  # what is still missing then is reported below
    verdict = r.get("verdict") or {}
    majority = verdict.get("digest")
    rows = []
    for n in members:
        g = got.get(n.name) or {}
        digest = g.get("digest")
        full = g.get("full")
        rows.append({"name": n.name, "digest": digest, "full": full,
                     "match": None if digest is None or majority is None else digest == majority,
                     "self_check": None if full is None or digest is None else full == digest,
                     "halted": g.get("halted"), "error": g.get("error")})
    bad = [x for x in rows if x["match"] is False or x["halted"] or x["self_check"] is False]
    missing = [x for x in rows if x["digest"] is None and not x["halted"]]
    if output is OutputFormat.json:
        emit_json({"index": c, "majority_digest": majority, "nodes": rows,
                   "ok": not bad and not missing and majority is not None})
    else:
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("name", "digest", "full walk", "match", "note"):
            t.add_column(col)
        for x in rows:
            note = (f"HALTED at {x['halted'].get('index')}: {x['halted'].get('reason')}"
                    if x["halted"] else x["error"] or ("incremental digest != full walk"
                                                        if x["self_check"] is False else ""))
            t.add_row(x["name"], (x["digest"] or "-")[:16], (x["full"] or "-")[:16],
                      {True: "yes", False: "NO", None: "-"}[x["match"]], note)
        stdout_console().print(t)
        if majority is None:
            info(f"checkpoint at {c}: no digest has a majority of the voters yet")
        elif not bad and not missing:
            info(f"checkpoint at {c}: all {len(rows)} replicas agree (digest {majority[:16]})")
    if bad:
        raise typer.Exit(4)
    if missing or majority is None:
        raise BknrError(f"checkpoint at {c}: {', '.join(x['name'] for x in missing) or 'the voters'} "
                        f"did not report within {timeout:.0f}s")
