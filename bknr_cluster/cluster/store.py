"""ClusterStore: a prevalence store replicated through the Raft engine.

Submit path (this module): ``execute`` encodes the transaction (codec errors surface here, before
anything is logged), hands the record to the group committer and waits for its waiter. Apply path
(``apply.py``): one applier thread drains ``engine.next_committed`` in log order, applies every
record of every batch on this replica, and resolves the waiters of this node's own callers. See
DESIGN.md in this folder.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bknr_cluster.cluster.admin import AdminMixin
from bknr_cluster.cluster.affinity import PythonThreadPin, allowed_cpus, choose_cpu
from bknr_cluster.cluster.aio import AsyncCallerMixin
from bknr_cluster.cluster.apply import ApplierMixin
from bknr_cluster.cluster.client import ApiClient
from bknr_cluster.cluster.commit import AppliedSignal, GroupCommitter, Waiter
from bknr_cluster.cluster.definition import Capabilities, describe
from bknr_cluster.cluster.monitor import ClusterMonitor
from bknr_cluster.cluster.priority import PriorityKeeper
from bknr_cluster.errors import (
    BknrError,
    NoLeader,
    NotLeader,
    ReplicaHalted,
    Timeout,
    TransactionFailed,
    UnknownTransaction,
    UsageError,
)
from bknr_cluster.store.model import LOCAL
from bknr_cluster.vocabulary import BLOB_DIR, DataDirLayout, Role

log = logging.getLogger("bknr.cluster")

Peers = str | list[tuple[int, str]] | Mapping[int, str]


def parse_peers(peers: Peers) -> dict[int, str]:
    """``"127.0.0.1:7001:1,127.0.0.1:7002:2"`` / ``[(1, "127.0.0.1:7001")]`` -> {id: address}."""
    if isinstance(peers, Mapping):
        return {int(k): str(v) for k, v in peers.items()}
    out: dict[int, str] = {}
    if isinstance(peers, str):
        for part in filter(None, (p.strip() for p in peers.split(","))):
            addr, sep, nid = part.rpartition(":")
            if not sep or not nid.isdigit() or ":" not in addr:
                raise UsageError(f"bad peer {part!r}: expected host:port:id")
            out[int(nid)] = addr
        return out
    for nid, addr in peers:
        out[int(nid)] = str(addr)
    return out


def tx_name(tx: Any) -> str:
    """The registered name of a transaction (function object or name)."""
    if isinstance(tx, str):
        return tx
    for attr in ("tx_name", "name", "__bknr_name__"):
        v = getattr(tx, attr, None)
        if isinstance(v, str):
            return v
    raise UnknownTransaction(f"{tx!r} is not a registered transaction")


def raft_secret(cfg: Any) -> bytes | None:
    """The cluster's raft secret (``raft_secret_file``), or None when it runs without one."""
    getter = getattr(cfg, "raft_secret", None)
    return getter() if callable(getter) else None


def _lookup(src: Mapping[int, str] | Callable[[int], str] | None, node_id: int) -> str:
    if not node_id or src is None:
        return ""
    if callable(src):
        return src(node_id) or ""
    return src.get(node_id, "")


