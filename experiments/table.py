"""Markdown table of the runs under a folder (one row per run with a summary.json).

    python experiments/table.py runs/reference
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: str) -> None:
    rows = []
    for d in sorted(Path(root).iterdir()):
        f = d / "summary.json"
        if not f.is_file():
            continue
        s = json.loads(f.read_text())
        r = s["rounds"] or 1
        participations = s["fedavg_uplink_bytes"] // s["dense_bytes_per_transfer"]
        up = s["total_uplink_bytes"] / participations
        down = s["total_downlink_bytes"] / participations
        total = s["total_uplink_bytes"] + s["total_downlink_bytes"]
        dense_total = s["fedavg_uplink_bytes"] + s["fedavg_downlink_bytes"]
        rows.append(f"| {d.name} | {s['final_accuracy']:.4f} | {s['best_accuracy']:.4f} | {up:,.0f} | {down:,.0f} "
                    f"| {dense_total / total:,.1f}x | {s['wall_seconds'] / r:.2f} |")
    print("| run | final acc | best acc | up B / client-round | down B / client-round | total vs FedAvg | s / round |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/reference")
