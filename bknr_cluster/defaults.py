"""The one place for the tunable defaults of a node.

The cluster YAML (``cluster/config.py``), the node's settings (``cluster/settings.py``) and the
engine (``engine.py``) all take their defaults from here, so a key left out of the YAML, a
``ClusterSettings`` built in code and a ``RaftNode`` built directly agree. Only numbers live
here (no imports): the engine layer below the cluster layer can import it.
"""

from __future__ import annotations

# timing (YAML ``timing``)
ELECTION_TIMEOUT_MS = 1000
HEARTBEAT_MS = 100

# Raft log compaction (YAML ``snapshot``): libraft snapshots every ``threshold`` entries and
# keeps ``trailing`` entries behind it for lagging followers; ``keep`` archived copies.
SNAPSHOT_THRESHOLD = 10000
SNAPSHOT_TRAILING = 2000
SNAPSHOT_KEEP = 3
# zstd level of the store image in the engine's snapshots (0: uncompressed). Level 1: a 74 MB
# image (5M objects) became ~19 MB in ~0.2 s of one core; libraft writes and fsyncs the whole
# snapshot at once, and a large one queued the Raft log's fsyncs behind it (docs/performance.md).
SNAPSHOT_COMPRESSION = 1

# group commit (YAML ``batch``); ``window``: entries in flight (not in the YAML)
BATCH_MAX_COUNT = 512
BATCH_MAX_BYTES = 1 << 20
BATCH_WINDOW = 4

# consistency checkpoints through the log every N applied entries (YAML ``checkpoint.every``;
# 0: only on demand)
CHECKPOINT_EVERY = 10000

# seconds between two rounds of the cluster monitor (cluster/monitor.py)
MONITOR_INTERVAL_S = 0.5

# the largest engine entry, at least: the batch limit plus room for the batch's own header
MIN_MAX_ENTRY_BYTES = 64 << 20
