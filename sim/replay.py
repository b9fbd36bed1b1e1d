"""``dlu replay``: run a recorded training trace on the cycle simulator and write the results.

:func:`replay` reads a trace, runs :class:`sim.core.CycleSim` on it (data executed and checked
bit for bit unless ``execute=False``), schedules the same work at 32 bits for the fp32
counterpart, and returns (and optionally writes, atomically) a JSON-ready results dictionary:

- ``totals``: the performance counters (:class:`sim.core.Counters`), utilization, bytes and
  energy of the whole trace, and of its fp32 counterpart, with their ratios;
- ``by_layer_pass``: the same per (layer, pass);
- ``by_iteration``: cycles per traced iteration;
- ``tensors``: per tensor id, the point position at the start of each traced iteration and the
  histogram its commands accumulated in that iteration (from the trace, which the execution
  checked);
- ``speed``: wall time and simulated cycles per second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from reference import kernels
from reference.config import CoreConfig
from reference.formats import Width
from reference.outputs import atomic_write
from reference.trace import OpRecord, PolicyRecord, SettingRecord, Trace, read_trace, rerun_records

from .core import Counters, CycleSim, Pass, SimCommand, fitting_config, schedule
from .energy import EnergyTable, total_energy

RESULTS_FORMAT = "dlu-sim-results"
RESULTS_VERSION = 1


def _group(cmds: list[SimCommand]) -> dict[tuple[str, str], list[SimCommand]]:
    out: dict[tuple[str, str], list[SimCommand]] = {}
    for c in cmds:
        out.setdefault((c.layer, c.pass_.value), []).append(c)
    return out


def _summary(cmds: list[SimCommand], fp32: list[SimCommand], cfg: CoreConfig, table: EnergyTable,
             peak: int) -> dict[str, Any]:
    wb = cfg.word_bits // 8
    ctr, ctr32 = Counters.of(cmds), Counters.of(fp32)
    e, e32 = total_energy(cmds, table, wb), total_energy(fp32, table, wb, fp32=True)
    return {
        **asdict(ctr),
        "utilization": ctr.utilization(peak),
        "bus_bytes": ctr.bus_words * wb,
        "spad_bytes": (ctr.spad_read_words + ctr.spad_write_words) * wb,
        "energy_pj": e.to_dict(),
        "fp32": {"cycles": ctr32.cycles, "bus_bytes": ctr32.bus_words * wb, "energy_pj": e32.to_dict()},
        "fp32_over_dfp_energy": e32.total / e.total if e.total else None,
        "fp32_over_dfp_cycles": ctr32.cycles / ctr.cycles if ctr.cycles else None,
    }


def _reruns(trace: Trace, cmds: list[SimCommand], cfg: CoreConfig, table: EnergyTable) -> dict[str, Any]:
    """The host's re-runs (:func:`reference.trace.rerun_records`): how many, and the cycles and energy of
    every command they caused (the compute command and its transfers)."""
    rr = {it.iteration: rerun_records(it) for it in trace.iterations}
    mine = [c for c in cmds if c.record in rr.get(c.iteration, ())]
    e = total_energy(mine, table, cfg.word_bits // 8)
    return {"reruns": sum(len(v) for v in rr.values()), "commands": len(mine),
            "cycles": sum(c.cycles for c in mine), "energy_pj": e.total}


def tensor_evolution(trace: Trace) -> dict[str, dict[str, Any]]:
    """Per tensor id: point position at each traced iteration's start and the histogram accumulated in it."""
    names = {int(k): str(v) for k, v in trace.meta.get("tensor_names", {}).items()}
    out: dict[str, dict[str, Any]] = {}
    for it in trace.iterations:
        settings = dict(it.settings_at_start)
        hists: dict[int, np.ndarray] = {}
        for rec in it.records:
            if isinstance(rec, OpRecord):
                hists[rec.dst] = hists.get(rec.dst, 0) + rec.stats.hist
            elif isinstance(rec, SettingRecord) and rec.tid not in it.settings_at_start:
                settings.setdefault(rec.tid, rec.setting)
        for tid, s in sorted(settings.items()):
            e = out.setdefault(names.get(tid, f"tid{tid}"), {"tid": tid, "width": s.fmt.bits, "iteration": [],
                                                             "frac": [], "hist": []})
            e["iteration"].append(it.iteration)
            e["frac"].append(s.fmt.frac)
            h = hists.get(tid)
            e["hist"].append(None if h is None else [int(x) for x in h])
    return out


