"""A K-split MATMUL of any K on the Verilated core through the RTL engine, checked against the golden model.

``python -m sim.ksplit_rtl [--config default] [--k 96800] [--m 2] [--n V] [--seed 0]`` builds the core
(:func:`sim.rtl_engine.build_core`, cached), runs ``a[M, K] @ b[K, N]`` (8-bit, stochastic rounding)
as LOADs of one bank of ``b`` rows and the matching columns of ``a`` per chunk and START, CONTINUE...,
FINISH (:class:`reference.isa.Accumulate`), STOREs the result, reads the destination's database
entry and the generator states, and compares them with the golden conversion of the exact,
unsplit integer product (numpy int64, :func:`reference.ops.convert_acc`) and every command's
cycles with :func:`reference.isa.cycles`. Exit status 0 only if everything is identical.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from reference import ops
from reference.config import CoreConfig, load_config
from reference.formats import DfpFormat, RoundingMode, TensorSetting, Width
from reference.isa import Accumulate, Command, Ctl, cycles, tensor_words
from reference.rng import seed_states

from .rtl_engine import _Program, build_core, pack_rows, run_program, unpack_rows


def run(cfg: CoreConfig, k: int, m: int = 2, n: int | None = None, seed: int = 0, log=print) -> dict:
    """Run the product on the RTL; returns a summary (raises AssertionError at the first difference)."""
    w = Width.W8
    v = cfg.values_per_beat(w)
    n = v if n is None else n
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, size=(m, k))
    b = rng.integers(-128, 128, size=(k, n))
    a[0, : k // 2] = -128  # half of row 0 at the largest product, 2**14: the sum nears 2**31 at K ~ 96,800
    b[: k // 2, :] = -128
    fa, fb, fd = DfpFormat(w, 4), DfpFormat(w, 3), DfpFormat(w, -25)
    settings = {0: TensorSetting(fa, RoundingMode.NEAREST_EVEN, False), 1: TensorSetting(fb, RoundingMode.NEAREST_EVEN,
                                                                                       False),
                2: TensorSetting(fd, RoundingMode.STOCHASTIC, True)}
    from reference.engine import Engine

    prog = _Program(seed=seed, threshold=Engine(cfg).threshold)  # the reset value of THRESHOLD
    for tid, s in settings.items():
        prog.steps.append({"op": "setting", "tid": tid, "word": s.encode()})
    sw = cfg.spad_words
    cuts = list(range(0, k, sw)) + [k]
    expect = []

    def cmd(c: Command, key: str, load: np.ndarray | None = None, store: int = 0, db: int | None = None) -> None:
        step = {"op": "cmd", "i": key, "words": [int(x) for x in c.encode()], "expect": cycles(c, settings, cfg),
                "load": None, "store": store, "db": db}
        if load is not None:
            prog.payloads[f"p{key}"] = load
            step["load"] = f"p{key}"
        prog.steps.append(step)
        expect.append((key, step["expect"]))

    cmd(Command(Ctl.CLEAR_STATS, broadcast_b=True), "clear")
    for j, (k0, k1) in enumerate(zip(cuts, cuts[1:], strict=False)):
        pa, pb = pack_rows(a[:, k0:k1], w, cfg), pack_rows(b[k0:k1], w, cfg)
        cmd(Command(Ctl.LOAD, addr_d=0, k=len(pa)), f"la{j}", pa)
        cmd(Command(Ctl.LOAD, addr_d=sw, k=len(pb)), f"lb{j}", pb)
        mode = Accumulate.START if j == 0 else Accumulate.FINISH if k1 == k else Accumulate.CONTINUE
        cmd(Command(0, tid_d=2, tid_a=0, tid_b=1, addr_a=0, addr_b=sw, addr_d=2 * sw, m=m, n=n, k=k1 - k0,
                    accumulate=mode), f"mm{j}", db=2 if mode == Accumulate.FINISH else None)
    words = tensor_words(m, n, fd, cfg)
    cmd(Command(Ctl.STORE, addr_a=2 * sw, k=words), "st", store=words)
    prog.steps.append({"op": "rng_read", "key": "rng", "n": cfg.rng_slots})
    log(f"ksplit_rtl: K = {k} in {len(cuts) - 1} chunks, {len(expect)} commands; building/running the core ...")
    bdir, man = build_core(cfg, log=log)
    res, tm = run_program(prog, bdir, man)
    for key, want in expect:
        took, err = (int(x) for x in res[f"c{key}"])
        assert err == 0, f"command {key}: STATUS.error {err}"
        assert took == want, f"command {key}: RTL took {took} cycles, reference.isa.cycles says {want}"
    exact = a.astype(np.int64) @ b.astype(np.int64)
    assert int(np.abs(exact).max()) < 1 << 31
    golden = ops.convert_acc(exact, fa.frac + fb.frac, 32, fd, RoundingMode.STOCHASTIC, cfg,
                             seed_states(seed, cfg.rng_slots), w)
    got = unpack_rows(res["sst"], m, n, w, cfg)
    assert np.array_equal(got, golden.out.data), "result differs from the unsplit golden product"
    h = cfg.hist_bins
    entry = res[f"d{'mm' + str(len(cuts) - 2)}"]
    st = golden.stats
    assert entry[:h].tolist() == st.hist.tolist() and entry[h:h + 4].tolist() == \
        [st.zeros, st.overflow, st.underflow, st.total], f"database entry {entry.tolist()} != {st.as_dict()}"
    assert res["rng"].tolist() == [int(x) for x in golden.rng], "generator states differ"
    return {"k": k, "chunks": len(cuts) - 1, "commands": len(expect), "cycles": int(tm.get("cycles", 0)),
            "max_abs_sum": int(np.abs(exact).max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.ksplit_rtl", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="default")
    p.add_argument("--k", type=int, default=96_800)
    p.add_argument("--m", type=int, default=2)
    p.add_argument("--n", type=int)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        out = run(load_config(args.config), args.k, args.m, args.n, args.seed, log=lambda s: print(s, file=sys.stderr))
    except AssertionError as exc:
        print(f"ksplit_rtl: MISMATCH: {exc}", file=sys.stderr)
        return 1
    print(f"ksplit_rtl: K = {out['k']} in {out['chunks']} chunks ({out['commands']} commands, {out['cycles']:,} "
          f"cycles, largest |sum| {out['max_abs_sum']:,}): result, statistics, generator states and every "
          "command's cycles identical to the golden model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
