"""The leader's watch over its members: definitions, consistency checkpoints, halted replicas.

One thread per ``ClusterStore`` (``bknr-monitor``), a round every ``interval`` seconds. On every
node it keeps the gate's voter set current (``Capabilities.set_voters``, from the engine's
configuration). On the leader only, it also:

1. publishes store definitions through the log: its own, and each member's as the member
   reports it in ``GET /status`` (``definition``), whenever the replicated view
   (``Capabilities``) differs from what the member runs now; so a restarted (upgraded) node
   is known to every replica within a round or two, in log order;
2. appends a ``checkpoint`` entry every ``checkpoint_every`` applied entries (each replica
   records its state digest at exactly that index when it applies it);
3. collects the members' digests for recent checkpoints (``GET /status`` ``checkpoints``) and,
   once a majority of the voters reported the same digest (with the same schema), appends a
   ``verdict`` entry: every replica compares its own digest with it and halts if it differs;
4. when this node itself is halted, hands leadership to a voter that is not.

Polling members costs one ``GET /status?digest=0`` per member and round (in parallel, 1 s
timeout each). Entries are submitted straight to the engine (nobody waits for them); a submit
that failed is simply tried again in a later round. See DESIGN.md, "Store definitions and the
gate" and "Consistency checkpoints".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bknr_cluster.cluster.batch import encode_system
from bknr_cluster.vocabulary import Role

log = logging.getLogger("bknr.cluster")

RESUBMIT_S = 5.0  # an entry not seen applied after this long is submitted again


class ClusterMonitor:
    def __init__(self, cs: Any, interval: float = 0.5) -> None:
        self.cs = cs
        self.interval = max(0.05, float(interval))
        self.peers: dict[int, dict[str, Any]] = {}  # member id -> what its /status said last
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._sent_defs: dict[int, tuple[str, float]] = {}
        self._sent_checkpoint: tuple[int, float] | None = None
        self._sent_verdicts: dict[int, float] = {}
        self._undecided: set[int] = set()
        self._step_down_at = 0.0
        self._errors = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bknr-monitor-poll")
        self._thread = threading.Thread(target=self._run, name="bknr-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def poke(self) -> None:
        """Run the next round now (membership changed, a checkpoint was asked for)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
                self._errors = 0
            except Exception:  # never let the monitor die; say it once per streak
                self._errors += 1
                if self._errors == 1:
                    log.exception("cluster monitor round failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    # --- one round ------------------------------------------------------------------------

    def round(self) -> None:
        cs = self.cs
        st = cs.engine.status()
        conf = st.get("configuration") or []
        voters = [int(c["id"]) for c in conf if c.get("role") == Role.voter]
        cs.capabilities.set_voters(voters)
        if st.get("state") != "leader":
            self.peers.clear()
            self._sent_checkpoint = None
            return
        members = [int(c["id"]) for c in conf if int(c["id"]) != cs.node_id]
        self._poll(members)
        if cs.halted is not None:
            self._step_down(voters)
            return
        if len(conf) < 2:
            return  # nothing to gate or compare in a one-node cluster
        self._publish(cs.node_id, cs.capabilities.own)
        for m in members:
            desc = (self.peers.get(m) or {}).get("definition")
            if isinstance(desc, dict) and desc.get("fingerprint"):
                self._publish(m, desc)
        if len(voters) >= 2:
            self._maybe_checkpoint()
            self._verdicts(voters)

    def _poll(self, members: list[int]) -> None:
        cs = self.cs
        pool = self._pool
        if pool is None:
            return

        def fetch(node_id: int) -> tuple[int, dict | None]:
            url = cs.api_url(node_id)
            if not url:
                return node_id, None
            try:
                return node_id, cs.clients.get(url).call("GET", "/status?digest=0", timeout=1.0)
            except Exception:
                return node_id, None
        now = time.monotonic()
        for node_id, st in pool.map(fetch, members):
            if st is None:
                old = self.peers.get(node_id)
                if old is not None:
                    old["reachable"] = False
                continue
            cps = {}
            for k, v in (st.get("checkpoints") or {}).items():
                if str(k).isdigit() and isinstance(v, dict):
                    cps[int(k)] = v
            self.peers[node_id] = {"time": now, "reachable": True, "halted": st.get("halted"),
                                   "definition": st.get("definition"), "checkpoints": cps,
                                   "applied_index": st.get("applied_index") or 0}
        for gone in set(self.peers) - set(members):
            del self.peers[gone]

    def _submit(self, kind: str, body: dict) -> bool:
        cs = self.cs
        entry = encode_system(cs.node_id, cs.committer.session, 0, kind, body)
        try:
            cs.engine.submit(entry)  # not waited for: a later round sees whether it applied
            return True
        except Exception as exc:
            log.warning("could not submit a %s entry: %s", kind, exc)
            return False

    def _publish(self, node_id: int, desc: dict) -> None:
        caps = self.cs.capabilities
        fp = desc.get("fingerprint")
        if (caps.members.get(node_id) or {}).get("fingerprint") == fp:
            self._sent_defs.pop(node_id, None)
            return
        sent = self._sent_defs.get(node_id)
        now = time.monotonic()
        if sent is not None and sent[0] == fp and now - sent[1] < RESUBMIT_S:
            return
        if self._submit("definition", {"node": node_id, "definition": desc}):
            self._sent_defs[node_id] = (fp, now)

    def _maybe_checkpoint(self) -> None:
        cs = self.cs
        every = cs.checkpoint_every
        if not every or cs.halted is not None:
            return
        now = time.monotonic()
        sent = self._sent_checkpoint
        if sent is not None and cs.last_checkpoint < sent[0] and now - sent[1] < RESUBMIT_S:
            return  # ours is on its way
        if cs.applied_index - cs.last_checkpoint >= every:
            if self._submit("checkpoint", {}):
                self._sent_checkpoint = (cs.applied_index, now)

    def _verdicts(self, voters: list[int]) -> None:
        cs = self.cs
        majority = len(voters) // 2 + 1
        decided = [c for c, v in list(cs.verdicts.items()) if v.get("digest")]
        newest_decided = max(decided, default=0)
        now = time.monotonic()
        for c, mine in list(cs.checkpoints.items()):
            if c <= newest_decided or c in cs.verdicts or c in self._undecided:
                continue
            sent = self._sent_verdicts.get(c)
            if sent is not None and now - sent < RESUBMIT_S:
                continue
            votes: dict[int, tuple[str, str]] = {}
            for v in voters:
                rec = mine if v == cs.node_id else (self.peers.get(v) or {}).get("checkpoints", {}).get(c)
                if isinstance(rec, dict) and rec.get("digest"):
                    votes[v] = (str(rec.get("schema") or ""), str(rec["digest"]))
            if not votes:
                continue
            (schema, digest), n = Counter(votes.values()).most_common(1)[0]
            if n >= majority:
                agree = sorted(v for v, x in votes.items() if x == (schema, digest))
                disagree = sorted(v for v, x in votes.items() if x[0] == schema and x[1] != digest)
                if disagree:
                    log.error("checkpoint %d: nodes %s disagree with the majority's digest %s "
                              "(nodes %s); a verdict entry halts them", c, disagree, digest, agree)
                if self._submit("verdict", {"index": c, "digest": digest, "schema": schema,
                                            "agree": agree, "disagree": disagree}):
                    self._sent_verdicts[c] = now
            elif len(votes) == len(voters):
                self._undecided.add(c)
                log.warning("checkpoint %d: no digest has a majority of the voters %s (mixed "
                            "schemas during an upgrade, or several diverged replicas): no verdict",
                            c, votes)
        for c in list(self._sent_verdicts):
            if c not in cs.checkpoints:
                del self._sent_verdicts[c]
        self._undecided &= set(cs.checkpoints)

    # --- a halted leader ------------------------------------------------------------------

    def healthy_target(self, voters: list[int]) -> int:
        """The voter (not us) best placed to lead: reachable, not halted, furthest applied;
        0 when none is known."""
        best, best_applied = 0, -1
        for v in voters:
            p = self.peers.get(v)
            if v == self.cs.node_id or not p or not p.get("reachable") or p.get("halted"):
                continue
            if int(p.get("applied_index") or 0) > best_applied:
                best, best_applied = v, int(p.get("applied_index") or 0)
        return best

    def halted_peers(self) -> set[int]:
        return {v for v, p in self.peers.items() if p.get("halted")}

    def _step_down(self, voters: list[int]) -> None:
        now = time.monotonic()
        if now < self._step_down_at:
            return
        self._step_down_at = now + max(2.0, 4 * self.cs.election_timeout_ms / 1000)
        if not [v for v in voters if v != self.cs.node_id]:
            return  # the only voter: nobody to hand over to
        target = self.healthy_target(voters)
        if not target:
            log.error("halted leader: no healthy voter known to hand leadership to")
            return
        log.error("halted leader: handing leadership to node %d", target)
        try:
            self.cs.engine.transfer(target).result(max(1.0, 3 * self.cs.election_timeout_ms / 1000))
        except Exception as exc:
            log.warning("halted leader: transfer to node %d failed: %s", target, exc)