class ClusterStore(AsyncCallerMixin, ApplierMixin, AdminMixin):
    """A replicated store on one node; see the module docstring and DESIGN.md."""

    def __init__(self, definition: Any, *positional: Any, node_id: int | None = None,
                 peers: Peers | None = None, data_dir: str | os.PathLike | None = None,
                 group: str = "bknr", transactions: Any = (), queries: Any = (),
                 election_timeout_ms: int = 1000, heartbeat_ms: int = 100,
                 snapshot_threshold: int = 10000, snapshot_trailing: int = 2000,
                 store_snapshot_every: int | None = None, batch_max_count: int = 512,
                 batch_max_bytes: int = 1 << 20, batch_window: int = 4,
                 api_urls: Mapping[int, str] | Callable[[int], str] | None = None,
                 node_names: Mapping[int, str] | Callable[[int], str] | None = None,
                 token: str | None = None, name: str | None = None,
                 engine_factory: Callable[..., Any] | None = None, start: bool = True,
                 switch_interval: float | None = None, secret: bytes | None = None,
                 freeze_gc: bool = False, python_cpu: int | str | None = None,
                 checkpoint_every: int = 10000, monitor_interval: float = 0.5,
                 priorities: Mapping[int, int] | None = None,
                 priority_settle_ms: int | None = None,
                 tls: Any = None, api_ssl: Any = None) -> None:
        from bknr_cluster.store import Store, StoreDefinition  # late: importable in isolation

        # Two spellings: ClusterStore(definition, node_id, peers, data_dir[, group], ...) and
        # ClusterStore(classes, transactions[, queries], node_id=..., peers=..., data_dir=...).
        if isinstance(definition, StoreDefinition):
            named = dict(zip(("node_id", "peers", "data_dir", "group"), positional, strict=False))
            if len(positional) > 4:
                raise UsageError("ClusterStore(definition, node_id, peers, data_dir, group, ...)")
        else:
            named = dict(zip(("transactions", "queries"), positional, strict=False))
            if len(positional) > 2:
                raise UsageError("ClusterStore(classes, transactions, queries, node_id=..., ...)")
        node_id = named.get("node_id", node_id)
        peers = named.get("peers", peers)
        data_dir = named.get("data_dir", data_dir)
        group = named.get("group", group)
        if not isinstance(definition, StoreDefinition):
            definition = StoreDefinition(group, classes=definition,
                                         transactions=named.get("transactions", transactions),
                                         queries=named.get("queries", queries))
        if node_id is None or peers is None or data_dir is None:
            raise UsageError("ClusterStore needs node_id, peers and data_dir")

        if switch_interval:
            # Process-wide, so only when asked (bknr-node asks): with many caller threads a
            # longer GIL slice lets the applier finish a slice of entries and the woken callers
            # refill the queue in bulk, instead of handing the GIL around every 5 ms. The engine
            # loop never takes the GIL, so heartbeats do not depend on it.
            sys.setswitchinterval(switch_interval)
        # Also process-wide, so only when asked (bknr-node asks): after loading or writing a
        # store snapshot, move every live object out of the cyclic GC's reach (store/gctune.py),
        # so full collections stop walking the whole store with the applier holding the GIL.
        self.freeze_gc = freeze_gc
        # Opt-in too: pin the process's Python threads to one CPU while running (affinity.py).
        self._cpus = allowed_cpus()
        choose_cpu(python_cpu, int(node_id), self._cpus)  # a bad value fails here, not in start()
        self._python_cpu_spec = python_cpu
        self._pin: PythonThreadPin | None = None

        self.definition = definition
        self.node_id = int(node_id)
        self.peers = parse_peers(peers)
        if self.node_id not in self.peers:
            raise UsageError(f"node id {self.node_id} is not among the peers {sorted(self.peers)}")
        self.address = self.peers[self.node_id]
        self.data_dir = Path(data_dir).resolve()
        self.group = group
        self.name = name or f"n{self.node_id}"
        self.token = token
        self._api_urls = api_urls
        self._node_names = node_names
        self.store = Store(None, definition=definition, blob_dir=str(Path(data_dir).resolve() / BLOB_DIR))
        # Calling a transaction function directly (``open_account("ann")``) must replicate, not
        # just change this replica: bind the transactions to us (Transaction.__call__ calls
        # ``_bound.execute``). Classes and queries stay bound to the local store.
        for t in definition.transactions.values():
            t._bound = self
        raft_dir = DataDirLayout(self.data_dir).raft_dir
        raft_dir.mkdir(parents=True, exist_ok=True)
        if engine_factory is None:
            from bknr_cluster.engine import RaftNode
            engine_factory = RaftNode
        # The raft secret authenticates members on every raft connection (docs/security.md).
        auth: dict[str, Any] = {"secret": secret} if secret is not None else {}
        # Leadership priorities (id -> 1/0/-1): the engine orders its election head start by
        # them; the PriorityKeeper (priority.py) hands leadership to a preferred node.
        self.priorities = {int(i): int(p) for i, p in (priorities or {}).items()}
        if any(self.priorities.values()):
            auth["priority"] = self.priorities.get(self.node_id, 0)
            auth["peer_priorities"] = {i: p for i, p in self.priorities.items() if i != self.node_id}
        # TLS (engine.TlsFiles) encrypts them too; api_ssl is the context for our own calls to
        # the leader's API (tls_config.client_ssl_context).
        if tls is not None:
            auth["tls"] = tls
        self._api_ssl = api_ssl
        self.engine = engine_factory(
            self.node_id, self.address, str(raft_dir), election_timeout_ms=election_timeout_ms,
            heartbeat_ms=heartbeat_ms, snapshot_threshold=snapshot_threshold,
            snapshot_trailing=snapshot_trailing, store_snapshot_every=store_snapshot_every,
            max_entry_bytes=max(batch_max_bytes + 4096, 64 << 20), **auth)
        self.election_timeout_ms = election_timeout_ms
        self.priority_keeper = PriorityKeeper(
            self.node_id, self.priorities, self.engine, election_timeout_ms, name_of=self.node_name,
            settle_s=None if priority_settle_ms is None else priority_settle_ms / 1000)
        self.committer = GroupCommitter(self.engine.submit, self.node_id, max_count=batch_max_count,
                                        max_bytes=batch_max_bytes, window=batch_window,
                                        map_error=self._map_error,
                                        submit_many=getattr(self.engine, "submit_many", None))
        # The apply lock makes (store state, applied_index) one consistent pair for readers of
        # the whole state (digest, backup); transactions themselves lock inside the store.
        self._apply_lock = threading.RLock()
        # Signalled by the applier after each batch; that is also when the callers the batch
        # resolved are woken (commit.py: deferred wake-ups).
        self._applied_cond = AppliedSignal(self.committer.release_deferred)
        self.applied_index = 0
        self.applied_term = 0
        self.last_store_snapshot = 0
        self.applied_entries = 0
        self.applied_records = 0
        self.failed_records = 0
        self.corrupt_entries = 0
        self.restores = 0
        self.replayed_entries = 0  # entries refused because they were already applied (apply.py)
        self.started_at = time.time()
        self._digest_cache: tuple[int, str] | None = None
        # Halting, definitions and checkpoints (apply.py, definition.py, monitor.py; DESIGN.md).
        # ``halted`` is None while this replica applies, else {index, reason, ...}.
        self.halted: dict[str, Any] | None = None
        self._halt_event = threading.Event()
        self.capabilities = Capabilities(describe(definition), self.node_id)
        self.checkpoint_every = max(0, int(checkpoint_every))
        self.checkpoints: OrderedDict[int, dict] = OrderedDict()  # index -> our digest there
        self.verdicts: OrderedDict[int, dict] = OrderedDict()     # index -> the majority's
        self.last_checkpoint = 0
        self._probe_codec: Any = None
        # A store whose digest() is O(1) (incremental; it then also offers digest_full() for
        # the full walk) lets the applier publish (index, digest) after every slice, so
        # /status never waits for the apply lock; otherwise digest() walks the store once per
        # applied index, under the apply lock (cached).
        self._cheap_digest = callable(getattr(self.store, "digest_full", None))
        self._published_digest: tuple[int, str] | None = None
        self.monitor = ClusterMonitor(self, monitor_interval)
        self._running = False
        self._applier: threading.Thread | None = None
        self._clients: dict[str, ApiClient] = {}
        self._forwarders: Any = None   # _forward_pool()
        self._deliveries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        if start:
            self.start()

    @classmethod
    def from_config(cls, path: str | os.PathLike, node: str | int, *, definition: Any = None,
                    **overrides: Any) -> ClusterStore:
        """Build the store of node ``node`` (name or id) from a cluster YAML."""
        from bknr_cluster.cluster.config import ClusterConfig
        from bknr_cluster.cluster.tls_config import client_ssl_context, raft_tls_files

        cfg = ClusterConfig.load(path)
        me = cfg.node(node)
        if definition is None:
            from bknr_cluster.cluster.loader import load_definition
            definition = load_definition(cfg.store, cfg.base_dir)

        def lookup(node_id: int) -> Any:
            n = cfg.node_by_id(node_id)
            if n is None:  # a node added after we started: the operator edited the YAML
                try:
                    n = ClusterConfig.load(path).node_by_id(node_id)
                except BknrError:
                    n = None
            return n

        def api_url(node_id: int) -> str:
            n = lookup(node_id)
            return n.api_url if n else ""

        def node_name(node_id: int) -> str:
            n = lookup(node_id)
            return n.name if n else ""

        kw: dict[str, Any] = dict(
            checkpoint_every=cfg.checkpoint_every,
            group=cfg.group, election_timeout_ms=cfg.election_timeout_ms,
            heartbeat_ms=cfg.heartbeat_ms, snapshot_threshold=cfg.snapshot_threshold,
            snapshot_trailing=cfg.snapshot_trailing, batch_max_count=cfg.batch_max_count,
            batch_max_bytes=cfg.batch_max_bytes, api_urls=api_url, node_names=node_name,
            token=cfg.token(), secret=raft_secret(cfg), tls=raft_tls_files(cfg, me),
            api_ssl=client_ssl_context(cfg, me),
            name=me.name, python_cpu=me.python_cpu, priorities={n.id: n.priority for n in cfg.nodes},
            priority_settle_ms=cfg.priority_settle_ms)
        kw.update(overrides)
        peers = {n.id: n.raft_address for n in cfg.nodes}
        return cls(definition, me.id, peers, me.data_dir, **kw)

    # --- lifecycle ------------------------------------------------------------------------

    def bootstrap(self, configuration: list[tuple[int, str, str]] | None = None) -> None:
        """Bootstrap the engine (fresh data dir only); default: every peer as a voter."""
        conf = configuration or [(i, a, Role.voter.value) for i, a in sorted(self.peers.items())]
        self.engine.bootstrap(conf)

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self.engine.start()
        self.committer.start()
        self._applier = threading.Thread(target=self._apply_loop, name="bknr-applier", daemon=True)
        self._applier.start()
        self.committer.applier_ident = self._applier.ident
        self.monitor.start()
        self.priority_keeper.start()
        # After engine.start: its loop thread, started from this thread, must keep every CPU.
        self.set_python_cpu(self._python_cpu_spec)

    def stop(self) -> None:
        """Stop the engine and the threads; idempotent. Pending callers get ``Shutdown``."""
        if not self._running:
            return
        self._running = False
        self._halt_event.set()
        self.monitor.stop()
        self.priority_keeper.stop()
        self.committer.stop()
        try:
            self.engine.stop()
        finally:
            if self._applier is not None:
                self._applier.join(timeout=10)
            for c in self._clients.values():
                c.close()
            if self._forwarders is not None:
                self._forwarders.shutdown(wait=False, cancel_futures=True)
                self._forwarders = None
            self._unpin()

    close = stop

    def set_python_cpu(self, spec: int | str | None) -> int | None:
        """Pin the process's Python threads to one CPU (``"auto"``: chosen by node id), or
        unpin them (None); returns the CPU. See affinity.py for why and the caveats."""
        cpu = choose_cpu(spec, self.node_id, self._cpus)
        self._python_cpu_spec = spec
        if self._pin is not None and self._pin.cpu != cpu:
            self._unpin()
        if cpu is not None and self._pin is None and self._running:
            pin = PythonThreadPin(cpu, self._cpus)
            if pin.apply():
                self._pin = pin
        return self.python_cpu

    def _unpin(self) -> None:
        if self._pin is not None:
            self._pin.undo()
            self._pin = None

    @property
    def python_cpu(self) -> int | None:
        """The CPU the Python threads are pinned to, None when not pinned."""
        return self._pin.cpu if self._pin is not None else None

    def __enter__(self) -> ClusterStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- errors and hints -----------------------------------------------------------------

    def api_url(self, node_id: int) -> str:
        """The API URL of a node id (for hints), or "" when unknown."""
        return _lookup(self._api_urls, node_id)

    def node_name(self, node_id: int) -> str:
        return _lookup(self._node_names, node_id) or (f"n{node_id}" if node_id else "")

    def _map_error(self, exc: BaseException) -> BaseException:
        """Engine errors as callers see them: NotLeader carries the leader's API address."""
        if isinstance(exc, NotLeader):
            if not exc.leader_id:
                return NoLeader(0, "", message="not the leader and no leader is known")
            return NotLeader(exc.leader_id, exc.leader_address, leader_api=self.api_url(exc.leader_id))
        return exc

    # --- submit path ----------------------------------------------------------------------

    def _refuse_halted(self) -> None:
        h = self.halted
        if h is not None:
            raise ReplicaHalted(f"this replica halted at entry {h['index']} ({h['reason']}); "
                                "nothing was logged: send writes to another node")

    def check_capable(self, tx: Any) -> None:
        """The gate in front of the log: refuse (``NotCapable``, nothing logged) a transaction
        some current voter's store definition does not know, and any write on a halted
        replica. One frozenset lookup on the common path (definition.py)."""
        if self.halted is not None:
            self._refuse_halted()
        try:
            name = self.store.definition._tx_any[tx].name
        except (KeyError, TypeError):
            name = self.store.definition.transaction(tx).name
        caps = self.capabilities
        if not caps.capable(name):
            raise caps.refusal(name, self.node_name)

    def submit_record(self, record: bytes, timeout: float = 30.0) -> Waiter:
        """Replicate one encoded record; the returned waiter is resolved (or Timeout raised)."""
        if self.halted is not None:
            self._refuse_halted()
        w = self.committer.enqueue(record)
        if not self.committer.wait(w, timeout):
            raise Timeout(f"no outcome within {timeout} s; the transaction may or may not commit")
        return w

    def execute(self, tx: Any, *args: Any, forward: bool = False, timeout: float = 30.0,
                **kwargs: Any) -> Any:
        """Run ``tx`` on every replica after commit; return its result here (see module doc)."""
        result, _ = self.execute_indexed(tx, args, kwargs, forward=forward, timeout=timeout)
        return result

    def execute_indexed(self, tx: Any, args: tuple | list, kwargs: dict, *, forward: bool = False,
                        timeout: float = 30.0, raise_tx: bool = True) -> tuple[Any, int]:
        """``execute`` returning ``(result, log index)``; with ``raise_tx=False`` a failing
        transaction raises ``TransactionFailed`` instead of its own exception (HTTP API)."""
        if LOCAL.tx is not None:  # the applier would wait for itself
            raise UsageError("execute() inside a transaction: call the transaction function directly")
        record = self.store.encode_transaction(tx, *args, **kwargs)
        self.check_capable(tx)
        deadline = time.monotonic() + timeout
        left = timeout
        while True:
            w = self.submit_record(record, left)
            if w.error is None:  # the common case, before the full outcome rule
                return w.result, w.index
            err = self._settle(w, forward=forward, raise_tx=raise_tx)
            if err is None:
                return w.result, w.index
            if self._forwardable(err):
                return self._forward(tx_name(tx), args, kwargs, err, deadline)
            # Election or hand-over in progress: NotLeader means nothing was logged, so waiting
            # is safe.
            pause = self._no_leader_pause()
            if deadline - time.monotonic() <= pause:
                raise err
            threading.Event().wait(pause)
            left = max(0.0, deadline - time.monotonic())

    @staticmethod
    def _settle(w: Any, *, forward: bool, raise_tx: bool) -> NotLeader | None:
        """The outcome of a resolved waiter: None on success, the NotLeader to forward or retry
        on, and otherwise raises (the transaction's own error, or the engine's)."""
        err = w.error
        if err is None:
            return None
        if w.tx_error:
            if raise_tx:
                raise err
            raise TransactionFailed(type(err).__name__, str(err)) from err
        if not (forward and isinstance(err, NotLeader)):
            raise err
        return err

    def _forwardable(self, err: NotLeader) -> bool:
        """A NotLeader naming another node's API. A leader handing over leadership refuses
        writes naming *itself* (libraft refuses entries during a transfer): forwarding to our
        own API would only bounce; the caller waits for the new leader instead."""
        return bool(err.leader_api) and err.leader_id != self.node_id

    def _no_leader_pause(self) -> float:
        """How long a caller waits before trying again while no leader is known: a tenth of
        the election timeout (at most 50 ms), so a write lands soon after the election."""
        return min(0.05, self.election_timeout_ms / 10000)

    def _client(self, url: str) -> ApiClient:
        c = self._clients.get(url)
        if c is None:
            c = self._clients[url] = ApiClient(url, self.token, ssl_context=self._api_ssl)
        return c

    def _forward(self, name: str, args: Any, kwargs: dict, exc: NotLeader,
                 deadline: float) -> tuple[Any, int]:
        from bknr_cluster.store import from_json, to_json

        body = {"args": [to_json(a) for a in args],
                "kwargs": {k: to_json(v) for k, v in kwargs.items()}, "forward": True}
        remaining = max(0.1, deadline - time.monotonic())
        answer = self._client(exc.leader_api).call("POST", f"/tx/{name}", body, timeout=remaining)
        return from_json(answer.get("result"), self.store), int(answer.get("index", 0))

    # --- reads ----------------------------------------------------------------------------

    def barrier(self, timeout: float = 10.0) -> int:
        """Linearizable read point: returns once everything committed before now is applied
        here. Raises NotLeader on a follower. (An empty record rides the group commit; see
        DESIGN.md for why a libraft barrier alone cannot tell the applier where it stands.)"""
        w = self.submit_record(b"", timeout)
        if w.error is not None:
            raise w.error
        return w.index

    @contextmanager
    def read(self, consistent: bool = False, timeout: float = 10.0) -> Iterator[Any]:
        """``with cs.read(consistent=True) as store: ...`` — a consistent view of the store."""
        if consistent:
            self.barrier(timeout)
        with self.store.reading():
            yield self.store

    def query(self, name: str, *args: Any, consistent: bool = False, timeout: float = 10.0,
              **kwargs: Any) -> Any:
        if consistent:
            self.barrier(timeout)
        return self.store.run_query(name, *args, **kwargs)

    def wait_applied(self, index: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._applied_cond:
            while self.applied_index < index:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied_cond.wait(left)
        return True

    # --- whole-state views ----------------------------------------------------------------

    def digest(self) -> tuple[int, str]:
        """``(applied_index, canonical digest)`` taken together."""
        published = self._published_digest
        if published is not None:  # O(1) digests: the applier's, from its last slice
            return published
        with self._apply_lock:
            cached = self._digest_cache
            if cached is not None and cached[0] == self.applied_index:
                return cached
            self._digest_cache = (self.applied_index, self.store.digest())
            return self._digest_cache
