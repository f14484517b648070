"""Thin Python face of the native Raft engine (``bknr_cluster._raft``, see native/DESIGN.md).

The engine's loop thread never takes the GIL; everything here validates arguments and queues
requests to it. Futures (``_raft.Future``) wait with the GIL released and raise errors.py
exceptions themselves; ``_error`` maps the codes of the few synchronous calls.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bknr_cluster import _raft, defaults, raft_install_finish, raft_repair
from bknr_cluster._raft import Signal
from bknr_cluster.datadir_lock import DataDirLock
from bknr_cluster.errors import (
    AlreadyBootstrapped,
    EngineError,
    EngineIOError,
    LeadershipLost,
    MembershipError,
    NotLeader,
    Shutdown,
    Timeout,
    TooBig,
    UsageError,
)
from bknr_cluster.vocabulary import ROLES, Role

LIBRAFT_VERSION: str = _raft.LIBRAFT_VERSION

PRIORITIES = (-1, 0, 1)
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")


def _error(code: int, message: str, leader_id: int = 0, leader_address: str = "") -> Exception:
    if code == _raft.E_NOT_LEADER:
        return NotLeader(leader_id, leader_address)
    cls = {
        _raft.E_LEADERSHIP_LOST: LeadershipLost,
        _raft.E_SHUTDOWN: Shutdown,
        _raft.E_TOO_BIG: TooBig,
        _raft.E_IO: EngineIOError,
        _raft.E_MEMBERSHIP: MembershipError,
        _raft.E_TIMEOUT: Timeout,
        _raft.E_ALREADY_BOOTSTRAPPED: AlreadyBootstrapped,
        _raft.E_INVALID: UsageError,
    }.get(code, EngineError)
    return cls(message)


# Completion of one engine request, implemented natively (no Python wrapper per request):
# ``result(timeout=None) -> int`` waits with the GIL released, in slices so signal handlers
# run, and raises the errors.py exception of a failure (Timeout if still pending);
# ``wait(timeout=None) -> bool`` and ``done() -> bool`` never raise.
Future = _raft.Future


def _check_id(node_id: int) -> int:
    if not isinstance(node_id, int) or isinstance(node_id, bool) or not 0 < node_id < 2**63:
        raise UsageError(f"node id must be a positive integer, not {node_id!r}")
    return node_id


def _check_address(address: str) -> str:
    ok = isinstance(address, str) and _ADDRESS.match(address)
    if not ok or not 0 < int(address.rsplit(":", 1)[1]) < 65536:
        raise UsageError(f"address must look like 'host:port', not {address!r}")
    return address


def _check_configuration(configuration: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    conf = []
    ids: set[int] = set()
    addresses: set[str] = set()
    for entry in configuration:
        node_id, address, role = entry
        _check_id(node_id)
        _check_address(address)
        if role not in ROLES:
            raise UsageError(f"role must be one of {ROLES}, not {role!r}")
        if node_id in ids:
            raise MembershipError(f"duplicate node id {node_id} in configuration")
        if address in addresses:
            raise MembershipError(f"duplicate address {address} in configuration")
        ids.add(node_id)
        addresses.add(address)
        conf.append((node_id, address, role))
    if not any(role == Role.voter for _, _, role in conf):
        raise MembershipError("configuration needs at least one voter")
    return conf


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the TLS raft transport (native/tls_transport.hpp, docs/security.md): the
    cluster CA certificate peers must chain to, this node's certificate and its private key."""
    ca: str | os.PathLike
    cert: str | os.PathLike
    key: str | os.PathLike


