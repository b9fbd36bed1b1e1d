"""Measure data-parallel training here: wall time per step with 1, 2, 4 ranks, with and without overlap.

``python -m reference.parallel_bench [--workers 1,2,4] [--repeats 3] [--epochs 1] [--out FILE]``
runs ``dlu train --workers N`` (CNN, dfp16, digits) with and without ``--no-overlap``, the
configurations interleaved and repeated so that a change in the machine's load affects all of
them alike, and prints a markdown table of medians over every step of every repeat:

- step: wall time of a training step (forward, backward, exchange, update);
- waiting: time blocked in any MPI wait (exchanges, the logits gather, statistics, barrier);
- gradient wait: time blocked in gradient exchanges only. Without overlap the exchange follows
  a barrier, so this is the exchange itself; with overlap it is the part the computation did
  not hide. ``hidden = 1 - overlap / no-overlap`` of the gradient wait.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .outputs import atomic_write_text


def run_matrix(workers: list[int], repeats: int, epochs: int, model: str, precision: str,
               extra: list[str]) -> dict[tuple[int, bool], dict[str, list[float]]]:
    dlu = str(Path(sys.executable).parent / "dlu")
    out: dict[tuple[int, bool], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="parallel-bench-") as tmp:
        for rep in range(repeats):
            for n in workers:
                for overlap in (True, False):
                    name = f"w{n}-{'ov' if overlap else 'no'}-{rep}"
                    cmd = [dlu, "train", "--workers", str(n), "--model", model, "--precision", precision,
                           "--epochs", str(epochs), "--quiet", "--no-plots", "--out", tmp, "--name", name, *extra]
                    if not overlap:
                        cmd.append("--no-overlap")
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    m = json.loads((Path(tmp) / name / "metrics.json").read_text())
                    d = out.setdefault((n, overlap), {"step": [], "wait": [], "grad": [], "bytes": []})
                    d["step"] += m["step_times_s"]
                    d["wait"] += m["wait_times_s"]
                    d["grad"] += m["gradient_wait_times_s"]
                    d["bytes"].append(m["gradient_bytes_per_step"])
    return out


def table(res: dict[tuple[int, bool], dict[str, list[float]]], workers: list[int]) -> str:
    lines = ["| ranks | overlap | step (ms) | waiting (ms) | gradient wait (ms) | gradient bytes/step "
             "| step no-overlap / overlap | gradient wait hidden |",
             "|---|---|---|---|---|---|---|---|"]
    for n in workers:
        med = {ov: {k: float(np.median(v)) for k, v in res[(n, ov)].items()} for ov in (True, False)}
        for ov in (True, False):
            m = med[ov]
            ratio = hidden = ""
            if ov:
                ratio = f"{med[False]['step'] / m['step']:.2f}x"
                g_no = med[False]["grad"]
                hidden = f"{100 * (1 - m['grad'] / g_no):.0f}%" if n > 1 and g_no > 0 else "-"
            lines.append(f"| {n} | {'yes' if ov else 'no'} | {1e3 * m['step']:.2f} | {1e3 * m['wait']:.2f} | "
                         f"{1e3 * m['grad']:.3f} | {int(m['bytes'])} | {ratio} | {hidden} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.parallel_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--model", default="cnn")
    p.add_argument("--precision", default="dfp16")
    p.add_argument("--out", default=None, help="also write the table here")
    args, extra = p.parse_known_args(argv)
    try:
        workers = [int(v) for v in args.workers.split(",")]
    except ValueError:
        p.error(f"--workers {args.workers!r}: comma-separated integers")
    if args.repeats < 1 or args.epochs < 1 or any(n < 1 for n in workers):
        p.error("--repeats, --epochs and every worker count must be >= 1")
    res = run_matrix(workers, args.repeats, args.epochs, args.model, args.precision, extra)
    load = os.getloadavg()
    md = (f"{args.model} {args.precision} on digits, {args.repeats} repeat(s) x {args.epochs} epoch(s), "
          f"{os.cpu_count()} CPUs, load average after the runs {load[0]:.1f}\n\n" + table(res, workers))
    print(md)
    if args.out:
        path = Path(args.out)
        atomic_write_text(path, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
