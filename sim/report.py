"""``dlu report``: an HTML report with PNG plots from cycle-simulator results.

Inputs are results dictionaries of :func:`sim.replay.results` (one per run, e.g. dfp16 and dfp8
of the same model). The report has a summary table (cycles, utilization, bus bytes, energy, and
the fp32 counterpart's energy and cycles over the run's), per run a table per layer and pass
(forward, backward, update), and plots: cycles per layer and pass, energy per layer against the
fp32 counterpart, the energy split by cause, and the point position and histogram of every
tensor id over the traced iterations. Every file is written through a temporary name and a
rename; ``report.html`` is written last.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from reference.outputs import atomic_write_bytes

PASSES = ("forward", "backward", "update", "control")


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def run_label(res: dict[str, Any], i: int) -> str:
    prec = res.get("precision") or "dfp"
    model = res.get("model") or "trace"
    return f"{model}-{prec}" if i == 0 else f"{model}-{prec}-{i}"


def _unique_labels(results: list[dict[str, Any]]) -> list[str]:
    labels, seen = [], set()
    for r in results:
        base = run_label(r, 0)
        lab, n = base, 1
        while lab in seen:
            lab, n = f"{base}-{n}", n + 1
        seen.add(lab)
        labels.append(lab)
    return labels


def _plot_cycles(res: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(g["layer"] for g in res["by_layer_pass"]))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bottom = np.zeros(len(layers))
    for p in PASSES:
        vals = np.array([sum(g["cycles"] for g in res["by_layer_pass"] if g["layer"] == la and g["pass"] == p)
                         for la in layers], dtype=float)
        if vals.any():
            ax.bar(layers, vals, bottom=bottom, label=p)
            bottom += vals
    ax.set_ylabel("cycles")
    ax.set_title(f"{title}: cycles per layer and pass")
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def _plot_energy(res: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(g["layer"] for g in res["by_layer_pass"]))
    dfp = [sum(g["energy_pj"]["total"] for g in res["by_layer_pass"] if g["layer"] == la) / 1e6 for la in layers]
    f32 = [sum(g["fp32"]["energy_pj"]["total"] for g in res["by_layer_pass"] if g["layer"] == la) / 1e6
           for la in layers]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(x - 0.2, dfp, 0.4, label=res.get("precision") or "dfp")
    ax.bar(x + 0.2, f32, 0.4, label="fp32 counterpart")
    ax.set_xticks(x, layers)
    ax.set_ylabel("energy (uJ)")
    ax.set_title(f"{title}: energy per layer")
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def _plot_split(results: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    causes = ("compute", "stats", "spad", "bus")
    bars = []
    for res, lab in zip(results, labels, strict=True):
        bars.append((lab, res["totals"]["energy_pj"]))
        bars.append((f"{lab} fp32", res["totals"]["fp32"]["energy_pj"]))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bottom = np.zeros(len(bars))
    for c in causes:
        vals = np.array([b[1][c] / 1e6 for b in bars])
        ax.bar([b[0] for b in bars], vals, bottom=bottom, label=c)
        bottom += vals
    ax.set_ylabel("energy (uJ)")
    ax.set_title("energy by cause, whole trace")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    _save(fig, path)
    plt.close(fig)


def _plot_fracs(res: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[str, dict]]] = {}
    for name, t in res["tensors"].items():
        groups.setdefault(name.split("@", 1)[0].split(".", 1)[0], []).append((name, t))
    cols = 3
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    for ax, (layer, items) in zip(axes.flat, groups.items(), strict=False):
        for name, t in items:
            ax.plot(t["iteration"], t["frac"], marker=".", ms=3, label=name)
        ax.set_title(layer, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(f"{title}: point position F per tensor id over the traced iterations")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _plot_hists(res: dict[str, Any], path: Path, title: str, cfg: dict[str, int]) -> None:
    import matplotlib.pyplot as plt

    tensors = [(n, t) for n, t in res["tensors"].items() if any(h is not None for h in t["hist"])]
    tensors = tensors[:12]
    if not tensors:
        return
    cols = 4
    rows = -(-len(tensors) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.4 * rows), squeeze=False)
    lo = cfg["hist_min_exp"]
    for ax, (name, t) in zip(axes.flat, tensors, strict=False):
        h = np.array([x if x is not None else [0] * cfg["hist_bins"] for x in t["hist"]], dtype=float)
        h = h / np.maximum(h.sum(axis=1, keepdims=True), 1)
        ax.imshow(h.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                  extent=(t["iteration"][0] - 0.5, t["iteration"][-1] + 0.5, lo - 0.5, lo + cfg["hist_bins"] - 0.5))
        ax.plot(t["iteration"], [-f for f in t["frac"]], color="red", lw=1)  # the LSB exponent
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(tensors):]:
        ax.axis("off")
    fig.suptitle(f"{title}: histogram of exponents per iteration (red: LSB exponent -F)")
    _save(fig, path)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def write_report(results: list[dict[str, Any]], out: str | Path) -> Path:
    """Write ``out/report.html`` and its PNG plots; returns the path of ``report.html``."""
    import matplotlib

    matplotlib.use("Agg")
    if not results:
        raise ValueError("report: no results to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = _unique_labels(results)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>DLU simulator report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
             "margin:8px 0}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right;font-size:12px}"
             "th{background:#eee}</style></head><body><h1>DLU cycle-simulator report</h1>"]
    rows = []
    for res, lab in zip(results, labels, strict=True):
        t = res["totals"]
        n_it = max(len(res["by_iteration"]), 1)
        rows.append([lab, len(res["by_iteration"]), t["cycles"], t["cycles"] // n_it, t["utilization"],
                     t["bus_bytes"], t["energy_pj"]["total"] / 1e6, t["fp32"]["energy_pj"]["total"] / 1e6,
                     t["fp32_over_dfp_energy"], t["fp32_over_dfp_cycles"],
                     "yes" if res.get("executed") else "timing only", res["speed"]["cycles_per_s"]])
    parts.append("<h2>Summary</h2>")
    parts.append("<p>fp32 counterpart: the same commands scheduled at 32 bits (one value per 32-bit lane) and "
                 "charged fp32 add/multiply energies without a statistics block; memory energies are the same "
                 "per byte. Ratios above 1 favour the dynamic fixed-point run. Energies are 45 nm estimates "
                 "(Horowitz, ISSCC 2014; see docs/simulator.md).</p>")
    parts.append(_table(["run", "iterations", "cycles", "cycles/iteration", "utilization", "bus bytes",
                         "energy (uJ)", "fp32 energy (uJ)", "fp32/dfp energy", "fp32/dfp cycles",
                         "data executed", "sim cycles/s"], rows))
    _plot_split(results, labels, out / "energy_split.png")
    parts.append("<img src='energy_split.png'>")
    for res, lab in zip(results, labels, strict=True):
        parts.append(f"<h2>{html.escape(lab)}</h2><p>source: {html.escape(str(res.get('source', '')))}; core "
                     f"{html.escape(str(res['config']))}</p>")
        rtl = res.get("rtl")
        if rtl:
            what = "cycles, STORE data, results, statistics and settings" if rtl["checked"] else "cycles and STORE data"
            verdict = (f"<b>differs</b>: {html.escape(rtl['mismatch'])}" if rtl["mismatch"] else
                       f"{what} identical to the simulator and the trace")
            parts.append(f"<p>RTL replay (Verilated core through cocotb): {rtl['commands']} commands of iteration(s) "
                         f"{rtl['iterations']}, {rtl['command_cycles']['rtl']:,} command cycles; {verdict}; "
                         f"{rtl['speed']['cycles_per_s']:,.0f} simulated cycles/s.</p>")
        rr = res.get("reruns")
        if rr:
            parts.append(f"<p>Host re-runs of overflowing commands (reference.engine.Engine.run): {rr['reruns']}, "
                         f"{rr['commands']} commands, {rr['cycles']:,} cycles "
                         f"({rr['cycles'] / max(res['totals']['cycles'], 1):.2%} of the run), "
                         f"{rr['energy_pj'] / 1e6:.3f} uJ.</p>")
        prows = []
        for p in PASSES:
            gs = [g for g in res["by_layer_pass"] if g["pass"] == p]
            if gs:
                cyc = sum(g["cycles"] for g in gs)
                prows.append([p, cyc, cyc / max(res["totals"]["cycles"], 1), sum(g["macs"] for g in gs),
                              sum(g["bus_bytes"] for g in gs), sum(g["energy_pj"]["total"] for g in gs) / 1e6,
                              sum(g["fp32"]["energy_pj"]["total"] for g in gs) / 1e6])
        parts.append(_table(["pass", "cycles", "share of cycles", "MACs", "bus bytes", "energy (uJ)",
                             "fp32 energy (uJ)"], prows))
        lrows = []
        for g in res["by_layer_pass"]:
            lrows.append([g["layer"], g["pass"], g["commands"], g["cycles"], g["compute_cycles"],
                          g["overhead_cycles"], g["transfer_cycles"], g["utilization"], g["macs"],
                          g["bus_bytes"], g["spad_bytes"], g["energy_pj"]["total"] / 1e6,
                          g["fp32"]["energy_pj"]["total"] / 1e6, g["fp32"]["cycles"],
                          "" if g.get("planned_scratchpad_bytes") is None else g["planned_scratchpad_bytes"]])
        parts.append(_table(["layer", "pass", "commands", "cycles", "compute", "overhead", "transfer",
                             "utilization", "MACs", "bus bytes", "spad bytes", "energy (uJ)", "fp32 energy (uJ)",
                             "fp32 cycles", "planned scratchpad bytes"], lrows))
        if "scratchpad_bytes" in res:
            parts.append("<p>planned scratchpad bytes: what the memory planner's REORDER schedule "
                         "(reference.pooled.scratchpad_by_layer_pass) holds at once for the layer and pass, whole "
                         f"tensors at the trace's widest width; this core's scratchpad has {res['scratchpad_bytes']:,}"
                         " bytes (the scheduler tiles what does not fit one bank).</p>")
        for kind, fn in (("cycles", _plot_cycles), ("energy", _plot_energy), ("frac", _plot_fracs)):
            name = f"{kind}_{lab}.png"
            fn(res, out / name, lab)
            parts.append(f"<img src='{html.escape(name)}'>")
        name = f"hist_{lab}.png"
        _plot_hists(res, out / name, lab, res["config"])
        if (out / name).exists():
            parts.append(f"<img src='{html.escape(name)}'>")
    parts.append("</body></html>")
    path = out / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path
