"""Golden model and PyTorch side by side, one thread each (issue 13's speed target).

Run with the project venv (``make bench-torch`` does)::

    .venv/bin/python -m bench.torch_side_by_side [--torch-python .venv-torch/bin/python] [--seeds 1]

For each benchmark of :data:`BENCHES` (LeNet-5 on ``digits28``, the digits CNN ``cnn`` on
``digits``) it

1. exports the golden model's data set (:func:`reference.data.load_dataset`) to
   ``OUT_DIR/DATA.npz`` (``x_* [N, H, W, C]`` float64, ``y_*`` int64) and the network
   (:func:`reference.nets.net_for_data`) to ``OUT_DIR/NET.json``: the golden model reads both
   through ``dlu train --data npz:FILE --net FILE``, the PyTorch worker
   (``bench/torch_worker.py``, Python 3.11 venv) reads the same two files;
2. trains, interleaved per seed so that both sides see the same machine load: golden fp32,
   PyTorch fp32, golden dfp16, QPyTorch 16-bit fixed point, golden dfp8, QPyTorch 8-bit, golden
   dfp32, with the same batch, epochs and SGD settings (lr cosine, momentum, weight decay);
3. writes a markdown table (``--out``, default ``build/bench/torch.md``): median CPU seconds per
   epoch (``time.process_time`` of the training steps, evaluation excluded, both sides), the
   wall time beside it, final test accuracy, and the three ratios of the target.

Every process runs with one thread: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` are 1 in the children's environment; the golden
model also limits BLAS to one thread itself (``threadpoolctl``, :func:`reference.train.train`) and
its numba kernels are serial; the worker calls ``torch.set_num_threads(1)``.

If the PyTorch interpreter is missing or cannot import torch and qtorch, the script prints one
line saying so and exits 0 without writing a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "torch_worker.py"

#: (network, data set, epochs): the settings of docs/training.md's benchmarks.
BENCHES: tuple[tuple[str, str, int], ...] = (("lenet5", "digits28", 8), ("cnn", "digits", 15))

#: Run order within one seed: each golden mode next to its PyTorch counterpart.
SCHEDULE: tuple[tuple[str, str], ...] = (
    ("golden", "fp32"), ("pytorch", "fp32"),
    ("golden", "dfp16"), ("pytorch", "qtorch16"),
    ("golden", "dfp8"), ("pytorch", "qtorch8"),
    ("golden", "dfp32"),
)

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


class BenchError(RuntimeError):
    """A run failed; the message names it and carries its last error line."""


def export_data(data_spec: str, net_name: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the golden model's data set ``data_spec`` and network ``net_name`` (built for that data).

    Returns ``(DATA.npz, NET.json)``. Images go out as float64 ``[N, H, W, C]`` exactly as the
    loader returns them, so ``npz:DATA.npz`` loads back the identical arrays; the network file is
    :meth:`reference.nets.Net.to_dict` of :func:`reference.nets.net_for_data`. Both are written
    atomically.
    """
    from reference.data import load_dataset
    from reference.nets import net_for_data
    from reference.outputs import atomic_write, atomic_write_text

    d = load_dataset(data_spec)
    h, w, c = d.image_hwc
    out = Path(out_dir)
    npz = out / f"{data_spec}.npz"
    arrays = {"x_train": d.x_train.reshape(-1, h, w, c), "y_train": d.y_train,
              "x_test": d.x_test.reshape(-1, h, w, c), "y_test": d.y_test}

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(npz, save)
    net = net_for_data(net_name, (c, h, w), d.classes)
    net_file = out / f"{net_name}-{data_spec}.json"
    atomic_write_text(net_file, json.dumps(net.to_dict(), indent=1) + "\n")
    return npz, net_file


@dataclass
class Cell:
    """The runs of one (side, mode) of one benchmark: CPU and wall seconds of every epoch, final accuracies."""

    side: str
    mode: str
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)

    def add(self, epochs: Sequence[dict], test_acc: float) -> None:
        self.cpu += [float(e["cpu_s"]) for e in epochs]
        self.wall += [float(e["time_s"]) for e in epochs]
        self.accs.append(float(test_acc))

    @property
    def cpu_s(self) -> float:
        """Median CPU seconds per epoch."""
        return statistics.median(self.cpu)

    @property
    def wall_s(self) -> float:
        return statistics.median(self.wall)