def results(trace: Trace, cfg: CoreConfig | None = None, execute: bool = True, table: EnergyTable | None = None,
            progress: Callable[[int], None] | None = None, source: str = "") -> dict[str, Any]:
    """Replay ``trace`` on the cycle simulator; returns the results dictionary (see the module docstring)."""
    table = table or EnergyTable()
    kernels.warm_up()  # the speed figure is the replay's, not the process's first kernel load
    t0 = time.perf_counter()
    res = CycleSim(cfg).run(trace, execute=execute, progress=progress)
    wall = time.perf_counter() - t0
    cfg = res.cfg
    fp32_its = schedule(trace, cfg, Width.W32)
    cmds = res.commands
    fp32 = [c for it in fp32_its for c in it.commands]
    widths = sorted({c.width.bits for c in cmds if c.width is not None and c.macs})
    peak = cfg.peak_macs_per_cycle(Width.from_bits(min(widths))) if widths else cfg.lanes
    by32 = _group(fp32)
    groups = []
    for (layer, pass_), cs in _group(cmds).items():
        groups.append({"layer": layer, "pass": pass_, **_summary(cs, by32.get((layer, pass_), []), cfg, table, peak)})
    order = {p.value: i for i, p in enumerate(Pass)}
    groups.sort(key=lambda g: (order[g["pass"]], min(c.record for c in cmds if c.layer == g["layer"]
                                                     and c.pass_.value == g["pass"])))
    cycles = sum(c.cycles for c in cmds)
    meta = trace.meta.get("train_config", {})
    planned = planned_scratchpad(trace)
    for g in groups:
        g["planned_scratchpad_bytes"] = planned.get((g["layer"], g["pass"])) if planned else None
    return {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION,
        "engine": "sim", "executed": execute, "source": source,
        "precision": meta.get("precision"), "model": meta.get("model"),
        "config": cfg.to_dict(), "trace_config": trace.cfg.to_dict(),
        "energy_table": table.to_dict(),
        "iterations": [it.iteration for it in trace.iterations],
        "peak_macs_per_cycle": peak,
        "scratchpad_bytes": cfg.spad_banks * cfg.spad_words * cfg.word_bits // 8,
        "totals": _summary(cmds, fp32, cfg, table, peak),
        "by_layer_pass": groups,
        "by_iteration": [{"iteration": it.iteration, "cycles": sum(c.cycles for c in it.commands),
                          "commands": len(it.commands), "operand_frac_mismatches": it.fmt_mismatches}
                         for it in res.iterations],
        "policy_updates": sum(isinstance(r, PolicyRecord) for it in trace.iterations for r in it.records),
        "reruns": _reruns(trace, cmds, cfg, table),
        "tensors": tensor_evolution(trace),
        "speed": {"wall_s": wall, "cycles_per_s": cycles / wall if wall > 0 else None},
    }


def planned_scratchpad(trace: Trace) -> dict[tuple[str, str], int]:
    """Per (layer, pass), the bytes the memory planner's REORDER schedule needs at once for the traced model.

    :func:`reference.pooled.scratchpad_by_layer_pass` for the trace's model, batch and widest
    data width (whole tensors, as the planner counts them; the scheduler may tile a command
    through one bank instead). Empty when the trace does not say which model and image shape it ran.
    """
    meta = trace.meta.get("train_config", {})
    hwc = trace.meta.get("image_hwc")
    if hwc is None and trace.meta.get("data") == "digits":  # traces from before image_hwc was recorded
        hwc = (8, 8, 1)
    if not meta.get("model") or not meta.get("batch") or hwc is None:
        return {}
    from reference.models import build_model
    from reference.pooled import net_of_model, scratchpad_by_layer_pass

    spec = meta.get("precision_spec") or {}
    bits = [v["width"] for v in spec.values() if isinstance(v, dict) and "width" in v]
    width = Width.from_bits(max(bits)) if bits else Width.W32
    if any(la.get("type") == "add" for la in (trace.meta.get("net") or {}).get("layers", [])):
        return {}  # the memory planner handles chains only
    model = build_model(trace.meta.get("net") or meta["model"], tuple(hwc), int(trace.meta.get("classes", 10)),
                        trace.cfg.tensor_ids)
    return scratchpad_by_layer_pass(int(meta["batch"]), width, net=net_of_model(model),
                                    momentum=float(meta.get("momentum", 0)) != 0)


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)), mode=0o666)


def default_results_path(trace_dir: str | Path) -> Path:
    """``RUN/sim.json`` for a trace in ``RUN/trace``; else ``TRACE/../<trace name>.sim.json``."""
    p = Path(trace_dir)
    return p.parent / ("sim.json" if p.name == "trace" else f"{p.name}.sim.json")


