"""PyTorch side of the side-by-side speed benchmark (issue 13): one training run, one thread.

Runs under the Python 3.11 venv ``.venv-torch`` that ``make bench-torch`` creates (torch and qtorch
pinned in ``bench/requirements-torch.txt``); it imports nothing from the project, so it needs none
of the project's dependencies. :mod:`bench.torch_side_by_side` (project venv) exports the data and
the network description and calls it once per run::

    .venv-torch/bin/python bench/torch_worker.py --data DATA.npz --net NET.json --mode fp32 \
        --epochs 8 --batch 32 --lr 0.05 --momentum 0.9 --weight-decay 1e-4 --seed 0 --out RUN.json

It trains the network of ``NET.json`` (a :mod:`reference.nets` network file, the same file the
golden model trains) on the arrays of ``DATA.npz`` (``x_* [N, H, W, C]`` float, ``y_*`` int; the
same file the golden model reads through its ``npz:`` loader) exactly as ``dlu train`` does:
He-normal weights (std ``sqrt(2 / fan_in)``), zero biases, SGD with momentum and weight decay on
every parameter (``torch.optim.SGD`` computes ``v = m v + (g + wd w)``, ``w -= lr v``, the golden
model's :func:`reference.layers.sgd_step`), learning rate cosine per epoch
``lr (1 + cos(pi e / E)) / 2``, mean softmax cross-entropy, a fresh shuffle per epoch, the last
partial batch dropped. The random streams differ from the golden model's (torch's generator), so
accuracies pair up only in distribution, not per seed.

Modes
-----
``fp32``
    Plain PyTorch on the CPU.
``qtorch16``, ``qtorch8``
    QPyTorch (``qtorch``) fixed point of that word length: a ``Quantizer`` after the input and
    after every layer rounds activations (forward, nearest) and errors (backward, nearest); the
    ``OptimLP`` wrapper rounds gradients and momenta (nearest) and the updated weights
    (stochastic). QPyTorch's fixed point is static: each tensor class has the one point position
    of :data:`FIXED_FRAC` for the whole run (the golden model's dynamic point positions are what
    it lacks). The quantizers run QPyTorch's compiled C++ CPU kernels.

Times are CPU seconds (``time.process_time``) of each epoch's training steps, evaluation
excluded, as in the golden model's ``metrics.json``; ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

MODES = ("fp32", "qtorch16", "qtorch8")

#: Fraction bits of QPyTorch's fixed point per word length and tensor class (word length - 1 -
#: fraction bits integer bits: 16-bit weights span +-4 in steps of 2**-13). Chosen from the ranges
#: these networks' tensors take on digits data: weights |w| < 2, activations < 16-64, errors and
#: gradients < 1/32.
FIXED_FRAC: dict[int, dict[str, int]] = {
    16: {"weight": 13, "activation": 10, "error": 14, "grad": 14, "momentum": 13},
    8: {"weight": 6, "activation": 4, "error": 10, "grad": 9, "momentum": 7},
}

SUPPORTED_LAYERS = ("conv", "linear", "relu", "maxpool", "avgpool", "flatten", "dropout", "softmax_ce")


class WorkerError(ValueError):
    """Bad input to the worker (one line names the problem)."""


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """``x_train``/``x_test`` as float32 ``[N, C, H, W]``, labels as int64, from an exported ``.npz``.

    Raises
    ------
    WorkerError
        A missing array or a shape other than ``[N, H, W, C]`` / ``[N]``.
    """
    p = Path(path)
    if not p.is_file():
        raise WorkerError(f"data: {p} does not exist")
    with np.load(p, allow_pickle=False) as z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise WorkerError(f"data: {p}: missing array(s) {missing}")
        out = {}
        for part in ("train", "test"):
            x, y = z[f"x_{part}"], z[f"y_{part}"]
            if x.ndim != 4 or y.shape != (x.shape[0],):
                raise WorkerError(f"data: {p}: x_{part} {x.shape}, y_{part} {y.shape}; expected [N, H, W, C] and [N]")
            out[f"x_{part}"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
            out[f"y_{part}"] = y.astype(np.int64)
    return out


def layer_plan(net: dict) -> list[tuple[str, dict[str, int | float]]]:
    """The PyTorch layers of a network file's content: ``(kind, constructor arguments)``, shapes resolved.

    A linear layer on a ``[C, H, W]`` input gets an explicit ``flatten`` before it. The loss
    (``softmax_ce``) adds no layer.

    Raises
    ------
    WorkerError
        A layer type this worker does not build (``lrn``, ``add``, ``batchnorm``).
    """
    shape = tuple(int(v) for v in net["input"])
    plan: list[tuple[str, dict[str, int | float]]] = []
    for layer in net["layers"]:
        kind = layer["type"]
        if kind not in SUPPORTED_LAYERS:
            raise WorkerError(f"net {net.get('name', '?')!r}: layer {layer.get('name', '?')!r} of type {kind!r} is "
                              f"not built on the PyTorch side (supported: {', '.join(SUPPORTED_LAYERS)})")
        if kind == "conv":
            c, h, w = shape
            k, s, pad, g = layer["kernel"], layer.get("stride", 1), layer.get("pad", 0), layer.get("groups", 1)
            oc = layer["out_channels"]
            plan.append(("conv", {"in_channels": c, "out_channels": oc, "kernel_size": k, "stride": s,
                                  "padding": pad, "groups": g}))
            shape = (oc, (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1)
        elif kind in ("maxpool", "avgpool"):
            c, h, w = shape
            k, pad = layer["kernel"], layer.get("pad", 0)
            s = layer.get("stride") or k
            plan.append((kind, {"kernel_size": k, "stride": s, "padding": pad}))
            shape = (c, (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1)
        elif kind == "flatten":
            if len(shape) > 1:
                plan.append(("flatten", {}))
                shape = (math.prod(shape),)
        elif kind == "linear":
            if len(shape) > 1:
                plan.append(("flatten", {}))
                shape = (math.prod(shape),)
            plan.append(("linear", {"in_features": shape[0], "out_features": layer["out_features"]}))
            shape = (layer["out_features"],)
        elif kind == "relu":
            plan.append(("relu", {}))
        elif kind == "dropout":
            plan.append(("dropout", {"p": float(layer.get("p", 0.5))}))
    return plan


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """The golden model's cosine schedule (:class:`reference.train.LrSchedule`): ``lr (1 + cos(pi e / E)) / 2``."""
    return float(lr * 0.5 * (1.0 + np.cos(np.pi * epoch / epochs)))


