"""``/status`` of one node: what its engine, applier and committer report, in one dict.

A function of the ClusterStore's public parts (docs/api.md documents the keys); it changes
nothing.
"""

from __future__ import annotations

import os
import time
from typing import Any


def node_status(cs: Any, with_digest: bool = True) -> dict[str, Any]:
    """The ``/status`` document of ``cs`` (a ClusterStore); ``with_digest=False`` skips the
    state digest (metrics scrapes)."""
    ap = cs.applier
    st = cs.engine.status()
    leader_id = int(st.get("leader_id") or 0)
    applied, digest = cs.digest() if with_digest else (ap.applied_index, None)
    last = int(st.get("last_log_index") or 0)
    conf = [{"id": c["id"], "address": c["address"], "role": c["role"],
             "name": cs.node_name(c["id"]), "api": cs.api_url(c["id"])}
            for c in st.get("configuration") or []]
    followers = [{"id": f["id"], "match_index": f["match_index"],
                  "lag": max(0, last - int(f["match_index"]))}
                 for f in st.get("followers") or []]
    return {
        "node_id": cs.node_id, "name": cs.name, "group": cs.group, "pid": os.getpid(),
        "address": cs.address, "role": st.get("state"), "term": st.get("term"),
        "leader_id": leader_id, "leader_name": cs.node_name(leader_id) if leader_id else "",
        "leader_address": st.get("leader_address") or "",
        "leader_api": cs.api_url(leader_id), "commit_index": st.get("commit_index"),
        "applied_index": applied, "engine_applied": st.get("last_applied"),
        "last_log_index": last, "snapshot_index": st.get("snapshot_index"),
        "snapshot_term": st.get("snapshot_term"), "store_snapshot_index": ap.last_store_snapshot,
        "digest": digest, "configuration": conf, "followers": followers,
        "batches": cs.committer.batches, "batched_records": cs.committer.items,
        "applied_entries": ap.applied_entries, "applied_records": ap.applied_records,
        "failed_records": ap.failed_records, "corrupt_entries": ap.corrupt_entries,
        "restores": ap.restores, "replayed_entries": ap.replayed_entries,
        # the forked store snapshot writer (snapshot_writer.py): last wall time, failures
        **ap.snapshot_writer_status(),
        # libraft 0.22.1 work-arounds at work (native/DESIGN.md §1)
        "commit_clamps": st.get("commit_clamps", 0),
        "mislabeled_snapshots": st.get("mislabeled_snapshots", 0),
        # the engine's last disk/IO problem (e.g. no space for the log), None when healthy
        "last_error": st.get("last_error"),
        "uptime_s": round(time.time() - cs.started_at, 3),
        # authenticated raft transport counters (accepted, connected, refused_*), if enabled
        "auth": st.get("auth"),
        # elections sped up by the thesis vote rule (native/vote_rule.cpp)
        "relaxed_votes": st.get("relaxed_votes", 0),
        "pre_vote_tie_refusals": st.get("pre_vote_tie_refusals", 0),
        "timeouts_now_retried": st.get("timeouts_now_retried", 0),
        "early_campaigns": st.get("early_campaigns", 0),
        # pre-vote rounds re-sent early after a lost message (native/vote_rule.cpp)
        "pre_vote_retries": st.get("pre_vote_retries", 0),
        # the current randomised election timeout (follower/candidate), drawn every term
        "election_timer_ms": st.get("election_timer_ms", 0),
        # the CPU this node's Python threads are pinned to (python_cpu), None when not
        "python_cpu": cs.python_cpu,
        # a replica that stopped applying (DESIGN.md "Halting a replica"), else None
        "halted": ap.halted,
        "halted_refused_votes": st.get("halted_refused_votes", 0),
        # this node's store definition, and every member's as published through the log
        "definition": ap.capabilities.own,
        "definitions": ap.capabilities.view(cs.node_name),
        # our digest at the recent consistency checkpoints, and the majority's verdicts
        "last_checkpoint": ap.checks.last_checkpoint,
        "checkpoints": {str(c): {"digest": r["digest"], "schema": r["schema"],
                                 **({"full": r["full"]} if "full" in r else {})}
                        for c, r in list(ap.checks.checkpoints.items())[-16:]},
        "verdicts": {str(c): {"result": v["result"], "digest": v["digest"], "agree": v["agree"]}
                     for c, v in list(ap.checks.verdicts.items())[-4:]},
        # the leader's stream closing and elections started at once (native/fast_election.cpp)
        "leader_closes": st.get("leader_closes", 0),
        "leaders_gone": st.get("leaders_gone", 0),
        "fast_elections": st.get("fast_elections", 0),
        # the last fast election this node won: ms from the leader's stream closing to the
        # probe's refusal, to its campaign, to leading
        "fast_election_ms": list(st.get("fast_election_ms", (0, 0, 0))),
        # leadership priority and the automatic transfers this node made (priority.py)
        **cs.priority_keeper.stats(),
    }