def replay(trace_dir: str | Path, out: str | Path | None = None, cfg: CoreConfig | None = None,
           execute: bool = True, table: EnergyTable | None = None, progress: bool = False,
           grow_spad: bool = False, iterations: str | None = None) -> tuple[dict, Path]:
    """Read a trace directory, replay it on the cycle simulator, write the results JSON atomically.

    Returns the results dictionary and the path written (``out`` or
    :func:`default_results_path`). With ``progress`` a tqdm bar shows simulated cycles, cycles
    per second and the time left (the total is known from the schedule before data runs). With
    ``grow_spad`` the core's ``spad_words`` is doubled until every command fits
    (:func:`sim.core.fitting_config`); ``results["config"]`` records the core used. ``iterations``
    (``"all"``, or indices/ranges like ``"0,5-7"`` of training iterations) replays only those
    traced iterations; each traced iteration is complete, so any subset replays on its own.
    """
    trace = select_iterations(read_trace(trace_dir), iterations)
    if grow_spad:
        cfg = fitting_config(trace, cfg)
    bar = None
    cb = None
    if progress:
        from tqdm import tqdm

        total = sum(c.cycles for it in schedule(trace, cfg) for c in it.commands)
        bar = tqdm(total=total, unit="cyc", unit_scale=True, desc="sim replay", dynamic_ncols=True)
        cb = bar.update
    try:
        res = results(trace, cfg, execute, table, cb, str(trace_dir))
    finally:
        if bar is not None:
            bar.close()
    path = Path(out) if out is not None else default_results_path(trace_dir)
    write_json_atomic(res, path)
    return res, path


def select_iterations(trace: Trace, spec: str | None) -> Trace:
    """``trace`` restricted to the training iterations of ``spec`` (None or ``"all"``: all of them)."""
    if spec is None:
        return trace
    from dataclasses import replace

    from reference.train import IterSpec

    sel = IterSpec.parse(spec)
    its = [it for it in trace.iterations if it.iteration in sel]
    if not its:
        have = [it.iteration for it in trace.iterations]
        raise ValueError(f"replay: iterations {spec!r} selects none of the traced iterations {have}")
    return replace(trace, iterations=its)


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results JSON written by :func:`replay`; errors name the file and the bad field."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"results: {path}: malformed JSON: {exc}") from exc
    if not isinstance(d, dict) or d.get("format") != RESULTS_FORMAT:
        raise ValueError(f"results: {path}: field 'format' is not {RESULTS_FORMAT!r}")
    if d.get("version") != RESULTS_VERSION:
        raise ValueError(f"results: {path}: version {d.get('version')!r} is not {RESULTS_VERSION}")
    for key in ("totals", "by_layer_pass", "by_iteration", "tensors"):
        if key not in d:
            raise ValueError(f"results: {path}: missing field {key!r}")
    _check_results_shape(d, path)
    return d


def _check_results_shape(d: dict[str, Any], path: Path) -> None:
    """ValueError naming the first field whose type is not what :func:`results` writes."""
    def need(v: Any, typ: type | tuple[type, ...], where: str) -> Any:
        if isinstance(v, bool) or not isinstance(v, typ):
            raise ValueError(f"results: {path}: field {where} has {type(v).__name__} {v!r:.60}, expected "
                             f"{getattr(typ, '__name__', 'a number')}")
        return v

    def summary(t: Any, where: str) -> None:
        need(t, dict, where)
        for k in ("cycles", "bus_bytes"):
            need(t.get(k), int, f"{where}.{k}")
        need(t.get("utilization"), (int, float), f"{where}.utilization")
        e = need(t.get("energy_pj"), dict, f"{where}.energy_pj")
        need(e.get("total"), (int, float), f"{where}.energy_pj.total")

    summary(d["totals"], "totals")
    for i, g in enumerate(need(d["by_layer_pass"], list, "by_layer_pass")):
        summary(g, f"by_layer_pass[{i}]")
        need(g.get("layer"), str, f"by_layer_pass[{i}].layer")
        need(g.get("pass"), str, f"by_layer_pass[{i}].pass")
    for i, it in enumerate(need(d["by_iteration"], list, "by_iteration")):
        need(it, dict, f"by_iteration[{i}]")
        need(it.get("iteration"), int, f"by_iteration[{i}].iteration")
        need(it.get("cycles"), int, f"by_iteration[{i}].cycles")
    for name, t in need(d["tensors"], dict, "tensors").items():
        need(t, dict, f"tensors.{name}")
    need(d.get("config"), dict, "config")