def _build(plan: list[tuple[str, dict]], mode: str, gen: object):  # -> torch.nn.Module
    import torch
    from torch import nn

    ctor = {"conv": nn.Conv2d, "linear": nn.Linear, "relu": nn.ReLU, "maxpool": nn.MaxPool2d,
            "avgpool": lambda **kw: nn.AvgPool2d(count_include_pad=True, **kw), "flatten": nn.Flatten,
            "dropout": nn.Dropout}
    quant = None
    if mode != "fp32":
        from qtorch import FixedPoint
        from qtorch.quant import Quantizer

        wl = int(mode.removeprefix("qtorch"))
        fr = FIXED_FRAC[wl]

        def quant() -> nn.Module:
            return Quantizer(forward_number=FixedPoint(wl=wl, fl=fr["activation"]),
                             backward_number=FixedPoint(wl=wl, fl=fr["error"]),
                             forward_rounding="nearest", backward_rounding="nearest")

    mods: list[nn.Module] = [quant()] if quant else []
    for kind, kw in plan:
        m = ctor[kind](**kw)
        if kind in ("conv", "linear"):
            fan_in = m.weight[0].numel()  # in/groups * k * k, or in_features
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                m.bias.zero_()
        mods.append(m)
        if quant and kind != "flatten":
            mods.append(quant())
    return nn.Sequential(*mods)


def run(data: dict[str, np.ndarray], net: dict, mode: str, epochs: int, batch: int, lr: float, momentum: float,
        weight_decay: float, seed: int) -> dict:
    """Train and evaluate; returns the run's record (epochs with CPU and wall seconds, final test accuracy)."""
    import torch

    if mode not in MODES:
        raise WorkerError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _build(layer_plan(net), mode, gen)
    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    opt = sgd
    if mode != "fp32":
        from qtorch import FixedPoint
        from qtorch.optim import OptimLP
        from qtorch.quant import quantizer

        wl = int(mode.removeprefix("qtorch"))
        fr = FIXED_FRAC[wl]
        opt = OptimLP(sgd,
                      weight_quant=quantizer(forward_number=FixedPoint(wl=wl, fl=fr["weight"]),
                                             forward_rounding="stochastic"),
                      grad_quant=quantizer(forward_number=FixedPoint(wl=wl, fl=fr["grad"]),
                                           forward_rounding="nearest"),
                      momentum_quant=quantizer(forward_number=FixedPoint(wl=wl, fl=fr["momentum"]),
                                               forward_rounding="nearest"))
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    n = len(x)
    if n < batch:
        raise WorkerError(f"batch {batch} exceeds the {n} training images")
    steps = n // batch
    loss_fn = torch.nn.CrossEntropyLoss()
    records = []
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for group in sgd.param_groups:
            group["lr"] = cosine_lr(lr, ep, epochs)
        model.train()
        loss_sum, correct = 0.0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        for st in range(steps):
            idx = perm[st * batch:(st + 1) * batch]
            xb, yb = x[idx], y[idx]
            opt.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            correct += int((logits.argmax(1) == yb).sum())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not math.isfinite(loss_sum):
            raise WorkerError(f"{mode}: loss became {loss_sum} in epoch {ep + 1}")
        records.append({"epoch": ep + 1, "loss": loss_sum / steps, "train_acc": correct / (steps * batch),
                        "time_s": wall, "cpu_s": cpu})
    model.eval()
    xt, yt = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    right = 0
    with torch.no_grad():
        for i in range(0, len(xt), 512):
            right += int((model(xt[i:i + 512]).argmax(1) == yt[i:i + 512]).sum())
    from importlib.metadata import version

    return {"side": "pytorch", "mode": mode, "epochs": records, "test_acc": right / len(xt),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "qtorch": version("qtorch") if mode != "fp32" else None,
            "fixed_frac": FIXED_FRAC.get(int(mode.removeprefix("qtorch"))) if mode != "fp32" else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, metavar="NPZ")
    ap.add_argument("--net", required=True, metavar="NET.json")
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--momentum", type=float, required=True)
    ap.add_argument("--weight-decay", type=float, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True, metavar="JSON")
    a = ap.parse_args(argv)
    try:
        net = json.loads(Path(a.net).read_text(encoding="utf-8"))
        rec = run(load_arrays(a.data), net, a.mode, a.epochs, a.batch, a.lr, a.momentum, a.weight_decay, a.seed)
    except (WorkerError, OSError, json.JSONDecodeError, KeyError) as exc:
        print(f"torch_worker: {exc}", file=sys.stderr)
        return 2
    tmp = f"{a.out}.tmp-{os.getpid()}"
    Path(tmp).write_text(json.dumps(rec, indent=1))
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
