"""One Raft node in its own process, for the engine tests, controlled over a tiny socket.

The "store" is the list of applied payloads plus an optional local padding blob (to make store
snapshots large); its digest is a SHA-256 over the payloads in order. The applier thread
follows the engine's item protocol exactly as the real cluster layer must: entries in order,
store snapshots at the requested index, restores replacing the state.

Control: JSON lines over TCP on 127.0.0.1:<control port>; one reply line per request.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bknr_cluster import _raft  # noqa: E402
from bknr_cluster.engine import Future, RaftNode  # noqa: E402
from bknr_cluster.errors import BknrError, Shutdown  # noqa: E402


class Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[bytes] = []
        self.indexes: list[int] = []
        self.digest = hashlib.sha256()
        self.applied = 0
        self.pad: list[bytes] = []
        self.restores: list[dict] = []
        self.snapshot_requests = 0
        self.snapshot_seconds = 0.0

    def apply(self, index: int, data: bytes) -> None:
        if index <= self.applied:
            raise SystemExit(f"entry {index} out of order (applied {self.applied})")
        self.entries.append(data)
        self.indexes.append(index)
        self.digest.update(len(data).to_bytes(8, "little") + data)
        self.applied = index

    def dump(self) -> bytes:
        # The padding makes the serialised store as large as a test needs (>= 200 MB).
        return msgpack.packb({"entries": self.entries, "indexes": self.indexes,
                              "applied": self.applied, "pad": self.pad})

    def load(self, index: int, blob: bytes) -> None:
        self.entries, self.indexes, self.digest = [], [], hashlib.sha256()
        self.applied = 0
        if blob:
            state = msgpack.unpackb(blob)
            for i, d in zip(state["indexes"], state["entries"], strict=True):
                self.apply(i, d)
            self.pad = state["pad"]
        self.applied = index


def applier(node: RaftNode, store: Store) -> None:
    while True:
        try:
            items = node.next_committed(512, 0.2)
        except Shutdown:
            return
        for kind, index, _term, data in items:
            with store.lock:
                if kind == "entry":
                    store.apply(index, data)
                elif kind == "snapshot_request":
                    t0 = time.monotonic()
                    blob = store.dump()
                    store.snapshot_requests += 1
                    node.store_snapshot_done(index, blob)
                    store.snapshot_seconds += time.monotonic() - t0
                elif kind == "restore":
                    store.load(index, data)
                    store.restores.append({"index": index, "size": len(data)})


class Driver:
    def __init__(self, node: RaftNode, store: Store) -> None:
        self.node = node
        self.store = store
        self.bg_outcomes: dict[str, int] = {}
        self.bg_acked: list[str] = []
        self.bg_thread: threading.Thread | None = None

    def outcome(self, fut: Future, timeout: float) -> tuple[str, object]:
        try:
            return "ok", fut.result(timeout)
        except BknrError as e:
            return type(e).__name__, str(e)

    def op_status(self) -> dict:
        return self.node.status()

    def op_state(self) -> dict:
        s = self.store
        with s.lock:
            return {"applied": s.applied, "count": len(s.entries), "digest": s.digest.hexdigest(),
                    "restores": s.restores, "snapshot_requests": s.snapshot_requests,
                    "snapshot_seconds": s.snapshot_seconds,
                    "pad_bytes": sum(len(p) for p in s.pad)}

    def op_submit(self, n: int, prefix: str, window: int = 64, timeout: float = 30.0) -> dict:
        """Submit n payloads '<prefix>-<i>' keeping `window` in flight; stop at the first error."""
        pending: list[tuple[int, Future]] = []
        indexes: list[int] = []
        error = None
        for i in range(n):
            pending.append((i, self.node.submit(f"{prefix}-{i}".encode())))
            while len(pending) >= window or (i == n - 1 and pending):
                kind, value = self.outcome(pending.pop(0)[1], timeout)
                if kind != "ok":
                    error = [kind, value]
                    break
                indexes.append(value)
            if error:
                break
        return {"indexes": indexes, "error": error}

    def op_request(self, what: str, timeout: float = 30.0, **kw) -> dict:
        fut = getattr(self.node, what)(**kw)
        kind, value = self.outcome(fut, timeout)
        return {"outcome": kind, "value": value}

    def op_background_submit(self, prefix: str, n: int, window: int = 16) -> dict:
        """Keep submitting in a thread; outcomes are counted by kind (LeadershipLost test)."""
        def settle(name: str, fut: Future) -> None:
            kind, _ = self.outcome(fut, 30.0)
            self.bg_outcomes[kind] = self.bg_outcomes.get(kind, 0) + 1
            if kind == "ok":
                self.bg_acked.append(name)

        def run() -> None:
            pending: list[tuple[str, Future]] = []
            for i in range(n):
                name = f"{prefix}-{i}"
                pending.append((name, self.node.submit(name.encode())))
                if len(pending) >= window:
                    settle(*pending.pop(0))
            for p in pending:
                settle(*p)
        self.bg_thread = threading.Thread(target=run, daemon=True)
        self.bg_thread.start()
        return {}

    def op_background_outcomes(self, acked: bool = False) -> dict:
        r = {"done": self.bg_thread is not None and not self.bg_thread.is_alive(),
             "outcomes": dict(self.bg_outcomes)}
        if acked:
            r["acked"] = list(self.bg_acked)
        return r

    def op_entries(self) -> list[str]:
        with self.store.lock:
            return [d.decode() for d in self.store.entries]

    def op_pad(self, mb: int) -> dict:
        with self.store.lock:
            blob = os.urandom(1 << 20)
            # 1 MB blobs rotated so that they are distinct objects but cheap to make.
            self.store.pad = [blob[i % 1024:] + blob[:i % 1024] for i in range(mb)]
        return {}

    def op_hold_gil(self, seconds: float) -> dict:
        _raft._hold_gil(seconds)
        return {}

    def op_halt(self, on: bool = True) -> dict:
        self.node.set_halted(on)
        return {"halted": self.node.halted}
    def op_close_streams_to(self, port: int) -> int:
        """Shut down this process's established TCP connections to remote ``port`` (the raft
        stream a leader sends a follower its AppendEntries on), as a live process would when it
        drops one connection; returns how many were shut down."""
        inodes = set()
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for line in list(f)[1:]:
                    cols = line.split()
                    if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").removeprefix("socket:[").rstrip("]") in inodes:
                    s = socket.socket(fileno=os.dup(int(fd)))
                    s.shutdown(socket.SHUT_RDWR)  # acts on the shared socket: the peer reads EOF
                    s.close()
                    n += 1
        return n

    def op_stop(self) -> dict:
        self.node.stop()
        return {}


def serve(driver: Driver, host: str, port: int, stop: threading.Event) -> None:
    srv = socket.create_server((host, port))
    srv.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(driver, conn, stop), daemon=True).start()


def handle(driver: Driver, conn: socket.socket, stop: threading.Event) -> None:
    with conn, conn.makefile("rwb") as f:
        for line in f:
            req = json.loads(line)
            op = req.pop("op")
            try:
                reply = {"ok": True, "result": getattr(driver, "op_" + op)(**req)}
            except Exception as e:  # reported to the test, which decides
                reply = {"ok": False, "error": type(e).__name__, "message": str(e)}
            f.write(json.dumps(reply).encode() + b"\n")
            f.flush()
            if op == "stop":
                stop.set()
                return


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--control-host", default="127.0.0.1",
                   help="the control socket's address (a node in a test's network namespace)")
    p.add_argument("--bootstrap", help="JSON list of [id, address, role]")
    p.add_argument("--recover", help="JSON list of [id, address, role]: forced new configuration")
    p.add_argument("--options", default="{}", help="JSON keyword arguments for RaftNode")
    args = p.parse_args()

    node = RaftNode(args.id, args.address, args.dir, **json.loads(args.options))
    if args.bootstrap:
        node.bootstrap([tuple(x) for x in json.loads(args.bootstrap)])
    if args.recover:
        node.recover([tuple(x) for x in json.loads(args.recover)])
    store = Store()
    node.start()
    t = threading.Thread(target=applier, args=(node, store), daemon=True)
    t.start()
    stop = threading.Event()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = threading.Thread(target=serve, daemon=True,
                              args=(Driver(node, store), args.control_host, args.control_port, stop))
    server.start()
    print(f"node {args.id} started (libraft {_raft.LIBRAFT_VERSION})", flush=True)
    while not stop.wait(0.2):
        pass
    node.stop()
    t.join(5)
    print(f"node {args.id} stopped", flush=True)


if __name__ == "__main__":
    main()
