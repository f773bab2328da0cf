"""The cost model's check and report: measured runs against the model's predictions, the tables of
benchmarks/results/cost_model.md (made from the cost_model.json record alone, `markdown`) and the plots.

A check row is {"n", "stage", "metric" (seconds, memory, disk), "predicted", "measured", "rel_error" = predicted /
measured - 1, "others_cpu"}; memory is compared as this machine's RSS sums count it (cost_predict.node_memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cost_predict import Cluster, Coefficients, predict
from harness import ACTORS, CONTENDED

from xclr_prep.search_methods import EXACT_MAX_CPU

STAGES = ("embed", "graph search", "shard writing", "train")
CHECK_MAX_STEPS = 200  # training steps of a check run: N / 1000, at most this


def check_steps(n: int) -> int:
    """Training steps of the check run at `n` captions: N / 1000, at least 1, at most CHECK_MAX_STEPS."""
    return min(max(1, n // 1000), CHECK_MAX_STEPS)


# ----------------------------------------------------------------------------------------------------- checking

def peak(run: dict, phase: str) -> float:
    return run["peaks"][phase]["total"]


def measured_rows(embed: dict, graph: dict, train: dict) -> dict[str, dict]:
    """The measured counterpart of each stage's prediction."""
    return {
        "embed": {"seconds": embed["wall_seconds"], "memory": peak(embed, "all"), "disk": embed["disk_bytes"],
                  "others_cpu": embed["others_cpu"]},
        "graph search": graph_search_row(graph),
        "shard writing": shard_writing_row(graph),
        "train": {"seconds": train["wall_seconds"], "memory": peak(train, "all"), "disk": train["disk_bytes"],
                  "others_cpu": train["others_cpu"]},
    }


def shard_writing_row(graph: dict) -> dict:
    return {"seconds": graph["shards_seconds"], "memory": peak(graph, "after"), "disk": graph["shards_disk_bytes"],
            "others_cpu": graph["others_cpu"]}


def graph_search_row(graph: dict) -> dict:
    return {"seconds": graph["wall_seconds"] - graph["shards_seconds"], "memory": peak(graph, "before"),
            "disk": graph["graph_disk_bytes"], "others_cpu": graph["others_cpu"]}


def compare(n: int, stage: str, predicted: dict, measured: dict) -> list[dict]:
    """Check rows (module docstring) of one stage at `n`."""
    got = {"seconds": predicted["seconds"], "memory": predicted["rss"], "disk": predicted["disk"]}
    return [{"n": n, "stage": stage, "metric": metric, "predicted": got[metric], "measured": measured[metric],
             "rel_error": (got[metric] - measured[metric]) / measured[metric], "others_cpu": measured["others_cpu"]}
            for metric in got]


def median_errors(rows: list[dict]) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """The median |rel_error| of each metric, and of time and memory at each N."""
    errors = {m: float(np.median([abs(r["rel_error"]) for r in rows if r["metric"] == m]))
              for m in ("seconds", "memory", "disk")}
    by_n = {n: {m: float(np.median([abs(r["rel_error"]) for r in rows if r["metric"] == m and r["n"] == n]))
                for m in ("seconds", "memory")} for n in dict.fromkeys(r["n"] for r in rows)}
    return errors, by_n


# ----------------------------------------------------------------------------------------------------- tables