class RaftNode:
    """One Raft server. See docs/interfaces.md §1 for the contract."""

    def __init__(self, node_id: int, address: str, data_dir: str, *,
                 election_timeout_ms: int = defaults.ELECTION_TIMEOUT_MS,
                 heartbeat_ms: int = defaults.HEARTBEAT_MS,
                 snapshot_threshold: int = defaults.SNAPSHOT_THRESHOLD,
                 snapshot_trailing: int = defaults.SNAPSHOT_TRAILING,
                 pre_vote: bool = True, max_inflight_entries: int = 8192,
                 store_snapshot_every: int | None = None,
                 max_entry_bytes: int = defaults.MIN_MAX_ENTRY_BYTES,
                 secret: bytes | None = None, auth_timeout_ms: int = 5000,
                 priority: int = 0, peer_priorities: dict[int, int] | None = None,
                 tls: TlsFiles | None = None) -> None:
        self.node_id = _check_id(node_id)
        self.address = _check_address(address)
        if not 0 < heartbeat_ms < election_timeout_ms:
            raise UsageError("need 0 < heartbeat_ms < election_timeout_ms")
        if snapshot_threshold < 1 or snapshot_trailing < 0 or max_inflight_entries < 1 or max_entry_bytes < 1:
            raise UsageError("snapshot_threshold, max_inflight_entries and max_entry_bytes must be positive")
        if store_snapshot_every is None:
            # Half the threshold: a fresh store snapshot (M) is always available when libraft
            # snapshots at N, so the raw tail M+1..N stays short.
            store_snapshot_every = max(1, snapshot_threshold // 2)
        if store_snapshot_every < 1:
            raise UsageError("store_snapshot_every must be positive")
        if secret is not None:
            # Peers must prove knowledge of this shared secret on every raft connection
            # (native/auth_transport.cpp, docs/security.md).
            if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
                raise UsageError("the raft secret must be at least 16 bytes")
        if auth_timeout_ms < 1:
            raise UsageError("auth_timeout_ms must be positive")
        # Leadership priority (1 preferred, 0 none, -1 avoid) of this node and of its peers:
        # the order of the election head start after a leader's process died, and the timer
        # range (native/fast_election.cpp). Automatic transfers are cluster/priority.py's.
        peers = {int(i): p for i, p in (peer_priorities or {}).items()}  # JSON keys are strings
        for p in (priority, *peers.values()):
            if p not in PRIORITIES:
                raise UsageError(f"priority must be one of {PRIORITIES}, not {p!r}")
        self.priority = priority
        tls_paths = ("", "", "") if tls is None else (str(tls.ca), str(tls.cert), str(tls.key))
        self.data_dir = os.path.abspath(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self._lock = DataDirLock(self.data_dir)
        self._node = _raft.Node(self.node_id, self.address, self.data_dir, election_timeout_ms,
                                heartbeat_ms, snapshot_threshold, snapshot_trailing, bool(pre_vote),
                                max_inflight_entries, store_snapshot_every, max_entry_bytes,
                                bytes(secret or b""), auth_timeout_ms, priority,
                                sorted((_check_id(i), p) for i, p in peers.items()), *tls_paths)

    # -- life cycle -------------------------------------------------------------------------

    def bootstrap(self, configuration: list[tuple[int, str, str]]) -> None:
        """Write the initial configuration into an empty data dir (before start())."""
        with self._dir_locked():
            self._raise(*self._node.bootstrap(_check_configuration(configuration), False))

    def recover(self, configuration: list[tuple[int, str, str]]) -> None:
        """Force a new configuration after quorum loss (before start(); see raft_recover)."""
        with self._dir_locked():
            self._repair_before_load()  # raft_recover loads the log as well
            self._raise(*self._node.bootstrap(_check_configuration(configuration), True))

    def start(self) -> None:
        if not self._node.running():
            self._lock.acquire()  # held until stop(): one process per data directory
            try:
                self._repair_before_load()
                self._raise(*self._node.start())
            except BaseException:
                self._lock.release()
                raise
            return
        self._raise(*self._node.start())

    def _repair_before_load(self) -> None:
        # libraft refuses to load an open segment torn by a crash on a full disk; cut the torn
        # tail first, refuse other damage it would silently truncate (raft_repair.py). Then
        # finish a snapshot install a crash interrupted, which it would refuse for ever
        # (raft_install_finish.py).
        raft_repair.repair_open_segments(self.data_dir)
        raft_install_finish.finish_interrupted_install(self.data_dir)

    def stop(self) -> None:
        """Idempotent; joins the loop thread. Safe from atexit and signal handlers."""
        self._node.stop()
        self._lock.release()

    @contextlib.contextmanager
    def _dir_locked(self) -> Iterator[None]:
        """Hold the data-directory lock for a one-off operation unless start() holds it."""
        if self._lock.held:
            yield
            return
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    @property
    def running(self) -> bool:
        return self._node.running()

    @staticmethod
    def _raise(code: int, message: str) -> None:
        if code != _raft.OK:
            raise _error(code, message)

    # -- requests ---------------------------------------------------------------------------

    def submit(self, data: bytes) -> Future:
        """Future -> log index, once committed and handed to the apply queue."""
        return self._node.submit(data)

    def submit_many(self, datas: Sequence[bytes]) -> Future:
        """Future -> log index of ``datas[0]``, once *every* payload is committed and queued.

        Each payload becomes its own log entry, exactly as with one ``submit`` per payload, at
        consecutive indexes (``datas[k]`` at ``first + k``); the batch crosses to the engine
        once (one lock, one loop wake-up) and completes through one future. Errors: a refusal
        before anything was appended (``NotLeader``, ``TooBig`` for any payload, ``Shutdown``)
        means no entry of the batch is in the log; any later failure is ``LeadershipLost``
        (outcome unknown for the whole batch: some entries may commit).
        """
        if not datas:
            raise UsageError("submit_many needs at least one entry")
        return self._node.submit_many(datas)

    def barrier(self) -> Future:
        return self._node.request(_raft.R_BARRIER)

    def add(self, node_id: int, address: str) -> Future:
        """Adds a server as spare; promote it with assign()."""
        return self._node.request(_raft.R_ADD, _check_id(node_id), _check_address(address))

    def assign(self, node_id: int, role: str) -> Future:
        if role not in ROLES:
            raise UsageError(f"role must be one of {ROLES}, not {role!r}")
        return self._node.request(_raft.R_ASSIGN, _check_id(node_id), "", role)

    def remove(self, node_id: int) -> Future:
        return self._node.request(_raft.R_REMOVE, _check_id(node_id))

    def transfer(self, node_id: int = 0) -> Future:
        """Future -> the new leader's id. 0 lets libraft pick the best candidate."""
        if node_id != 0:
            _check_id(node_id)
        return self._node.request(_raft.R_TRANSFER, node_id)

    def snapshot_now(self, store_wait: float | None = 10.0) -> Future:
        """Future -> index of a Raft snapshot covering everything committed so far.

        The snapshot is built on a *fresh* store snapshot: the engine first queues a
        ``("snapshot_request", C)`` item at the commit index C for the applier, and only once
        ``store_snapshot_done(C, ...)`` came back has libraft take its snapshot, [store at C] +
        the entries committed meanwhile. On the leader it also compacts the log down to what
        the other members still need, so a node that joins later receives it by install.
        ``store_wait`` bounds the wait for the applier (seconds; None: no limit); after it the
        snapshot is built on the latest store snapshot the engine holds, as periodic ones are.
        Resolves at once when nothing was committed since the last snapshot.
        """
        if store_wait is not None and not store_wait >= 0:
            raise UsageError(f"store_wait must be >= 0 or None, not {store_wait!r}")
        return self._node.snapshot_now(-1.0 if store_wait is None else float(store_wait))

    def status(self, timeout: float = 5.0) -> dict:
        if self._node.running():
            f = self._node.request(_raft.R_STATUS)
            try:
                f.result(timeout)
                return f.status()
            except Shutdown:
                pass  # stopped meanwhile
        return {"id": self.node_id, "address": self.address, "state": "unavailable", "term": 0,
                "leader_id": 0, "leader_address": "", "transferee": 0, "commit_index": 0, "last_applied": 0,
                "last_log_index": 0, "snapshot_index": 0, "snapshot_term": 0,
                "configuration": [], "followers": [], "store_snapshot_index": 0, "tail_entries": 0,
                "snapshot_store_index": 0, "fresh_store_snapshots": 0, "snapshot_trailing": 0,
                "apply_queue": 0, "leader_contact_ms": 0, "off_loop_callbacks": 0, "last_error": "",
                "priority": self.priority}

    def role(self) -> tuple[str, int, int, int]:
        """``(state, leader_id, transferee, changes)`` as of the loop's last iteration, read
        without a loop round trip (``status()`` asks the loop): a stopped node is
        "unavailable". ``changes`` counts role changes; ``role_signal()`` is posted on each."""
        return self._node.role()

    def role_signal(self) -> Signal:
        """The Signal posted on every role change (one waiter: the API's role watch)."""
        return self._node.role_signal

    # -- applier side -----------------------------------------------------------------------

    def next_committed(self, max_items: int = 256, timeout: float = 0.1,
                       wake: list[Signal] | None = None) -> list[tuple[str, int, int, bytes]]:
        """Up to max_items ``(kind, index, term, data)`` in log order; [] on timeout.

        ``wake``: Signals posted first, once the GIL is released (the applier wakes the callers
        it resolved without holding the GIL; cluster/DESIGN.md). They are posted even when this
        raises. Raises Shutdown once the engine stopped and every item was drained.
        """
        items = self._node.next_committed(max(1, int(max_items)), max(0.0, float(timeout)),
                                          wake or None)
        if items is None:
            raise Shutdown("engine stopped; apply queue drained")
        return items

    def set_halted(self, on: bool = True) -> None:
        """Mark this replica halted (its applier stopped, cluster/DESIGN.md): while set, the
        node never starts an election, grants no (pre-)vote and ignores TimeoutNow, so it can
        never become leader; it still stores the log. An atomic flag read by the loop thread
        (native/halt_rule.cpp); takes effect at once, also before ``start()``."""
        self._node.set_halted(bool(on))

    @property
    def halted(self) -> bool:
        return bool(self._node.halted())

    def store_snapshot_done(self, index: int, data: bytes) -> None:
        """Hand back the store serialised at exactly ``index`` (answer to snapshot_request)."""
        self._node.store_snapshot_done(int(index), data)

    def store_snapshot_file(self, index: int, path: str | os.PathLike,
                            compress_level: int = 0) -> bool:
        """Hand back the store serialised at exactly ``index`` as a file: the engine maps it
        read-only (no copy, nothing read now; the caller may unlink it at once). With
        ``compress_level`` > 0 the engine compresses it instead, on this thread with the GIL
        released, and writes it as a zstd frame (snapshot format 2, which a build without it
        cannot read: the caller decides). Returns False when the answer came too late (a
        restore superseded the request). ``EngineIOError`` if the file cannot be opened or
        mapped, or the compression fails."""
        return bool(self._node.store_snapshot_file(int(index), os.fspath(path),
                                                   int(compress_level)))

    def store_snapshot_failed(self, index: int) -> bool:
        """The store snapshot asked for at ``index`` could not be made: the engine drops the
        request (keeping its previous store snapshot) and asks again later."""
        return bool(self._node.store_snapshot_failed(int(index)))
