"""The single exception hierarchy of bknr_cluster.

Every layer raises these; the CLI maps them to one-line messages and exit codes
(``exit_code`` below: 1 operational, 2 usage/validation, 3 no leader/unhealthy, 4 degraded:
a halted replica).
"""

from __future__ import annotations


class BknrError(Exception):
    """Base class of every error raised on purpose by bknr_cluster."""

    exit_code = 1


# --- usage and validation -------------------------------------------------------------------


class UsageError(BknrError):
    """The caller asked for something that can never work (bad argument, unknown name)."""

    exit_code = 2


class ConfigError(UsageError):
    """A cluster YAML is invalid. ``problems`` lists every problem as ``(path, message)``."""

    def __init__(self, problems: list[tuple[str, str]] | str):
        if isinstance(problems, str):
            problems = [("", problems)]
        self.problems = list(problems)
        text = "; ".join(f"{p}: {m}" if p else m for p, m in self.problems)
        super().__init__(f"invalid configuration: {text}")


class UnknownNode(UsageError):
    """A node name or id that is not in the configuration / cluster."""


# --- store ------------------------------------------------------------------------------------


class StoreError(BknrError):
    """Base of datastore errors."""


class NotInTransaction(StoreError):
    """A persistent object was created, deleted or written outside a transaction."""


class IntegrityError(StoreError):
    """A unique index would hold two objects with the same key."""


class UnknownTransaction(StoreError, UsageError):
    """A transaction name that is not registered with the store."""

    exit_code = 2


class CodecError(StoreError, UsageError):
    """A value cannot be encoded (unsupported type) or decoded."""

    exit_code = 2


class CorruptData(StoreError):
    """Bytes on disk or on the wire fail validation (checksum, framing, version, decoding)."""


class NonDeterminism(StoreError):
    """Replicas or a replay diverged: a transaction was not deterministic."""


# --- engine / cluster -------------------------------------------------------------------------


class EngineError(BknrError):
    """Base of Raft engine errors."""


class NotLeader(EngineError):
    """This node is not the leader. Carries the leader hint when one is known."""

    exit_code = 3

    def __init__(self, leader_id: int = 0, leader_address: str = "", message: str | None = None,
                 leader_api: str = ""):
        self.leader_id = leader_id
        self.leader_address = leader_address
        self.leader_api = leader_api
        hint = f"leader is {leader_id} at {leader_api or leader_address}" if leader_id else "no leader known"
        super().__init__(message or f"not the leader ({hint})")


class NoLeader(NotLeader):
    """No leader is known anywhere the caller looked (no quorum, election in progress)."""


class LeadershipLost(EngineError):
    """Leadership was lost while a request was in flight: its outcome is unknown."""


class Shutdown(EngineError):
    """The engine is stopping or stopped."""


class TooBig(EngineError, UsageError):
    """An entry or transaction exceeds the configured size limit."""

    exit_code = 2


class EngineIOError(EngineError):
    """The engine reported a disk or network I/O failure."""


class AlreadyBootstrapped(EngineError, UsageError):
    """bootstrap() on a data directory that already holds Raft state."""

    exit_code = 2


class MembershipError(EngineError, UsageError):
    """A configuration change that is not allowed (last voter, unknown id, duplicate address)."""

    exit_code = 2


class Timeout(BknrError):
    """A wait with a deadline expired; for a write the outcome is unknown."""


class NotCapable(BknrError):
    """Refused at submit time, nothing logged: some current voter runs a store definition that
    does not know the transaction (a rolling upgrade not finished yet). ``nodes`` lists them
    (``{"id", "name", "version", "fingerprint"}``); retry once they are upgraded. HTTP 409."""

    http_status = 409

    def __init__(self, message: str, nodes: list[dict] | None = None):
        self.nodes = list(nodes or [])
        super().__init__(message)


class ReplicaHalted(EngineError):
    """This replica stopped applying the log: it met a committed entry it cannot apply the way
    the other replicas did (unknown transaction, undecodable record, unknown class in a
    snapshot) or its state digest disagreed with the majority at a consistency checkpoint.
    It refuses new writes (nothing logged); for a write already in flight the outcome is
    unknown (the entry may commit and be applied by the others). HTTP 503."""

    exit_code = 4


class Unauthorized(BknrError):
    """Missing or wrong API token."""

    exit_code = 1


class Unreachable(BknrError):
    """A node's API could not be reached."""


class TransactionFailed(BknrError):
    """A transaction raised on the leader; seen by remote callers (HTTP, ``forward=True``).

    In-process callers get the transaction's own exception instead. ``exception`` is the name of
    the exception class the transaction raised.
    """

    def __init__(self, exception: str, message: str = ""):
        self.exception = exception
        super().__init__(f"transaction failed: {exception}: {message}" if message
                         else f"transaction failed: {exception}")
