"""MPI worker for tests/reference/test_parallel.py: one layer's gradient exchange on N ranks.

``mpiexec -n N python tests/reference/parallel_exchange_worker.py OUT EXCHANGE SEED``: every
rank draws its own 8-bit operands (seed ``SEED + rank``) for layer fc2 of the MLP, exchanges the
weight and bias gradients, and writes its operands and results to ``OUT/rank<r>.npz``. The
gradient tensors are given 32 bits and F = F_acc, so the output conversion is exact and the
test sees the exchanged sums themselves.
"""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from reference.config import PRESETS
from reference.engine import Engine
from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
from reference.models import ModelKind, build_model
from reference.parallel import Comm, Exchange, GradExchanger, ParallelConfig, ShardDfpBackend
from reference.train import Precision, TrainConfig


def main(out: str, exchange: str, seed: int) -> None:
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    core = PRESETS["default"]
    model = build_model(ModelKind.MLP, (8, 8, 1), 10, core.tensor_ids)
    engine = Engine(core, seed)
    for info in model.ids.infos:
        engine.set_setting(info.tid, TensorSetting(DfpFormat(Width.W8, 4), RoundingMode.NEAREST_EVEN, True))
    fc2 = model.layers[2]
    for p in fc2.params():
        engine.set_setting(p.g_tid, TensorSetting(DfpFormat(Width.W32, 8 if p is fc2.weight else 4),
                                                  RoundingMode.NEAREST_EVEN, True))
    cfg = TrainConfig(model=ModelKind.MLP, precision=Precision.DFP8, seed=seed)
    ex = GradExchanger(Comm(comm, 60.0), model, cfg, ParallelConfig(exchange=Exchange(exchange), segment_elems=96),
                       engine)
    ex.be = ShardDfpBackend(engine, model.ids, ex)
    ex.update = lambda li: None  # keep the exchanged gradients
    rng = np.random.default_rng(seed + rank)
    w8 = DfpFormat(Width.W8, 4)
    x = DfpTensor(rng.integers(-128, 128, size=(64, 8)), w8)  # X^T of this rank's 8 rows
    dy = DfpTensor(rng.integers(-128, 128, size=(8, 10)), w8)
    ones = DfpTensor(np.ones((1, 8), dtype=np.int64), DfpFormat(Width.W8, 0))
    ex.hold_dfp(fc2.weight.g_tid, x, dy, ex.be)
    ex.hold_dfp(fc2.bias.g_tid, ones, dy, ex.be)
    ex.start(2)
    ex.finish(2)
    np.savez(f"{out}/rank{rank}.npz", x=x.data, dy=dy.data, w=fc2.weight.grad.t.data, b=fc2.bias.grad.t.data,
             wf=fc2.weight.grad.t.fmt.frac, bf=fc2.bias.grad.t.fmt.frac)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
