"""Typed stub of the private native module; use bknr_cluster.engine instead."""

from collections.abc import Sequence

LIBRAFT_VERSION: str

OK: int
E_NOT_LEADER: int
E_LEADERSHIP_LOST: int
E_SHUTDOWN: int
E_TOO_BIG: int
E_IO: int
E_MEMBERSHIP: int
E_TIMEOUT: int
E_ALREADY_BOOTSTRAPPED: int
E_INVALID: int

R_BARRIER: int
R_ADD: int
R_ASSIGN: int
R_REMOVE: int
R_TRANSFER: int
R_SNAPSHOT: int
R_STATUS: int

def _hold_gil(seconds: float) -> None:
    """Test helper: keep the GIL for ``seconds`` without releasing it."""

class Signal:
    """One-shot binary semaphore: ``post`` wakes one ``wait`` (which releases the GIL)."""
    def __init__(self) -> None: ...
    def post(self) -> None:
        """Wake a waiter, or let the next ``wait`` return at once (posts do not add up)."""
    def wait(self, timeout: float | None = None) -> bool:
        """True once posted (consumes the post); False after ``timeout`` s (None: no limit, 0: poll)."""
    def posted(self) -> bool:
        """True while a post waits to be consumed."""

class Future:
    def result(self, timeout: float | None = None) -> int:
        """The value once done; raises the bknr_cluster.errors exception of a failure."""
    def wait(self, timeout: float | None = None) -> bool: ...
    def done(self) -> bool: ...
    def outcome(self) -> tuple[int, int, str, int, str]:
        """(code, value, message, leader_id, leader_address)."""
    def status(self) -> dict | None: ...

class Node:
    def __init__(self, node_id: int, address: str, data_dir: str, election_timeout_ms: int,
                 heartbeat_ms: int, snapshot_threshold: int, snapshot_trailing: int, pre_vote: bool,
                 max_inflight_entries: int, store_snapshot_every: int, max_entry_bytes: int,
                 secret: bytes = b"", auth_timeout_ms: int = 5000, priority: int = 0,
                 peer_priorities: list[tuple[int, int]] = ...) -> None: ...
    def bootstrap(self, configuration: list[tuple[int, str, str]], recover: bool) -> tuple[int, str]: ...
    def start(self) -> tuple[int, str]: ...
    def stop(self) -> None: ...
    def running(self) -> bool: ...
    def submit(self, data: bytes | bytearray | memoryview) -> Future: ...
    def submit_many(self, datas: Sequence[bytes | bytearray | memoryview]) -> Future: ...
    def request(self, type: int, node_id: int = 0, address: str = "", role: str = "") -> Future: ...
    def next_committed(self, max_items: int, timeout: float, wake: Sequence[Signal] | None = None
                       ) -> list[tuple[str, int, int, bytes]] | None:
        """Posts every Signal in ``wake`` once the GIL is released, then waits for items."""
    def store_snapshot_done(self, index: int, data: bytes | bytearray | memoryview) -> bool: ...
    def set_halted(self, on: bool) -> None: ...
    def halted(self) -> bool: ...
