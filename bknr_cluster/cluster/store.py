"""ClusterStore: a prevalence store replicated through the Raft engine, composed of parts.

``ClusterStore(definition, settings, engine_factory=..., directory=..., api_ssl=..., start=...)``
builds one node from a frozen ``ClusterSettings`` (settings.py: validated there, once) and wires
its parts, each with a written contract (DESIGN.md in this folder):

- the engine (``engine_factory(node_id, address, raft_dir, **settings.engine_options())``);
- the ``GroupCommitter`` (commit.py): batches this node's records into engine entries;
- the ``Applier`` (apply.py): owns the applied index and its counters, applies every committed
  item on its thread, resolves this node's waiters;
- the ``Submitter`` (submit.py): the gate and the one retry/forward policy of the sync and the
  asyncio callers;
- the ``ClusterAdmin`` (admin.py): membership, transfer, snapshots, backups, checkpoints;
- the ``ClusterMonitor`` (monitor.py) and the ``PriorityKeeper`` (priority.py).

This class only composes them and keeps the public face (``execute``, ``query``, ``status``...)
that the HTTP API, hosted applications and ``bknr-node`` use.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bknr_cluster.cluster.admin import ClusterAdmin
from bknr_cluster.cluster.affinity import PythonThreadPin, allowed_cpus, choose_cpu
from bknr_cluster.cluster.apply import Applier
from bknr_cluster.cluster.commit import GroupCommitter, Waiter
from bknr_cluster.cluster.definition import Capabilities, describe
from bknr_cluster.cluster.directory import NodeDirectory, StaticDirectory
from bknr_cluster.cluster.monitor import ClusterMonitor
from bknr_cluster.cluster.priority import PriorityKeeper
from bknr_cluster.cluster.settings import ClusterSettings, settings_fields
from bknr_cluster.cluster.status import node_status
from bknr_cluster.cluster.submit import ApiClients, Submitter, engine_error_mapper
from bknr_cluster.vocabulary import Role


def _applier_state(name: str, doc: str) -> property:
    """A read-only view of the applier's state (the applier alone changes it)."""
    return property(lambda self: getattr(self.applier, name), doc=doc)


