"""The node process: ``bknr-node --config cluster.yaml --node n2`` (or ``python -m bknr_cluster.node``).

Modes:
  (default)        start the engine, the applier, the HTTP API and (YAML ``app``) the hosted web
                   application (apphost.py); run until SIGTERM/SIGINT.
  --init           bootstrap this node's engine state with every YAML node as configured, then exit
                   (exit 2 with a message if it is already bootstrapped). Used by ``bknrctl init``.
  --recover JSON   forced reconfiguration after quorum loss (``bknrctl recover``), then exit.
                   JSON: ``[{"id": 1, "address": "127.0.0.1:7101", "role": "voter"}, ...]``.
  --bootstrap      bootstrap first if the data directory is fresh, then start.

Exit codes: 0 clean stop, 1 operational error, 2 usage/validation error (errors.py ``exit_code``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from bknr_cluster.errors import AlreadyBootstrapped, BknrError, Unreachable, UsageError
from bknr_cluster.vocabulary import ROLES, Role

log = logging.getLogger("bknr.node")


def _setup_logging(log_file: str | None, level: str) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def _parse_configuration(text: str) -> list[tuple[int, str, str]]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--recover: configuration is not valid JSON: {exc}") from None
    out = []
    if not isinstance(data, list) or not data:
        raise UsageError("--recover: configuration must be a non-empty JSON list")
    for i, item in enumerate(data):
        if isinstance(item, dict):
            nid, addr, role = item.get("id"), item.get("address"), item.get("role", Role.voter.value)
        elif isinstance(item, list) and len(item) in (2, 3):
            nid, addr, role = item[0], item[1], item[2] if len(item) == 3 else Role.voter.value
        else:
            raise UsageError(f"--recover: item {i} must be {{id, address, role}}")
        if not isinstance(nid, int) or nid <= 0 or not isinstance(addr, str) or ":" not in addr \
                or role not in ROLES:
            raise UsageError(f"--recover: item {i} is invalid: {item!r}")
        out.append((nid, addr, role))
    return out


def _engine(cfg: Any, me: Any) -> Any:
    """The engine alone (``--init``, ``--recover``), configured as the node's store would be."""
    from bknr_cluster.cluster.settings import ClusterSettings
    from bknr_cluster.engine import RaftNode

    settings = ClusterSettings.from_config(cfg, me.name, token=None)  # no API token needed
    settings.raft_dir.mkdir(parents=True, exist_ok=True)
    return RaftNode(settings.node_id, settings.address, str(settings.raft_dir),
                    **settings.engine_options())


