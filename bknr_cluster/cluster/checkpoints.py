"""Consistency checkpoints of one replica; ``Halt``, the applier's stop signal, and the probe
that decides when a failing record halts.

``Checkpoints`` holds what this replica recorded at each checkpoint entry (its state digest at
exactly that index) and the majority's verdicts on them (DESIGN.md, *Consistency checkpoints*).
Only the applier thread changes it (``record``, ``verdict``, ``load``); the monitor and
``/status`` read it. ``verdict`` raises ``Halt`` when this replica's digest differs from the
majority's.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import msgpack

from bknr_cluster.errors import CodecError

log = logging.getLogger("bknr.cluster")

KEEP_CHECKPOINTS = 64  # checkpoint digests (and verdicts) remembered per replica


class Halt(Exception):
    """Raised inside the applier when this replica cannot apply an item as the others did."""

    def __init__(self, kind: str, reason: str, transaction: str | None = None,
                 records_applied: int = 0) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.transaction = transaction
        self.records_applied = records_applied


class Checkpoints:
    """Our digest at recent checkpoints (``checkpoints``: index -> record), the majority's
    verdicts (``verdicts``: checkpoint index -> verdict) and ``last_checkpoint``."""

    def __init__(self) -> None:
        self.checkpoints: OrderedDict[int, dict] = OrderedDict()
        self.verdicts: OrderedDict[int, dict] = OrderedDict()
        self.last_checkpoint = 0

    def record(self, index: int, body: dict, store: Any, own: dict) -> None:
        """Every replica records its state digest at exactly this index (DESIGN.md)."""
        t0 = time.perf_counter()
        digest = store.digest()
        took_ms = (time.perf_counter() - t0) * 1000
        rec: dict[str, Any] = {"digest": digest, "schema": own["schema"],
                               "fingerprint": own["fingerprint"], "ms": round(took_ms, 3)}
        if body.get("full"):
            # explicit verification (bknrctl verify): the full walk, on the apply path
            full_fn = getattr(store, "digest_full", None)
            t1 = time.perf_counter()
            full = full_fn() if full_fn is not None else digest
            rec["full"] = full
            rec["full_ms"] = round((time.perf_counter() - t1) * 1000, 3)
            if full != digest:
                log.error("checkpoint %d: the store's incremental digest %s disagrees with its "
                          "full walk %s (a bug in the store's digest maintenance)", index, digest,
                          full)
        self.checkpoints[index] = rec
        while len(self.checkpoints) > KEEP_CHECKPOINTS:
            self.checkpoints.popitem(last=False)
        self.last_checkpoint = index
        log.info("checkpoint at %d: digest %s (%.2f ms)", index, digest, took_ms)

    def verdict(self, index: int, body: dict) -> bool:
        """Compare our digest at a checkpoint with the majority's; halt when it differs.
        False (nothing recorded) for a malformed verdict entry."""
        c, digest, schema = body.get("index"), body.get("digest"), body.get("schema")
        if not isinstance(c, int):
            log.error("skipping malformed verdict entry %d", index)
            return False
        mine = self.checkpoints.get(c)
        agree = body.get("agree") or []
        if mine is None:
            result = "not computed here"  # restored from a snapshot past it
        elif mine["schema"] != schema:
            result = "not comparable"     # another schema: digests differ by construction
        elif mine["digest"] == digest:
            result = "agree"
        else:
            result = "disagree"
        self.verdicts[c] = {"verdict_index": index, "digest": digest, "schema": schema,
                            "agree": agree, "result": result}
        while len(self.verdicts) > KEEP_CHECKPOINTS:
            self.verdicts.popitem(last=False)
        if result == "disagree":
            raise Halt("checkpoint", f"state digest at checkpoint {c} is {mine['digest']} here but "
                       f"{digest} on a majority of the voters (nodes {agree}): this replica "
                       "diverged (a transaction that behaved differently here)")
        if result == "agree":
            log.info("checkpoint %d verified: digest agrees with the majority (nodes %s)", c, agree)
        return True

    def load(self, last_checkpoint: Any) -> None:
        """After a restore: the last checkpoint the snapshot's state had seen."""
        self.last_checkpoint = last_checkpoint if isinstance(last_checkpoint, int) else 0


class DefinitionProbe:
    """Tells a failure this replica's store definition causes (halt) from one every replica
    shares (skip): the applier asks it about each record whose transaction failed."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._codec: Any = None  # a lenient codec of the definition, made at the first ask

    def cannot_apply(self, record: bytes) -> tuple[str, str, str | None] | None:
        """Why this replica's definition cannot apply ``record`` the way a replica that knows it
        would, as (kind, reason, transaction name); None when the failure does not depend on the
        definition (the transaction's own exception, a reference to a missing object, bytes that
        are not msgpack at all: every replica fails them the same way)."""
        from bknr_cluster.store import RECORD_VERSION
        from bknr_cluster.store.codec import Codec

        try:
            fields = msgpack.unpackb(record, raw=False, strict_map_key=False,
                                     ext_hook=lambda code, data: msgpack.ExtType(code, data))
        except Exception:
            return None
        if type(fields) is not list or len(fields) != 5:
            return None
        version, name = fields[0], fields[1]
        if type(name) is not str:
            return None
        if type(version) is int and version != RECORD_VERSION:
            return ("record_version", f"transaction record format {version} is not one this "
                    f"version reads ({RECORD_VERSION})", name)
        if type(version) is not int:
            return None
        definition = self.store.definition
        try:
            definition.transaction(name)
        except Exception:
            return ("unknown_transaction", f"transaction {name!r} is not in this node's store "
                    f"definition {definition.name!r} (version "
                    f"{getattr(definition, 'version', '') or '-'})", name)
        probe = self._codec
        if probe is None:
            probe = self._codec = Codec(definition.enums, lambda oid: None, lambda o: True,
                                              lenient=True)
        try:
            probe.unpack(record)
        except CodecError as exc:
            return ("codec", f"the arguments of {name!r} cannot be decoded by this node's store "
                    f"definition: {exc}", name)
        except Exception:
            return None
        return None