class ClusterStore:
    """A replicated store on one node; see the module docstring and DESIGN.md."""

    def __init__(self, definition: Any, settings: ClusterSettings, *,
                 engine_factory: Callable[..., Any] | None = None,
                 directory: NodeDirectory | None = None, api_ssl: Any = None,
                 start: bool = True) -> None:
        from bknr_cluster.store import Store  # late: importable in isolation

        self.settings = settings
        if settings.switch_interval:
            # Process-wide, so only when asked (bknr-node asks): with many caller threads a
            # longer GIL slice lets the applier finish a slice of entries and the woken callers
            # refill the queue in bulk, instead of handing the GIL around every 5 ms. The engine
            # loop never takes the GIL, so heartbeats do not depend on it.
            sys.setswitchinterval(settings.switch_interval)
        # Opt-in too: pin the process's Python threads to one CPU while running (affinity.py).
        self._cpus = allowed_cpus()
        choose_cpu(settings.python_cpu, settings.node_id, self._cpus)  # fails here, not in start
        self._python_cpu_spec = settings.python_cpu
        self._pin: PythonThreadPin | None = None

        self.definition = definition
        self.node_id = settings.node_id
        self.address = settings.address
        self.data_dir = settings.data_dir
        self.group = settings.group
        self.name = settings.name
        self.token = settings.token
        self.election_timeout_ms = settings.election_timeout_ms
        self.checkpoint_every = max(0, int(settings.checkpoint_every))
        self.priorities = dict(settings.priorities)
        self.directory: NodeDirectory = directory or StaticDirectory()
        self.store = Store(None, definition=definition, blob_dir=str(settings.blob_dir))
        # Calling a transaction function directly (``open_account("ann")``) must replicate, not
        # just change this replica: bind the transactions to us (Transaction.__call__ calls
        # ``_bound.execute``). Classes and queries stay bound to the local store.
        for t in definition.transactions.values():
            t._bound = self
        settings.raft_dir.mkdir(parents=True, exist_ok=True)
        if engine_factory is None:
            from bknr_cluster.engine import RaftNode
            engine_factory = RaftNode
        self.engine = engine_factory(self.node_id, self.address, str(settings.raft_dir),
                                     **settings.engine_options())
        self.priority_keeper = PriorityKeeper(
            self.node_id, self.priorities, self.engine, self.election_timeout_ms,
            name_of=self.node_name, settle_s=None if settings.priority_settle_ms is None
            else settings.priority_settle_ms / 1000)
        self.map_error = engine_error_mapper(self.directory)
        self.committer = GroupCommitter(
            self.engine.submit, self.node_id, max_count=settings.batch_max_count,
            max_bytes=settings.batch_max_bytes, window=settings.batch_window,
            map_error=self.map_error, submit_many=getattr(self.engine, "submit_many", None))
        self.capabilities = Capabilities(describe(definition), self.node_id)
        self.applier = Applier(self.engine, self.store, self.committer, self.capabilities,
                               self.data_dir, freeze_gc=settings.freeze_gc,
                               on_halt=self._on_halt,
                               snapshot_compression=settings.snapshot_compression)
        self.clients = ApiClients(self.token, api_ssl)
        self.submitter = Submitter(self.node_id, self.store, self.committer, self.applier,
                                   self.capabilities, self.directory, self.clients,
                                   self.election_timeout_ms)
        self.monitor = ClusterMonitor(self, settings.monitor_interval)
        self.admin = ClusterAdmin(self.node_id, self.name, self.engine, self.store, self.applier,
                                  self.submitter, self.monitor, dict(settings.peers),
                                  self.node_name)
        self.started_at = time.time()
        self._running = False
        if start:
            self.start()

    @classmethod
    def from_config(cls, path: str | os.PathLike, node: str | int, *, definition: Any = None,
                    engine_factory: Callable[..., Any] | None = None, start: bool = True,
                    **overrides: Any) -> ClusterStore:
        """Build the store of node ``node`` (name or id) from a cluster YAML; ``overrides``
        are ``ClusterSettings`` fields that replace the YAML's values."""
        from bknr_cluster.cluster.config import ClusterConfig
        from bknr_cluster.cluster.directory import YamlDirectory
        from bknr_cluster.cluster.tls_config import client_ssl_context
        from bknr_cluster.errors import UsageError

        unknown = sorted(set(overrides) - settings_fields())
        if unknown:
            raise UsageError(f"ClusterStore.from_config: unknown setting(s) {', '.join(unknown)}")
        cfg = ClusterConfig.load(path)
        settings = ClusterSettings.from_config(cfg, node, **overrides)
        if definition is None:
            from bknr_cluster.cluster.loader import load_definition
            definition = load_definition(cfg.store, cfg.base_dir)
        return cls(definition, settings, engine_factory=engine_factory,
                   directory=YamlDirectory(cfg, path),
                   api_ssl=client_ssl_context(cfg, cfg.node(node)), start=start)

    # --- the applier's state (read-only views) ---------------------------------------------

    applied_index = _applier_state("applied_index", "The last log index applied here.")
    applied_term = _applier_state("applied_term", "The term of that entry.")
    halted = _applier_state("halted", "None while applying, else {index, reason, ...}.")
    last_store_snapshot = _applier_state("last_store_snapshot", "Index of the last store snapshot.")
    applied_entries = _applier_state("applied_entries", "Entries applied (counter).")
    applied_records = _applier_state("applied_records", "Records applied (counter).")
    failed_records = _applier_state("failed_records", "Records whose transaction raised.")
    corrupt_entries = _applier_state("corrupt_entries", "Malformed entries skipped.")
    restores = _applier_state("restores", "Snapshots and backups restored.")
    replayed_entries = _applier_state("replayed_entries", "Entries refused as replays.")

    @property
    def checkpoints(self) -> Any:
        """Our digest at recent checkpoints: index -> record (checkpoints.py)."""
        return self.applier.checks.checkpoints

    @property
    def verdicts(self) -> Any:
        """The majority's verdicts on recent checkpoints: index -> verdict."""
        return self.applier.checks.verdicts

    @property
    def last_checkpoint(self) -> int:
        return self.applier.checks.last_checkpoint

    @property
    def peers(self) -> dict[int, str]:
        """The live peer table {id: raft address} (membership changes update it)."""
        return self.admin.peers

    @property
    def freeze_gc(self) -> bool:
        return self.applier.freeze_gc

    @property
    def on_store_snapshot(self) -> Callable[[float], None] | None:
        """Called with the seconds each store snapshot took (metrics.py sets it)."""
        return self.applier.on_store_snapshot

    @on_store_snapshot.setter
    def on_store_snapshot(self, fn: Callable[[float], None] | None) -> None:
        self.applier.on_store_snapshot = fn

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
        self.applier.start()
        self.committer.applier_ident = self.applier.thread.ident
        self.monitor.start()
        self.priority_keeper.start()
        # After engine.start: its loop thread, started from this thread, must keep every CPU.
        self.set_python_cpu(self._python_cpu_spec)

    def stop(self) -> None:
        """Stop the engine and the threads; idempotent. Pending callers get ``Shutdown``."""
        if not self._running:
            return
        self._running = False
        self.applier.stop()
        self.monitor.stop()
        self.priority_keeper.stop()
        self.committer.stop()
        try:
            self.engine.stop()
        finally:
            self.applier.join(timeout=10)
            self.submitter.close()
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

    def _on_halt(self) -> None:
        """A halted leader hands leadership over: the monitor's next round does it (now)."""
        self.monitor.poke()

    # --- names ----------------------------------------------------------------------------

    def api_url(self, node_id: int) -> str:
        """The API URL of a node id (for hints), or "" when unknown."""
        return self.directory.api_url(node_id)

    def node_name(self, node_id: int) -> str:
        return self.directory.node_name(node_id) or (f"n{node_id}" if node_id else "")

    # --- submit path (submit.py) ----------------------------------------------------------

    def check_capable(self, tx: Any) -> None:
        self.submitter.check_capable(tx)

    def submit_record(self, record: bytes, timeout: float = 30.0) -> Waiter:
        return self.submitter.submit_record(record, timeout)

    def execute(self, tx: Any, *args: Any, forward: bool = False, timeout: float = 30.0,
                **kwargs: Any) -> Any:
        """Run ``tx`` on every replica after commit; return its result here (submit.py)."""
        return self.submitter.execute_indexed(tx, args, kwargs, forward=forward,
                                              timeout=timeout)[0]

    def execute_indexed(self, tx: Any, args: tuple | list, kwargs: dict, *, forward: bool = False,
                        timeout: float = 30.0, raise_tx: bool = True) -> tuple[Any, int]:
        return self.submitter.execute_indexed(tx, args, kwargs, forward=forward,
                                              timeout=timeout, raise_tx=raise_tx)

    def execute_async(self, tx: Any, args: tuple | list, kwargs: dict, *, forward: bool = False,
                      timeout: float = 30.0, raise_tx: bool = False) -> Any:
        """The awaitable of ``Submitter.execute_async`` (no extra coroutine frame)."""
        return self.submitter.execute_async(tx, args, kwargs, forward=forward, timeout=timeout,
                                            raise_tx=raise_tx)

    def barrier(self, timeout: float = 10.0) -> int:
        return self.submitter.barrier(timeout)

    def barrier_async(self, timeout: float = 10.0) -> Any:
        return self.submitter.barrier_async(timeout)

    # --- reads ----------------------------------------------------------------------------

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
        return self.applier.wait_applied(index, timeout)

    def digest(self) -> tuple[int, str]:
        """``(applied_index, canonical digest)`` taken together."""
        return self.applier.digest()

    # --- whole-cluster operations (admin.py) and status (status.py) -------------------------

    def backup(self) -> tuple[int, bytes]:
        return self.admin.backup()

    def restore_backup(self, snapshot: bytes, sha256_hex: str | None = None,
                       timeout: float = 120.0) -> int:
        return self.admin.restore_backup(snapshot, sha256_hex, timeout)

    def snapshot_now(self, timeout: float = 30.0) -> int:
        return self.admin.snapshot_now(timeout)

    def checkpoint_now(self, full: bool = False, timeout: float = 30.0,
                       wait_verdict: float = 10.0) -> dict[str, Any]:
        return self.admin.checkpoint_now(full, timeout, wait_verdict)

    def checkpoint_report(self, c: int) -> dict[str, Any]:
        return self.admin.checkpoint_report(c)

    def add_peer(self, node_id: int, address: str, role: str = Role.voter,
                 timeout: float = 30.0) -> None:
        self.admin.add_peer(node_id, address, role, timeout)

    def assign(self, node_id: int, role: str, timeout: float = 30.0) -> None:
        self.admin.assign(node_id, role, timeout)

    def remove_peer(self, node_id: int, timeout: float = 30.0) -> None:
        self.admin.remove_peer(node_id, timeout)

    def transfer(self, node_id: int = 0, timeout: float = 10.0) -> int:
        return self.admin.transfer(node_id, timeout)

    def is_leader(self) -> bool:
        return self.engine.status().get("state") == "leader"

    def status(self, with_digest: bool = True) -> dict[str, Any]:
        """The ``/status`` document (status.py, docs/api.md)."""
        return node_status(self, with_digest)