LABELS = {("golden", "fp32"): "golden fp32", ("golden", "dfp32"): "golden dfp32",
          ("golden", "dfp16"): "golden dfp16", ("golden", "dfp8"): "golden dfp8",
          ("pytorch", "fp32"): "PyTorch fp32", ("pytorch", "qtorch16"): "QPyTorch fixed 16",
          ("pytorch", "qtorch8"): "QPyTorch fixed 8"}

#: (description, numerator cell, denominator cell, limit): issue 13's speed targets as CPU-time ratios.
TARGETS: tuple[tuple[str, tuple[str, str], tuple[str, str], float], ...] = (
    ("golden fp32 / PyTorch fp32", ("golden", "fp32"), ("pytorch", "fp32"), 1.5),
    ("golden dfp8 / QPyTorch fixed 8", ("golden", "dfp8"), ("pytorch", "qtorch8"), 1.0),
    ("golden dfp16 / QPyTorch fixed 16 (no target; for reference)", ("golden", "dfp16"), ("pytorch", "qtorch16"), 0.0),
    ("golden dfp32 / golden fp32", ("golden", "dfp32"), ("golden", "fp32"), 3.0),
    ("golden dfp16 / golden fp32", ("golden", "dfp16"), ("golden", "fp32"), 3.0),
    ("golden dfp8 / golden fp32", ("golden", "dfp8"), ("golden", "fp32"), 3.0),
)


def format_markdown(title: str, cells: dict[tuple[str, str], Cell]) -> str:
    """One benchmark's table (one row per cell, in :data:`SCHEDULE` order) and its target ratios.

    A ratio whose cells are missing is left out; a target line says ``met`` when the CPU-time
    ratio is at most its limit (ratios with limit 0 are informative only).
    """
    lines = [f"### {title}", "",
             "| run | s/epoch CPU (median) | s/epoch wall (median) | test accuracy % (per seed) |",
             "|---|---|---|---|"]
    for key in SCHEDULE:
        c = cells.get(key)
        if c is None or not c.cpu:
            continue
        accs = ", ".join(f"{100 * a:.2f}" for a in c.accs)
        lines.append(f"| {LABELS[key]} | {c.cpu_s:.3f} | {c.wall_s:.3f} | {accs} |")
    lines += ["", "| CPU-time ratio | value | target | |", "|---|---|---|---|"]
    for desc, num, den, limit in TARGETS:
        a, b = cells.get(num), cells.get(den)
        if a is None or b is None or not a.cpu or not b.cpu:
            continue
        r = a.cpu_s / b.cpu_s
        if limit:
            verdict = "met" if r <= limit else "NOT met"
            lines.append(f"| {desc} | {r:.2f}x | <= {limit:g}x | {verdict} |")
        else:
            lines.append(f"| {desc} | {r:.2f}x | | |")
    return "\n".join(lines) + "\n"


def child_env() -> dict[str, str]:
    """The environment of every run: this one with one thread for OpenMP, MKL, OpenBLAS and numba."""
    return {**os.environ, **ONE_THREAD}


def torch_available(python: str | Path) -> str | None:
    """``None`` if ``python`` imports torch and qtorch (compiling qtorch's extension on first use), else why not."""
    if not Path(python).exists():
        return f"{python} does not exist (make bench-torch creates it from Python 3.11 and the torch wheel)"
    probe = ("import torch, qtorch.quant; "
             "qtorch.quant.fixed_point_quantize(torch.zeros(1), 8, 4, rounding='nearest')")
    r = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=child_env())
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{python} cannot import torch and qtorch: {last}"
    return None


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no message"])[-1]
        raise BenchError(f"{what} failed (exit {r.returncode}): {last}")


def run_golden(npz: Path, net: Path, mode: str, epochs: int, seed: int, work: Path, sgd: dict[str, float],
               dlu: str) -> dict:
    """``dlu train`` on the exported files; returns its metrics.json."""
    name = f"golden-{net.stem}-{mode}-s{seed}"
    _run([dlu, "train", "--net", str(net), "--data", f"npz:{npz}", "--precision", mode, "--epochs", str(epochs),
          "--batch", str(int(sgd["batch"])), "--lr", str(sgd["lr"]), "--momentum", str(sgd["momentum"]),
          "--weight-decay", str(sgd["weight_decay"]), "--seed", str(seed), "--out", str(work), "--name", name,
          "--force", "--quiet", "--no-plots"], f"golden {net.stem} {mode} seed {seed}")
    m = json.loads((work / name / "metrics.json").read_text())
    return {"epochs": m["epochs"], "test_acc": m["final"]["test_acc"]}


