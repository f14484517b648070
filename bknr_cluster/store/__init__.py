"""The prevalence datastore: in-memory objects changed only by logged, deterministic transactions.

See ``DESIGN.md`` in this folder. Public API::

    from bknr_cluster.store import (StoreObject, Index, Transient, transaction, query, context,
                                    Store, StoreDefinition, TxContext, to_json, from_json, make_blob,
                                    gc_tuning, DIGEST_SCHEME)
"""

from bknr_cluster.store.blobs import Blob, make_blob
from bknr_cluster.store.core import RECORD_VERSION, Store, StoreDefinition
from bknr_cluster.store.digest import SCHEME as DIGEST_SCHEME
from bknr_cluster.store.gctune import gc_tuning
from bknr_cluster.store.jsonmap import from_json, to_json
from bknr_cluster.store.model import Index, StoreObject, Transient
from bknr_cluster.store.tx import Query, Transaction, TxContext, context, query, transaction

__all__ = [
    "DIGEST_SCHEME", "RECORD_VERSION", "Blob", "Index", "Query", "Store", "StoreDefinition", "StoreObject",
    "Transaction", "Transient", "TxContext", "context", "from_json", "gc_tuning", "make_blob", "query",
    "to_json", "transaction",
]