def human_seconds(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h"


def human_bytes(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x / 2**20:.0f} MiB" if x < 2**30 else f"{x / 2**30:.1f} GiB"


def check_table(rows: list[dict]) -> str:
    lines = ["| stage | N | time pred | time meas | err | memory pred | memory meas | err | disk pred | disk meas "
             "| err | others' CPU |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keyed = {(r["stage"], r["n"], r["metric"]): r for r in rows}
    for stage, n in dict.fromkeys((r["stage"], r["n"]) for r in rows):
        cells = []
        for metric, fmt in (("seconds", lambda x: f"{x:.1f} s"), ("memory", human_bytes), ("disk", human_bytes)):
            r = keyed[(stage, n, metric)]
            cells += [fmt(r["predicted"]), fmt(r["measured"]), f"{100 * r['rel_error']:+.0f}%"]
        cells.append(f"{100 * keyed[(stage, n, 'seconds')]['others_cpu']:.0f}%")
        lines.append(f"| {stage} | {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prediction_table(predictions: list[dict]) -> str:
    sizes = [p["n"] for p in predictions]
    head = "| stage | where | " + " | ".join(f"{n / 1e6:g}M time | memory/node | disk" for n in sizes) + " |"
    lines = [head, "|---|---|" + "---:|" * (3 * len(sizes))]
    where = {"embed": "CPU nodes", "graph search": "CPU nodes", "shard writing": "CPU nodes",
             "train": "CPU nodes (32 px convnet)", "graph search (exact)": "CPU nodes",
             "train (GPU)": "GPU nodes (ResNet-50, 224 px)"}
    for stage in (*STAGES[:2], "graph search (exact)", STAGES[2], STAGES[3], "train (GPU)"):
        cells = []
        for p in (p["stages"][stage] for p in predictions):
            label = human_seconds(p["seconds"])
            if "method" in p:
                label += f" ({p['method']})"
            if "bound" in p:
                label += f" ({p['bound']}-bound)"
            memory = "not measured" if stage == "train (GPU)" else human_bytes(p["resident"])
            if p.get("mapped"):
                memory += f" ({human_bytes(p['mapped'])} mapped)"
            cells += [label, memory, human_bytes(p["disk"])]
        lines.append(f"| {stage} | {where[stage]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def process_table(rows: list[dict]) -> str:
    lines = ["| stage | N | driver RSS | driver anonymous | largest actor | driver anonymous per sample, from the "
             "previous size |", "|---|---:|---:|---:|---:|---:|"]
    previous: dict[str, dict] = {}
    for r in rows:
        actor = next(((k, v) for k, v in r.items() if k in ACTORS), None)
        before = previous.get(r["stage"])
        slope = (f"{(r['driver_anon'] - before['driver_anon']) / (r['n'] - before['n']):.0f} B" if before else "")
        lines.append(f"| {r['stage']} | {r['n']:,} | {human_bytes(r['driver'])} | {human_bytes(r['driver_anon'])} "
                     f"| {f'{actor[0]} {human_bytes(actor[1])}' if actor else ''} | {slope} |")
        previous[r["stage"]] = r
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """cost_model.md from the cost_model.json record `result` (as written, or as read back)."""
    sizes = result["calibration_sizes"]
    steps = result["calibration_train_steps"]
    grown = [int(n) for n, run in result["check_runs"].items() if "grown_from" in run]
    errors = result["median_abs_rel_error"]
    return (
        f"## Check on {result['machine']}\n\nCalibrated at {sizes[0]:,} and {sizes[1]:,} captions "
        f"(training: {steps[0]} and {steps[1]} steps); train rows run min(N / 1000, "
        f"{CHECK_MAX_STEPS}) steps; the {', '.join(f'{n:,}' for n in grown)} rows are graph-only runs on grown "
        f"embeddings. "
        f"Memory = peak summed RSS of the process tree; others' CPU = share of the machine other users took during "
        f"the run.\n\n{check_table(result['check'])}\n\nmedian |error|: time {100 * errors['seconds']:.0f}%, "
        f"memory {100 * errors['memory']:.0f}%, disk {100 * errors['disk']:.0f}%; by N: "
        + ", ".join(f"{int(n):,}: time {100 * e['seconds']:.0f}%, memory {100 * e['memory']:.0f}%"
                    for n, e in result["median_abs_rel_error_by_n"].items())
        + f"\n\n## Memory by process\n\nPeaks of each run; the driver's anonymous memory leaves out the files it "
        f"maps (neighbour rows, embeddings).\n\n{process_table(result['processes'])}\n\n"
        f"## Predictions: {result['cluster']['name']}\n\nOne epoch of training; memory/node = the head node's peak "
        f"(it runs the driver), memory-mapped files (page cache) counted once and shown in brackets; shard disk at "
        f"{result['image_bytes_at_scale'] / 1e3:.1f} KB per image. CPU figures: per-core costs measured here, "
        f"scaled linearly; GPU training: {result['gpu_training']['source']}.\n\n"
        f"{prediction_table(result['predictions'])}\n")


# ----------------------------------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[dict], path: Path) -> None:
    """Predicted against measured time, memory and disk of every check row, log-log, with +-25% lines."""
    plt = _pyplot()
    units = {"seconds": ("wall time", "s", 1), "memory": ("peak memory (process tree RSS)", "MiB", 2**20),
             "disk": ("disk", "MiB", 2**20)}
    stages = sorted({r["stage"] for r in rows}, key=lambda s: (s.startswith("graph search ("), s))
    colors = dict(zip(stages, plt.get_cmap("tab10").colors))
    markers = dict(zip(sorted({r["n"] for r in rows}), "osD^v"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4))
    for ax, (metric, (title, unit, div)) in zip(axes, units.items()):
        got = [r for r in rows if r["metric"] == metric]
        vals = [v / div for r in got for v in (r["predicted"], r["measured"])]
        lo, hi = min(vals) / 1.5, max(vals) * 1.5
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        for f in (0.75, 1.25):
            ax.plot([lo, hi], [lo * f, hi * f], color="grey", lw=0.6, ls=":")
        for r in got:
            contended = r["others_cpu"] > CONTENDED
            ax.scatter(r["measured"] / div, r["predicted"] / div, marker=markers[r["n"]], s=45,
                       facecolor="none" if contended else colors[r["stage"]],
                       edgecolor=colors[r["stage"]] if contended else "black", linewidth=1.2 if contended else 0.4)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), title=title,
               xlabel=f"measured ({unit})", ylabel=f"predicted ({unit})")
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    handles = [plt.Line2D([], [], color=colors[s], marker="o", ls="", label=s) for s in stages]
    handles += [plt.Line2D([], [], color="grey", marker=m, ls="", label=f"{n:,} captions") for n, m in markers.items()]
    handles += [plt.Line2D([], [], color="grey", ls=":", label="+-25%"),
                plt.Line2D([], [], color="grey", marker="o", mfc="none", ls="",
                           label=f"hollow: others used > {100 * CONTENDED:.0f}% of the CPU")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Cost model: predicted (calibrated at 2k/20k captions) vs measured, this machine", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    _save(plt, fig, path)


def plot_scale(c: Coefficients, this: Cluster, rows: list[dict], path: Path) -> None:
    """Time and memory against N on this machine: the model's curve per stage (auto search method; training
    check_steps(N) steps) and the measured runs."""
    plt = _pyplot()
    colors = dict(zip(STAGES, plt.get_cmap("tab10").colors))
    grid = np.geomspace(2_000, max(r["n"] for r in rows) * 1.5, 60)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (metric, key, div, label) in zip(axes, (("seconds", "seconds", 1, "wall time (s)"),
                                                   ("memory", "rss", 2**30, "peak memory, process tree RSS (GiB)"))):
        for stage in STAGES:
            curve = [predict(c, this, int(n), train_steps=check_steps(int(n)))[stage][key] for n in grid]
            ax.plot(grid, np.array(curve, dtype=float) / div, color=colors[stage], lw=1.2, label=f"{stage} (model)")
            got = [r for r in rows if r["stage"] == stage and r["metric"] == metric]
            ax.scatter([r["n"] for r in got], [r["measured"] / div for r in got], color=colors[stage], s=30,
                       edgecolor="black", linewidth=0.5, zorder=3)
        ax.set(xscale="log", yscale="log", xlabel="captions N (one sample each)", ylabel=label)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle("Each stage against N on this machine (2 cores): model (lines) and measured runs (dots); graph search "
                 f"is exact up to {EXACT_MAX_CPU // 1000}k captions, IVF above", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