def _write_pid(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        try:
            other = int(path.read_text().strip())
            os.kill(other, 0)
            if other != os.getpid():
                raise UsageError(f"another node process (pid {other}) owns {path.parent}")
        except (ValueError, ProcessLookupError):
            pass  # stale pid file of a dead process
        except PermissionError:
            raise UsageError(f"pid file {path} belongs to a live process of another user") from None
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove_pid(path: Path) -> None:
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


async def _serve(cs: Any, cfg: Any, me: Any, transfer_timeout: float,
                 hosted: Any = None) -> None:
    """The admin API and (``hosted``: an apphost.AppServer) the application, on this loop."""
    from bknr_cluster.cluster.api import ApiServer
    from bknr_cluster.cluster.tls_config import server_ssl_context

    # The loop owns SIGTERM/SIGINT from here on: a stop request while the servers start up
    # is handled by the normal stop path below once they are up.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = ApiServer(cs, me.api_host, me.api_port, cfg.token(), server_ssl_context(cfg, me))
    try:
        await server.start_async()
    except OSError as exc:
        raise Unreachable(f"cannot serve the API on {me.api_host}:{me.api_port}: "
                          f"{exc.strerror or exc}") from None
    if hosted is not None:
        try:
            await hosted.start()
        except BaseException:
            await server.stop_async()
            raise
    await stop.wait()
    log.info("stopping")
    # Hand over leadership before going away, so clients see a short blip, not an election.
    try:
        if cs.is_leader() and len(cs.engine.status().get("configuration") or []) > 1:
            history = getattr(cs, "leader_history", None)
            if history is not None:
                history.expect(f"{me.name} stopping (SIGTERM): leadership handed over")
            new = await loop.run_in_executor(None, cs.transfer, 0, transfer_timeout)
            log.info("leadership transferred to %s", new)
            if history is not None:  # record it (with the cause) before the observer stops
                history.observe(cs.engine.status())
    except Exception as exc:  # best effort: stopping must not fail because of it
        log.warning("leadership transfer before stop failed: %s", exc)
    if hosted is not None:
        # After the hand-over: requests in flight finish (a write still commits through the new
        # leader, or the application forwards it), new ones go to the new leader.
        await hosted.stop()
    await server.stop_async()


def _load_app(cfg: Any, me: Any) -> tuple[Any, Any]:
    """(ASGI callable, bound listening socket) of the YAML's ``app``, or (None, None)."""
    if cfg.app is None:
        return None, None
    from bknr_cluster.apphost import bind, load_app

    app = load_app(cfg.app, cfg.base_dir)
    index = next(i for i, n in enumerate(cfg.nodes) if n.id == me.id)
    return app, bind(me.app_host, me.app_port, f"nodes[{index}].app_port")


def _hosted_app(cfg: Any, cs: Any, me: Any, app: Any, sock: Any) -> Any:
    """The application wrapped with its store handle (web.py), ready to serve on ``sock``."""
    from bknr_cluster.apphost import AppServer
    from bknr_cluster.cluster.tls_config import app_ssl_context
    from bknr_cluster.web import HostedApp, WebStore, host

    def app_url(node_id: int) -> str:
        n = cfg.node_by_id(node_id)
        return n.app_url if n else ""

    ws = WebStore(cs, app_url, node_app_url=me.app_url)
    host(ws)
    return AppServer(HostedApp(app, ws), sock, drain_s=cfg.app.drain_s,
                     ssl_context=app_ssl_context(cfg, me))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bknr-node", description="Run one bknr_cluster node.")
    p.add_argument("--config", required=True, help="cluster YAML")
    p.add_argument("--node", required=True, help="this node's name or id")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--init", action="store_true", help="bootstrap the engine state, then exit")
    mode.add_argument("--recover", metavar="JSON", help="forced reconfiguration, then exit")
    mode.add_argument("--bootstrap", action="store_true", help="bootstrap if fresh, then run")
    p.add_argument("--log-file", help="also log to this file (default: <data_dir>/node.log)")
    p.add_argument("--log-level", default=os.environ.get("BKNR_LOG_LEVEL", "INFO"))
    p.add_argument("--python-cpu", default=None, metavar="auto|none|N",
                   help="pin this node's Python threads to one CPU (overrides the YAML's "
                        "python_cpu; 'none' turns it off)")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="Python GIL switch interval in seconds (default: CPython's, 0.005)")
    p.add_argument("--transfer-timeout", type=float, default=None,
                   help="seconds to wait for the leadership hand-over on SIGTERM "
                        "(default: 3 election timeouts, at least 1 s)")
    args = p.parse_args(argv)
    try:
        return _main(args)
    except BknrError as exc:
        print(f"bknr-node: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 1


def _main(args: argparse.Namespace) -> int:
    from bknr_cluster.cluster.affinity import parse_spec
    from bknr_cluster.cluster.config import ClusterConfig

    cfg = ClusterConfig.load(args.config)
    me = cfg.node(args.node)
    if args.init or args.recover:
        _setup_logging(None, args.log_level)
        engine = _engine(cfg, me)
        if args.init:
            try:
                engine.bootstrap(cfg.initial_configuration())
            except AlreadyBootstrapped:
                print(f"bknr-node: node {me.name} is already bootstrapped ({me.raft_dir})",
                      file=sys.stderr)
                return 2
            print(f"node {me.name}: bootstrapped with {len(cfg.nodes)} node(s)")
        else:
            conf = _parse_configuration(args.recover)
            engine.recover(conf)
            print(f"node {me.name}: recovered with configuration {conf}")
        return 0

    _setup_logging(args.log_file or str(me.log_file), args.log_level)
    # Secure by default: no start without TLS and a token unless the YAML says insecure: true.
    from bknr_cluster.cluster.tls_config import require_secure
    require_secure(cfg, me)
    # The application first: one that cannot be imported, is not ASGI, or whose port is taken
    # stops the node here, before the store or the engine starts (one line on stderr).
    app, app_sock = _load_app(cfg, me)
    if cfg.insecure:
        log.warning("insecure: true in %s: raft and API traffic are not encrypted%s", cfg.path,
                    "" if cfg.token_file else ", and the API takes no token")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # Until the event loop takes over SIGTERM, a stop request still unwinds through the
    # ``finally`` blocks below (engine stopped, pid file removed).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _write_pid(me.pid_file)
    try:
        from bknr_cluster.cluster.store import ClusterStore

        pin = {} if args.python_cpu is None else {"python_cpu": parse_spec(args.python_cpu)}
        cs = ClusterStore.from_config(cfg.path, me.name, start=False,
                                      switch_interval=args.switch_interval, freeze_gc=True, **pin)
        if args.bootstrap:
            try:
                cs.engine.bootstrap(cfg.initial_configuration())
                log.info("bootstrapped with %d node(s)", len(cfg.nodes))
            except AlreadyBootstrapped:
                pass
        cs.start()
        log.info("node %s (id %d) started: raft %s, api %s, pid %d", me.name, me.id,
                 me.raft_address, me.api_url, os.getpid())
        from bknr_cluster.cluster.history import LeaderHistory
        from bknr_cluster.cluster.retention import SnapshotKeeper

        # snapshot.keep: archive copies in data_dir/snapshots (retention.py; raft/ is libraft's);
        # one observer thread records leader changes (history.py) and runs retention each second
        keeper = SnapshotKeeper(cs.engine, me.data_dir, cfg.snapshot_keep)
        cs.leader_history = LeaderHistory(cs.engine, me.data_dir, me.id, on_tick=keeper.check).start()
        try:
            # Bounded: with the other nodes already gone the hand-over can never complete.
            transfer_timeout = args.transfer_timeout or max(1.0, 3 * cfg.election_timeout_ms / 1000)
            hosted = _hosted_app(cfg, cs, me, app, app_sock) if app is not None else None
            asyncio.run(_serve(cs, cfg, me, transfer_timeout, hosted))
        finally:
            cs.leader_history.stop()
            cs.stop()
            if app_sock is not None:
                app_sock.close()
        log.info("node %s stopped", me.name)
        return 0
    finally:
        _remove_pid(me.pid_file)


if __name__ == "__main__":
    sys.exit(main())
