"""``GET /metrics`` with prometheus_client: one registry per node, families named like etcd's.

Gauges and counters are read from the node's state when scraped (``NodeCollector``); the two
histograms are observed when the event happens (a transaction answered by the API, a store
snapshot written). Not obtainable from libraft 0.22.1 and therefore not exported: WAL fsync
duration and peer round-trip time (the engine does not measure them). Every name below is
documented in docs/api.md; configs/prometheus-alerts.yaml uses only these.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
AUTH_RESULTS = ("accepted", "connected", "refused_in", "refused_out", "timeouts")


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class NodeCollector(Collector):
    """Reads ``cs.status(with_digest=False)`` (and the leader history) at every scrape."""

    def __init__(self, cs: Any, requests: Counter) -> None:
        self.cs, self.requests = cs, requests

    def collect(self) -> Iterator[Metric]:
        cs = self.cs
        st = cs.status(with_digest=False)
        labels = ["node", "group"]
        me = [str(cs.name), str(cs.group)]

        def gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(me, _num(value))
            return g

        def counter(name: str, doc: str, value: Any) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(me, _num(value))
            return c

        history = getattr(cs, "leader_history", None)
        leader_id = int(st.get("leader_id") or 0)
        yield gauge("bknr_up", "1 while the node process serves its API", 1)
        yield gauge("bknr_server_has_leader", "1 when this node knows a leader (etcd: has_leader)",
                    int(leader_id != 0))
        yield gauge("bknr_is_leader", "1 on the Raft leader", int(st.get("role") == "leader"))
        yield counter("bknr_server_leader_changes_seen",
                      "leader changes this node saw since it started (etcd: leader_changes_seen)",
                      history.leader_changes if history is not None else 0)
        for key, doc in (("term", "current Raft term"), ("commit_index", "Raft commit index"),
                         ("applied_index", "last store entry applied"),
                         ("last_log_index", "last Raft log index"),
                         ("snapshot_index", "index of the last Raft snapshot")):
            yield gauge(f"bknr_{key}", doc, st.get(key))
        yield gauge("bknr_server_proposals_committed_total",
                    "entries committed by the cluster, as known here (etcd: a gauge too)",
                    st.get("commit_index"))
        yield gauge("bknr_server_proposals_applied_total", "entries applied by this node's engine",
                    st.get("engine_applied"))
        yield counter("bknr_server_proposals_failed",
                      "records submitted here whose proposal failed (not leader, lost leadership, "
                      "engine error)", cs.committer.failed)
        yield gauge("bknr_server_proposals_pending", "records submitted here awaiting their outcome",
                    len(cs.committer._pending))
        for key, doc in (("batches", "log entries submitted by this node"),
                         ("batched_records", "records submitted by this node"),
                         ("applied_records", "transaction records applied"),
                         ("failed_records", "transactions that raised"),
                         ("corrupt_entries", "malformed log entries skipped"),
                         ("replayed_entries", "entries refused because they were already applied")):
            yield counter(f"bknr_{key}", doc, st.get(key))
        contact = st.get("leader_contact_ms")
        if contact is not None:
            yield gauge("bknr_leader_contact_seconds", "follower: seconds since the leader was heard",
                        _num(contact) / 1000.0)
        yield gauge("bknr_disk_error", "1 while the engine reports a disk/IO error (last_error)",
                    int(bool(st.get("last_error"))))
        halted = st.get("halted")
        yield gauge("bknr_halted", "1 when this replica stopped applying (status 'halted')",
                    int(bool(halted)))
        reason = str(halted.get("reason", "")) if isinstance(halted, dict) else str(halted or "")
        yield gauge("bknr_diverged", "1 when this replica has evidence it diverged: halted on a "
                    "divergence, or it refused a replayed entry",
                    int("diverg" in reason.lower() or "nondetermin" in reason.lower()
                        or _num(st.get("replayed_entries")) > 0))
        yield gauge("bknr_last_checkpoint_index", "index of the last consistency checkpoint applied "
                    "here", _num(st.get("last_checkpoint")))
        refused = (st.get("definitions") or {}).get("refused_transactions") or []
        yield gauge("bknr_refused_transactions", "transactions of this node's definition that some "
                    "voter does not know (refused with NotCapable)", len(refused))
        lag = GaugeMetricFamily("bknr_follower_lag", "leader: entries a follower is behind",
                                labels=[*labels, "follower"])
        for f in st.get("followers") or []:
            lag.add_metric([*me, str(f["id"])], _num(f.get("lag")))
        yield lag
        auth = CounterMetricFamily("bknr_raft_auth", "authenticated raft transport: handshakes by "
                                   "result (accepted, connected, refused_in, refused_out, timeouts)",
                                   labels=[*labels, "result"])
        stats = st.get("auth") if isinstance(st.get("auth"), dict) else {}
        for result in AUTH_RESULTS:
            auth.add_metric([*me, result], _num(stats.get(result)))
        yield auth
        http = CounterMetricFamily("bknr_http_requests", "HTTP requests by route and status",
                                   labels=[*labels, "route", "code"])
        for (route, code), n in sorted(self.requests.items()):
            http.add_metric([*me, str(route), str(code)], n)
        yield http


class NodeMetrics:
    """The registry of one node: the collector plus the event histograms."""

    def __init__(self, cs: Any, requests: Counter) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(cs, requests))
        labels = {"node": str(cs.name), "group": str(cs.group)}
        self.tx_seconds = Histogram(
            "bknr_server_tx_duration_seconds", "POST /tx: from request to the committed and applied "
            "answer (etcd's backend commit analogue, as a client of this node sees it)",
            registry=self.registry, labelnames=list(labels),
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        ).labels(**labels)
        self.snapshot_seconds = Histogram(
            "bknr_snapshot_save_duration_seconds", "store snapshot serialisation for the engine",
            registry=self.registry, labelnames=list(labels),
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)).labels(**labels)
        cs.on_store_snapshot = self.snapshot_seconds.observe

    def text(self) -> bytes:
        return generate_latest(self.registry)
