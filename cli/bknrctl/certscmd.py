"""Commands ``certs show`` and ``certs rotate``; ``init`` creates the files (provision.py).

The cluster CA and the certificates live in the YAML's ``tls_dir`` on the operator's host
(bknr_cluster/cluster/certs.py makes them); nodes on other hosts get their own files uploaded
over SSH when they are started (remote.py). Rotation issues a new key and certificate per node
and restarts the nodes one at a time (nodes.rolling_restart): peers accept old and new
certificates alike because both chain to the same CA, so the cluster keeps its quorum.
"""

from __future__ import annotations

import typer
from rich.table import Table

from bknr_cluster.cluster import certs
from bknr_cluster.cluster.config import NodeConfig
from bknr_cluster.cluster.tls_config import CLIENT

from .app import CatchupPerNodeOpt, ConfigOpt, NodesArg, OutputFormat, OutputOpt, app, cluster_for, select
from .control import controller
from .nodes import rolling_restart
from .output import emit_json, guarded, info, stdout_console
from .provision import issue, tls_dir

certs_app = typer.Typer(help="TLS certificates of the cluster: show expiry, rotate.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


@certs_app.command("show")
@guarded
def show(ctx: typer.Context, config: ConfigOpt = None, output: OutputOpt = OutputFormat.table) -> None:
    """Subject, hosts and expiry of the CA, node and client certificates."""
    cfg = cluster_for(ctx, config).cfg
    d = tls_dir(cfg)
    rows = []
    files = [("ca", d / certs.CA_CERT), *[(n.name, d / certs.node_cert_name(n.name)) for n in cfg.nodes],
             (CLIENT, d / certs.node_cert_name(CLIENT))]
    for name, f in files:
        if not f.exists():
            rows.append({"name": name, "file": str(f), "missing": True})
            continue
        c = certs.read_cert(f)
        rows.append({"name": name, "file": str(f), "subject": c.subject, "hosts": list(c.hosts),
                     "not_after": c.not_after.isoformat(), "days_left": round(c.days_left, 1),
                     "expired": c.expired, "missing": False})
    if output is OutputFormat.json:
        emit_json({"certificates": rows})
        return
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("name", "expires", "days left", "hosts", "file"):
        t.add_column(col)
    for r in rows:
        if r["missing"]:
            t.add_row(r["name"], "missing", "-", "-", r["file"])
        else:
            t.add_row(r["name"], r["not_after"][:10] + (" (EXPIRED)" if r["expired"] else ""),
                      str(r["days_left"]), ", ".join(r["hosts"]), r["file"])
    stdout_console().print(t)


@certs_app.command("rotate")
@guarded
def rotate(ctx: typer.Context, nodes: NodesArg = None, config: ConfigOpt = None,
           catchup_timeout: CatchupPerNodeOpt = 120.0) -> None:
    """New key and certificate for each node (same CA), then a rolling restart: no downtime."""
    cluster = cluster_for(ctx, config)
    cfg = cluster.cfg
    targets = select(cfg, nodes)
    tls_dir(cfg)
    running, stopped = [], []
    for n in targets:
        ctl = controller(cfg, n)
        try:
            (running if ctl.pid() is not None else stopped).append(n)
        finally:
            ctl.close()
    for n in stopped:
        issue(cfg, n)
        info(f"{n.name}: new certificate (node not running)")

    def install(n: NodeConfig) -> None:
        issue(cfg, n)
        info(f"{n.name}: new certificate")

    rolling_restart(cluster, running, catchup_timeout, before_start=install)
