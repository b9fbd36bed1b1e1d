"""docs/examples/host_example.c, the programming guide's C host program, on the generated core.

``dlu gen`` writes the tiny core; gcc compiles the example against the generated ``dlu_regs.h``
(``-std=c99 -Wall -Wextra -Werror -pedantic``); Verilator builds the generated folder (its
``files.f``, with ``-Wall``) with ``docs/examples/verilator_shim.cpp``, the AXI4-Lite/AXI4-Stream
shim behind ``dlu_host.h``, and links the example. Its printed results are compared as exact
integers with :class:`testbenches.cocotb.core_model.CoreModel` (built only from ``reference/``)
running the same commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from reference.config import PRESETS
from rtl_gen.generate import generate
from rtl_gen.lint import verilator_path

EX = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.mark.slow
def test_c_host_example_matches_the_golden_model(tmp_path):
    from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
    from reference.isa import Command, Ctl, ErrorCode, macs
    from reference.ops import Op
    from testbenches.cocotb.core_model import CoreModel

    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed to build the C example")
    cfg = PRESETS["tiny"]
    gen = tmp_path / "gen"
    generate(cfg, gen)
    obj = tmp_path / "host_example.o"
    cc = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{gen}", f"-I{EX}", "-c",
                         str(EX / "host_example.c"), "-o", str(obj)], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    vbin = verilator_path()
    env = dict(os.environ, PATH=f"{vbin.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    mdir = tmp_path / "obj"
    build = subprocess.run([str(vbin), "--cc", "--exe", "--build", "-Wall", "-O1", "-j", "1", "--top-module",
                            "dlu_core", "-Mdir", str(mdir), "-CFLAGS", f"-I{gen} -I{EX}", "-F", str(gen / "files.f"),
                            str(EX / "verilator_shim.cpp"), str(obj), "-o", "host_example"],
                           capture_output=True, text=True, env=env, timeout=1800)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    run = subprocess.run([str(mdir / "host_example")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout

    # The same program on the golden model: the inputs the example prints, its settings and addresses.
    a = [[0] * 3 for _ in range(2)]
    b = [[0] * 4 for _ in range(3)]
    for name, r, c, v in re.findall(r"^([AB]) (\d+) (\d+) (-?\d+)$", out, re.M):
        (a if name == "A" else b)[int(r)][int(c)] = int(v)
    model = CoreModel(cfg)
    for tid, frac in ((0, 4), (1, 5), (2, 3)):
        assert model.write_setting(tid, TensorSetting(DfpFormat(Width.W8, frac), RoundingMode.NEAREST_EVEN).encode())
    sw = cfg.spad_words
    pa = CoreModel.pack_rows(DfpTensor(np.array(a), DfpFormat(Width.W8, 4)), cfg)
    pb = CoreModel.pack_rows(DfpTensor(np.array(b), DfpFormat(Width.W8, 5)), cfg)
    mm = Command(int(Op.MATMUL), tid_d=2, tid_a=0, tid_b=1, addr_a=0, addr_b=sw, addr_d=2 * sw, m=2, n=4, k=3)
    for cmd, words in ((Command(int(Ctl.CLEAR_STATS), broadcast_b=True), None),
                       (Command(int(Ctl.LOAD), addr_d=0, k=len(pa)), pa),
                       (Command(int(Ctl.LOAD), addr_d=sw, k=len(pb)), pb), (mm, None)):
        assert model.execute(cmd, words).error == ErrorCode.NONE
    d = model.read_tensor(2 * sw, 2, 4, DfpFormat(Width.W8, 3)).data.tolist()
    bad = model.execute(Command(int(Op.MATMUL), tid_d=2, tid_a=0, tid_b=1, addr_a=0, addr_b=sw, addr_d=8,
                                m=2, n=4, k=3))
    got_d = [[0] * 4 for _ in range(2)]
    for r, c, v in re.findall(r"^D (\d+) (\d+) (-?\d+)$", out, re.M):
        got_d[int(r)][int(c)] = int(v)
    assert got_d == d, out
    assert int(re.search(r"^TOTAL (\d+)$", out, re.M)[1]) == model.db.read(2).total == 8
    assert int(re.search(r"^MACS (\d+)$", out, re.M)[1]) == macs(mm) == 24
    assert [int(x) for x in re.findall(r"^ERROR (\d+)$", out, re.M)] == [bad.error, 0] == [ErrorCode.BANK_CONFLICT, 0]
