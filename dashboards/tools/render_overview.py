#!/usr/bin/env python3
"""Plots the EventFlux Overview dashboard's panels from real Prometheus data.

Usage: render_overview.py DATA.json DASHBOARD.json OUT.png

DATA.json is what tests/it/dashboards.rs saves with EVENTFLUX_OVERVIEW_DATA set (every Overview
panel's query_range result over the end-to-end run); DASHBOARD.json gives the layout. Run it
through `cargo xtask overview-png`. Not Grafana: the same queries and layout, drawn with
matplotlib, so a newcomer sees what the dashboard shows before installing anything.
"""
import json
import sys
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def scale(unit, values):
    """Values in a readable unit, and its name."""
    top = max((abs(v) for v in values), default=0.0)
    if unit == "bytes":
        for div, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if top >= div:
                return [v / div for v in values], name
        return values, "B"
    if unit == "s":
        for mul, name in ((1.0, "s"), (1e3, "ms"), (1e6, "µs")):
            if top * mul >= 1 or name == "µs":
                return [v * mul for v in values], name
    if unit == "percent":
        return values, "%"
    if unit == "ops":
        return values, "/s"
    return values, ""


def main():
    data_path, dashboard_path, out_path = sys.argv[1:4]
    data = json.load(open(data_path))
    dashboard = json.load(open(dashboard_path))
    panels = data["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, rows * 0.5))
    fig.suptitle(dashboard["title"] + " — panels plotted from a real Prometheus (tests/it/dashboards.rs)", fontsize=12)
    grid = fig.add_gridspec(rows, 24, hspace=0.6, wspace=1.2)
    for p in panels:
        g = p["gridPos"]
        # The panel's first grid row holds its title, as in Grafana.
        ax = fig.add_subplot(grid[g["y"] + 1:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        ax.set_title(p["title"], fontsize=9, loc="left")
        if p["type"] == "stat":
            ax.axis("off")
            texts = []
            for s in p["series"]:
                last = float(s["values"][-1][1]) if s["values"] else 0.0
                if p["unit"] == "none":
                    texts.append(s["legend"])
                else:
                    (v,), name = scale(p["unit"], [last])
                    texts.append(f"{v:,.0f} {name}".strip() if abs(v) >= 10 or v == int(v) else f"{v:.2f} {name}".strip())
            ax.text(0.5, 0.4, "\n".join(texts) or "—", ha="center", va="center", fontsize=16, color="#2f7d32",
                    transform=ax.transAxes)
            continue
        # One unit per panel, chosen from all its series.
        everything = [float(v) for s in p["series"] for _, v in s["values"]]
        _, name = scale(p["unit"], everything)
        factor = (scale(p["unit"], [max(everything, key=abs)])[0][0] / max(everything, key=abs)) if any(everything) else 1.0
        for s in p["series"]:
            times = [datetime.fromtimestamp(float(t), tz=timezone.utc) for t, _ in s["values"]]
            ax.plot(times, [float(v) * factor for _, v in s["values"]], linewidth=1, label=s["legend"])
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S"))
        if p["series"]:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        ax.grid(alpha=0.3)
    fig.savefig(out_path, dpi=90, bbox_inches="tight")


if __name__ == "__main__":
    main()