def run_torch(python: str, npz: Path, net: Path, mode: str, epochs: int, seed: int, work: Path,
              sgd: dict[str, float]) -> dict:
    """``bench/torch_worker.py`` on the exported files; returns its record."""
    out = work / f"pytorch-{net.stem}-{mode}-s{seed}.json"
    _run([python, str(WORKER), "--data", str(npz), "--net", str(net), "--mode", mode, "--epochs", str(epochs),
          "--batch", str(int(sgd["batch"])), "--lr", str(sgd["lr"]), "--momentum", str(sgd["momentum"]),
          "--weight-decay", str(sgd["weight_decay"]), "--seed", str(seed), "--out", str(out)],
         f"pytorch {net.stem} {mode} seed {seed}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-python", default=str(ROOT / ".venv-torch" / "bin" / "python"))
    ap.add_argument("--dlu", default=str(Path(sys.executable).with_name("dlu")), help="the golden model's CLI")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per run (default 1)")
    ap.add_argument("--nets", default=",".join(n for n, _, _ in BENCHES),
                    help=f"comma-separated subset of {', '.join(n for n, _, _ in BENCHES)}")
    ap.add_argument("--epochs", type=int, default=None, help="override every benchmark's epochs (quick checks)")
    ap.add_argument("--data-dir", default=str(ROOT / "build" / "bench" / "torch"))
    ap.add_argument("--out", default=str(ROOT / "build" / "bench" / "torch.md"))
    a = ap.parse_args(argv)
    why = torch_available(a.torch_python)
    if why is not None:
        print(f"PyTorch side-by-side skipped: {why}")
        return 0
    wanted = a.nets.split(",")
    unknown = sorted(set(wanted) - {n for n, _, _ in BENCHES})
    if unknown or a.seeds < 1 or (a.epochs is not None and a.epochs < 1):
        print(f"torch_side_by_side: bad --nets {unknown} / --seeds / --epochs", file=sys.stderr)
        return 2
    sgd = {"batch": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
    parts = []
    try:
        for net_name, data_spec, epochs in BENCHES:
            if net_name not in wanted:
                continue
            epochs = a.epochs or epochs
            npz, net = export_data(data_spec, net_name, a.data_dir)
            cells: dict[tuple[str, str], Cell] = {k: Cell(*k) for k in SCHEDULE}
            with tempfile.TemporaryDirectory(prefix="torch-bench-", dir=a.data_dir) as tmp:
                for seed in range(a.seeds):
                    for side, mode in SCHEDULE:
                        if side == "golden":
                            rec = run_golden(npz, net, mode, epochs, seed, Path(tmp), sgd, a.dlu)
                        else:
                            rec = run_torch(a.torch_python, npz, net, mode, epochs, seed, Path(tmp), sgd)
                        cells[(side, mode)].add(rec["epochs"], rec["test_acc"])
                        print(f"{net_name} {LABELS[(side, mode)]} seed {seed}: "
                              f"{statistics.median(e['cpu_s'] for e in rec['epochs']):.3f} s CPU/epoch, "
                              f"test {100 * rec['test_acc']:.2f} %", flush=True)
            title = (f"{net_name} on {data_spec}: {epochs} epochs, batch {sgd['batch']}, lr {sgd['lr']} cosine, "
                     f"momentum {sgd['momentum']}, weight decay {sgd['weight_decay']}, seeds 0-{a.seeds - 1}")
            parts.append(format_markdown(title, cells))
    except BenchError as exc:
        print(f"torch_side_by_side: {exc}", file=sys.stderr)
        return 1
    from reference.outputs import atomic_write_text

    cmd = " ".join([".venv/bin/python -m bench.torch_side_by_side", *(sys.argv[1:] if argv is None else argv)])
    text = (f"## Golden model and PyTorch side by side (one thread each)\n\n`{cmd}`; CPU seconds of each epoch's "
            f"training steps (process time), median over epochs and seeds.\n\n" + "\n".join(parts))
    atomic_write_text(a.out, text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
