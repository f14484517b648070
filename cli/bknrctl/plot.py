"""``--plot drill.png``: per-request latency over time, one panel per round, fault and new leader marked."""

from __future__ import annotations

from pathlib import Path

from .drill import RoundResult


def plot_drill(results: list[RoundResult], path: Path, election_timeout_ms: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    n = max(1, len(results))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.4 * n + 0.6), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=False):
        ok = [s for s in r.samples if s.ok]
        bad = [s for s in r.samples if not s.ok]
        t0 = r.fault_at
        ax.scatter([(s.end - t0) * 1000 for s in ok], [(s.end - s.start) * 1000 for s in ok],
                   s=4, c="tab:green", label="acknowledged", linewidths=0)
        ax.scatter([(s.end - t0) * 1000 for s in bad], [(s.end - s.start) * 1000 for s in bad],
                   s=14, c="tab:red", marker="x", label="failed / unknown")
        ax.axvline(0, color="black", linestyle="--", linewidth=1, label=f"fault ({r.fault} {r.victim})")
        if r.leader_at is not None:
            ax.axvline((r.leader_at - t0) * 1000, color="tab:blue", linewidth=1,
                       label=f"new leader {r.new_leader}")
        ax.set_yscale("symlog", linthresh=10)
        ax.margins(y=0.2)  # keep the failed requests (often the slowest) inside the panel
        ax.set_ylabel("latency ms")
        gap = f"{r.write_gap_ms:.0f} ms" if r.write_gap_ms is not None else "n/a"
        ax.set_title(f"round {r.round}: write gap {gap}, acked {r.acked}, lost {r.lost}", fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time since fault (ms)")
    fig.suptitle(f"bknrctl failover drill (election timeout {election_timeout_ms} ms)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
