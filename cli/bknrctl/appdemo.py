"""The demo's end-user part: the bank web application on the 3 demo nodes behind a HAProxy,
customers' HTTP clients through it during a kill drill and a planned switchover, their figures
beside the write gap of the admin-API drill; ``demo --keep`` leaves HAProxy running too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .appdrill import AppDrillOptions, run_app_drill
from .cluster import Cluster
from .lb import HaproxyProcess, stop_pid_file

KILL_ROUNDS = 3


def haproxy_dir(directory: Path) -> Path:
    return directory / "haproxy"


def stop_haproxy(directory: Path) -> bool:
    """Stop the HAProxy a kept demo left running (by its recorded pid)."""
    return stop_pid_file(haproxy_dir(directory) / "haproxy.pid")


def start_haproxy(cluster: Cluster, directory: Path, base_port: int) -> HaproxyProcess:
    lb = HaproxyProcess(cluster.cfg, haproxy_dir(directory), write_port=base_port + 980,
                        read_port=base_port + 981)
    lb.start()
    return lb


def end_user_drills(cluster: Cluster, lb: HaproxyProcess, quiet: bool) -> dict[str, Any]:
    """A kill drill and a planned switchover, measured from the customers' side."""
    from .output import info

    say = (lambda m: None) if quiet else info
    out: dict[str, Any] = {"url": lb.write_url}
    for fault, rounds in (("kill", KILL_ROUNDS), ("transfer", 1)):
        opts = AppDrillOptions(rounds=rounds, fault=fault, clients=64, via=lb.write_url)
        rep, _ = run_app_drill(cluster, opts, progress=lambda m, f=fault: say(f"demo: {f} {m}"))
        out[fault] = rep
    return out


def users_ok(users: dict[str, Any]) -> bool:
    return all(users[f]["lost_total"] == 0 and users[f]["digests_match"] and users[f]["bank_total_ok"]
               for f in ("kill", "transfer"))
