"""The checks a node runs when it starts, run ahead of time (``bknrctl validate``).

``ClusterConfig.load`` checks the YAML itself; a node then also reads the token and raft secret
files (with their mode and length rules) and imports the store definition. ``preflight`` runs
those same calls, so a configuration that ``validate`` passes is one whose nodes start, and adds
warnings for what starts but is unwise (a voter count that tolerates no more failures than one
smaller).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.errors import ConfigError
from bknr_cluster.vocabulary import Role

Problem = tuple[str, str]


@dataclass
class Preflight:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def voter_warning(voters: int) -> str | None:
    """Why a voter count is unwise, or None for 3 and 5 (and larger odd counts)."""
    if voters == 1:
        return "1 voter: the cluster stops writing when that node fails; use 3 or 5"
    if voters % 2 == 0:
        return (f"{voters} voters tolerate {(voters - 1) // 2} failure(s), as many as {voters - 1}; "
                f"use an odd count (3 or 5)")
    return None


def _collect(problems: list[Problem], fn: object) -> object:
    try:
        return fn()  # type: ignore[operator]
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def preflight(cfg: ClusterConfig, import_store: bool = True) -> Preflight:
    """Every start-time problem of ``cfg`` (errors), and the warnings."""
    out = Preflight()
    # Before init (no node on this machine holds Raft state) the token and secret files cannot
    # exist yet and init creates them: a warning then, an error once the cluster is initialised.
    fresh = _fresh(cfg)
    missing = {key for key, f in (("token_file", cfg.token_file), ("raft_secret_file", cfg.raft_secret_file))
               if f is not None and fresh and not f.exists()}
    for key in sorted(missing):
        out.warnings.append((key, f"{getattr(cfg, key)} does not exist yet; bknrctl init creates it"))
    if cfg.token_file is not None and "token_file" not in missing:
        token = _collect(out.errors, cfg.token)
        if token == "":
            out.errors.append(("token_file", f"{cfg.token_file} is empty; the API would accept no "
                               "token (bknrctl init generates one)"))
        elif token:
            mode = cfg.token_file.stat().st_mode
            if mode & 0o077:
                out.warnings.append(("token_file", f"{cfg.token_file} has mode "
                                     f"{stat.S_IMODE(mode):04o}; other users can read the API "
                                     f"token (chmod 600 {cfg.token_file})"))
    if "raft_secret_file" not in missing:
        _collect(out.errors, cfg.raft_secret)
    if import_store:
        out.errors += _store_problems(cfg)
    voters = sum(1 for n in cfg.nodes if n.role == Role.voter)
    if (why := voter_warning(voters)) is not None:
        out.warnings.append(("nodes", why))
    return out


def _fresh(cfg: ClusterConfig) -> bool:
    """Not initialised yet: nodes on this machine, none of them holding Raft state; or, when
    every node is reached over SSH, nothing ``bknrctl init`` creates here exists yet."""
    local = [n for n in cfg.nodes if n.is_local]
    if local:
        return not any(n.raft_dir.is_dir() and any(n.raft_dir.iterdir()) for n in local)
    made_by_init = (cfg.token_file, getattr(cfg, "tls_dir", None))
    return not any(p is not None and p.exists() for p in made_by_init)


def _store_problems(cfg: ClusterConfig) -> list[Problem]:
    """Import the ``store:`` definition as the node does; any failure is a problem."""
    from bknr_cluster.cluster.loader import load_definition
    from bknr_cluster.store import StoreDefinition

    try:
        definition = load_definition(cfg.store, cfg.base_dir)
    except ConfigError as exc:
        return list(exc.problems)
    except Exception as exc:  # the application module itself fails to import (SyntaxError, ...)
        return [("store", f"importing {cfg.store!r} raised {type(exc).__name__}: {exc}")]
    if not isinstance(definition, StoreDefinition):
        return [("store", f"{cfg.store!r} is a {type(definition).__name__}, not a StoreDefinition")]
    return []
