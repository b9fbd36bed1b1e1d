"""Pytest side of the cocotb regression: Verilog generation, one build per config, test runs.

Every bench module ``test_<block>.py`` holds its cocotb tests *and* a pytest function that
calls :func:`run`. :func:`run`:

1. elaborates the Amaranth component for a config preset into
   ``build/cocotb/<sim>/<config>/<block>[-waves]/<top>.v`` (or, for the whole core, calls the
   project's generator, which writes ``manifest.json`` beside the Verilog);
2. builds it once per (simulator, config, block, waves): a stamp holding a hash of the
   Verilog and of the build arguments makes later calls (other tests, other xdist workers,
   later sessions) reuse the build; an ``fcntl`` lock serialises concurrent builders;
3. runs the selected cocotb tests in their own run directory, passing the seed, the config
   and the coverage file names through environment variables;
4. turns a failing cocotb test into a pytest failure that names the test and its message.

Environment (documented in ``docs/verification.md``):

``SIM``           ``verilator`` (default) or ``icarus``.
``WAVES=1``       build with FST tracing and write ``dump.fst`` (Verilator) /
                  ``<top>.fst`` (Icarus) into the run directory.
``DLU_SEED``      rerun with this seed (overrides the per-test seed).
``DLU_COVERAGE``  ``0`` disables Verilator line/toggle coverage instrumentation.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import secrets
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_ROOT = ROOT / "build" / "cocotb"
TB_DIR = Path(__file__).resolve().parent
#: Clock period of every bench, in ns (timeouts are given in cycles and multiplied by it).
CLOCK_NS = 10

def simulator(sim: str | None = None) -> str:
    sim = (sim or os.environ.get("SIM", "verilator")).lower()
    if sim not in ("verilator", "icarus"):
        raise ValueError(f"SIM={sim!r}: expected 'verilator' or 'icarus'")
    return sim


def waves() -> bool:
    return os.environ.get("WAVES", "0") not in ("", "0")


def coverage_enabled(sim: str) -> bool:
    return sim == "verilator" and os.environ.get("DLU_COVERAGE", "1") != "0"


def verilator_bin() -> Path:
    from rtl_gen.verilate import verilator_bin as vb

    return vb()


def _env_path(sim: str) -> dict[str, str]:
    from rtl_gen.verilate import sim_path_env

    return sim_path_env(sim)


def new_seed() -> int:
    """The seed of one run: ``DLU_SEED`` if set, else fresh randomness (logged and recorded)."""
    s = os.environ.get("DLU_SEED")
    return int(s, 0) if s else secrets.randbits(31)


def build_dir(config: str, block: str, sim: str | None = None) -> Path:
    sim = simulator(sim)
    return BUILD_ROOT / sim / config / (block + ("-waves" if waves() else ""))


def elaborate(component_factory: Callable[[], object], top: str, out: Path) -> Path:
    """Write the Verilog of an Amaranth component (a fresh one per call) to ``out/<top>.v``."""
    from amaranth.back import verilog

    out.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(component_factory(), name=top, emit_src=True)
    path = out / f"{top}.v"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _build_args(sim: str) -> list[str]:
    if sim != "verilator":
        return []
    args = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "unique", "--x-initial", "unique"]
    if coverage_enabled(sim):
        args += ["--coverage-line", "--coverage-toggle"]
    if waves():
        args += ["--trace-fst", "--trace-structs"]
    return args


_DUMP_REG = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+)\s+= 0;$", re.M)


def icarus_source(src: Path, out_dir: Path) -> Path:
    """A copy of ``src`` whose Amaranth time-0 trigger registers Icarus 11 actually fires.

    Amaranth opens every combinational process with a read of a ``reg ... = 0`` so that the
    process runs at time 0. Icarus 11 applies such declaration initializers without an event,
    so a process whose real inputs never change (e.g. ``s_axis_tready`` while the sequencer stays
    idle) keeps its outputs X. Turning the initializer into ``initial`` assignment makes the X->0
    change an event. The logic is untouched; only Icarus builds use the copy."""
    text = _DUMP_REG.sub(lambda m: f"{m[1]}reg {m[2]} ;\n{m[1]}initial {m[2]}  = 0;", src.read_text())
    out = out_dir / f"{src.stem}.icarus{src.suffix}"
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return out


def build(sources: list[Path], top: str, bdir: Path, sim: str | None = None) -> None:
    """Build ``sources`` into ``bdir`` unless a build of identical inputs is already there."""

    sim = simulator(sim)
    if sim == "icarus" and shutil.which("iverilog") is None:
        import pytest

        pytest.skip("iverilog is not installed (apt-get install iverilog; .ci/run does)")
    if sim == "icarus":
        bdir.mkdir(parents=True, exist_ok=True)
        sources = [icarus_source(p, bdir) for p in sources]
    if sim == "verilator" and waves() and not Path("/usr/include/lz4.h").exists():
        raise RuntimeError("WAVES=1 with Verilator 5.052 writes FST, whose writer needs lz4.h: "
                           "apt-get install liblz4-dev")
    from rtl_gen.verilate import build as verilate

    # a rebuild deletes runs of the older netlist: their coverage would not match the new Verilog's lines
    verilate(sources, top, bdir, sim, _build_args(sim), waves(),
             on_rebuild=lambda: shutil.rmtree(bdir / "runs", ignore_errors=True))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:150]


def failed_tests(results_xml: Path) -> list[str]:
    """'name: message' of every failing test case in a cocotb results file."""
    out = []
    for case in ET.parse(results_xml).getroot().iter("testcase"):
        for fail in list(case.iter("failure")) + list(case.iter("error")):
            msg = (fail.get("message") or fail.text or "").strip()
            out.append(f"{case.get('name')}: {msg}")
    return out


def run(
    *,
    module: str,
    top: str,
    config: str,
    block: str,
    sources: list[Path],
    testcase: str | list[str] | None = None,
    seed: int | None = None,
    extra_env: dict[str, str] | None = None,
    record_property: Callable[[str, object], None] | None = None,
    cfg=None,
    sim: str | None = None,
) -> Path:
    """Run cocotb tests of ``module`` (a module in this folder) on the built ``top``.

    Returns the run directory. Raises ``AssertionError`` naming each failed cocotb test.
    """
    from cocotb_tools.runner import get_runner

    sim = simulator(sim)
    bdir = build_dir(config, block, sim)
    build(sources, top, bdir, sim)
    seed = new_seed() if seed is None else seed
    test_name = os.environ.get("PYTEST_CURRENT_TEST", module).rsplit(":", 1)[-1].split(" ")[0]
    rdir = bdir / "runs" / _safe(test_name)
    if rdir.exists():
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True)
    if record_property is not None:
        record_property("seed", seed)
        record_property("simulator", sim)
        record_property("config", config)
        record_property("run_dir", str(rdir))
    print(f"[{module}] sim={sim} config={config} seed={seed} run_dir={rdir} (rerun: DLU_SEED={seed})")
    env = {
        "DLU_SEED": str(seed),
        "DLU_CONFIG": config,
        **({"DLU_CONFIG_FIELDS": json.dumps(cfg.to_dict())} if cfg is not None else {}),
        "DLU_FCOV_FILE": str(rdir / "fcov.yml"),
        "PYTHONPATH": os.pathsep.join([str(TB_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **_env_path(sim),
        **(extra_env or {}),
    }
    plusargs = []
    if coverage_enabled(sim):
        plusargs.append(f"+verilator+coverage+file+{rdir / 'coverage.dat'}")
    runner = get_runner(sim)
    results = rdir / "results.xml"
    try:
        runner.test(
            test_module=module,
            hdl_toplevel=top,
            hdl_toplevel_lang="verilog",
            build_dir=str(bdir / "sim"),
            test_dir=str(rdir),
            testcase=testcase,
            seed=seed,
            extra_env=env,
            plusargs=plusargs,
            waves=waves(),
            results_xml=str(results),
            timescale=("1ns", "1ps") if sim == "icarus" else None,
            log_file=str(rdir / "sim.log"),
        )
    except SystemExit as exc:
        fails = failed_tests(results) if results.exists() else []
        detail = "\n".join(fails) or f"simulator exited with {exc.code}; see {rdir / 'sim.log'}"
        raise AssertionError(
            f"{len(fails)} cocotb test(s) failed (seed {seed}, rerun with DLU_SEED={seed}; log {rdir / 'sim.log'}):\n"
            f"{detail}"
        ) from None
    if not results.exists():
        raise AssertionError(f"no results file from the simulator; see {rdir / 'sim.log'}")
    fails = failed_tests(results)
    assert not fails, f"seed {seed}: " + "\n".join(fails)
    cases = list(ET.parse(results).getroot().iter("testcase"))
    assert cases, f"no cocotb test ran (filter {testcase!r}); see {rdir / 'sim.log'}"
    return rdir


def require(module_name: str, attr: str):
    """``module.attr`` from ``hw/``, or skip the test when that block has not landed yet."""
    import pytest

    try:
        mod = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name)):
            pytest.skip(f"{module_name} does not exist yet")
        raise
    if not hasattr(mod, attr):
        pytest.skip(f"{module_name}.{attr} does not exist yet")
    return getattr(mod, attr)


def python() -> str:
    return sys.executable
