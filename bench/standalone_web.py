"""app_bench's baseline: the bank web application on uvicorn over a *standalone* store (one
process, no replication, every transaction fsync'd with the store's group commit).

    python bench/standalone_web.py --dir DIR --port PORT

examples/bank/web.py reaches its store through ``bknr_cluster.web``; here that is
:class:`StandaloneWebStore`, which runs ``Store.execute`` (blocking: it waits for the fsync) in
a thread pool as large as the number of clients, so concurrent requests share fsyncs exactly
as the cluster's callers share log entries.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class StandaloneWebStore:
    """The parts of ``bknr_cluster.web.WebStore`` the bank application uses, on a local Store."""

    node_id = 1
    node_name = "standalone"
    role = "standalone"
    is_leader = True
    leader_id = 1
    leader_app_url = ""

    def __init__(self, store: Any, threads: int) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="standalone-tx")

    async def execute(self, tx: Any, *args: Any, forward: bool = False, timeout: float | None = None,
                      **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: self.store.execute(tx, *args, **kwargs))

    async def query(self, name: str, *args: Any, consistent: bool = False, **kwargs: Any) -> Any:
        return self.store.run_query(name, *args, **kwargs)

    def read(self) -> AbstractContextManager:
        return self.store.reading()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=64)
    args = ap.parse_args()
    import uvicorn

    from bknr_cluster import web
    from bknr_cluster.store import Store
    from examples.bank.app import definition
    from examples.bank.web import app

    store = Store(args.dir, definition=definition)
    ws = StandaloneWebStore(store, args.threads)
    web.host(ws)  # type: ignore[arg-type]
    uvicorn.run(web.HostedApp(app, ws), host="127.0.0.1", port=args.port,  # type: ignore[arg-type]
                log_level="warning", access_log=False, timeout_keep_alive=75)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
