"""``dlu train --workers N``: data-parallel training on MPI (argument parsing and launching only).

:func:`register` extends the ``train`` subcommand of :mod:`reference.cli` (so it must be listed
after it in ``dlu.cli.SUBCOMMAND_MODULES``) with ``--workers`` and the exchange options; without
``--workers`` the train command is unchanged. With ``--workers N``:

- run outside MPI, it launches ``mpiexec -n N python -m reference.parallel_cli ARGS`` (the
  ``mpiexec`` beside the Python interpreter, else the one on ``PATH``) and returns its exit code;
- run inside an MPI job of N ranks (started by ``mpiexec`` or a cluster launcher), every rank
  trains its shard; rank 0 writes the run directory (``metrics.json`` and ``params.npz``: the raw
  integers and point positions of every parameter, or float32 values in fp32).

The work is in :mod:`reference.parallel`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from reference.cli import _positive_int

#: Default of ``--timeout``: the longest any rank waits for another before the job is aborted.
DEFAULT_TIMEOUT_S = 60.0

#: Variables set by MPI launchers (MPICH/Hydra, Open MPI, Slurm with PMI); read at run time.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data-parallel training (MPI)")
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="train on N MPI ranks (launches mpiexec unless already inside an MPI job of N ranks)")
    g.add_argument("--exchange", choices=("exact", "dfp16", "dfp8", "dfp8-rs"), default="exact",
                   help="gradient format on the wire: exact accumulators (bit-identical to one process), "
                        "16/8-bit sums with a shared point position per tensor and log2(N) bits of headroom, "
                        "or dfp8-rs: 8-bit values summed in 16 bits by reduce-scatter, re-rounded to 8 bits "
                        "and all-gathered")
    g.add_argument("--no-overlap", action="store_true",
                   help="exchange after back-propagation with blocking waits (the baseline)")
    g.add_argument("--segment-elems", type=_positive_int, default=1 << 16,
                   help="largest number of values per non-blocking allreduce")
    g.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S,
                   help="longest wait for any exchange, s: a rank that hangs this long ends the whole job "
                        "(a rank that dies ends it at once; docs/robustness.md)")
    g.add_argument("--fail-rank", type=int, default=None, help=argparse.SUPPRESS)  # fault injection (tests)
    g.add_argument("--fail-mode", choices=("exit", "hang"), default="exit", help=argparse.SUPPRESS)
    g.add_argument("--launched", action="store_true", help=argparse.SUPPRESS)  # the launcher holds the lock


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.choices.get("train")
    if p is None:
        raise RuntimeError("reference.parallel_cli extends 'dlu train': list it after reference.cli")
    add_arguments(p)
    inner = p.get_default("func")

    def func(args: argparse.Namespace) -> int:
        return run(args) if args.workers is not None else inner(args)

    p.set_defaults(func=func)


def _in_mpi_job() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _mpiexec() -> str:
    import shutil

    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError("train: --workers needs mpiexec (beside the Python interpreter or on PATH)")
    return found


def _check_options(args: argparse.Namespace):
    """The training config, after rejecting the options that --workers does not honour."""
    from .cli import train_config

    if args.memplan:
        raise ValueError("train: --memplan is single-process only (reference.pooled); drop it or --workers")
    if args.trace_iters and args.trace_iters.strip() not in ("", "none"):
        raise ValueError("train: --trace-iters is single-process only: traces are not recorded with --workers")
    return train_config(args)


def _check_args(args: argparse.Namespace):
    """Everything that can be checked before MPI starts: options, output folder; the config and run path."""
    return _check_options(args), _final(args)


def _final(args: argparse.Namespace) -> Path:
    from .cli import run_dir

    return run_dir(args, f"{Path(args.model).stem}-{args.precision}-w{args.workers}-{args.exchange}-s{args.seed}")


def run(args: argparse.Namespace) -> int:
    """Launch the MPI job, or (inside one) train this rank's shard."""
    if not _in_mpi_job():
        import subprocess

        from .cli import load_train_data
        from .outputs import claim

        _, final = _check_args(args)  # a bad argument fails here, once, before any rank starts
        load_train_data(args)  # and so does bad data
        argv = getattr(args, "_argv", None)
        if argv is None:
            argv = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else sys.argv[1:]
        cmd = [_mpiexec(), "-n", str(args.workers), sys.executable, "-m", "reference.parallel_cli", *argv,
               "--launched"]
        with claim(final, "train: run directory"):
            rc = subprocess.run(cmd, check=False).returncode
        if rc in (130, -2):  # mpiexec passed on a Ctrl-C
            raise KeyboardInterrupt
        if rc:
            print(f"dlu train: error: the MPI job of {args.workers} ranks failed with exit code {rc} "
                  "(a rank died, timed out or reported an error above)", file=sys.stderr)
        return rc
    return _rank_main(args)


def _rank_main(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from mpi4py import MPI

    from .cli import load_train_data
    from .outputs import claim
    from .parallel import Exchange, ParallelConfig, ParallelError, train_parallel

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    tag = f"dlu train: rank {rank}/{size}"
    lock: contextlib.AbstractContextManager = contextlib.nullcontext()
    try:
        if size != args.workers:
            raise ValueError(f"train: --workers={args.workers} but the MPI job has {size} ranks")
        if rank == 0:  # rank 0 alone sweeps and writes the run directory
            cfg, final = _check_args(args)
        else:
            cfg, final = _check_options(args), None
        if rank == 0 and not args.launched:  # started by mpiexec directly: rank 0 holds the lock
            lock = claim(final, "train: run directory")
        with lock:
            pcfg = ParallelConfig(overlap=not args.no_overlap, exchange=Exchange(args.exchange),
                                  segment_elems=args.segment_elems, timeout_s=args.timeout)
            data = load_train_data(args)
            fail = None
            if args.fail_rank == rank:
                def fail(it: int) -> None:
                    if it == 1:  # die or hang at the second step, while the others exchange
                        _inject_failure(args.fail_mode)
            result = train_parallel(cfg, data, pcfg, comm, on_step=fail,
                                    warn=lambda line: print(line, file=sys.stderr, flush=True))
            if rank == 0:
                path = _write(result, args.out, final.name, args.force)
    except (ValueError, OSError, ParallelError) as exc:
        # One line, then end the whole job: the other ranks may be waiting for this one.
        print(f"{tag}: error: {exc}", file=sys.stderr, flush=True)
        time.sleep(0.5)  # let the message out
        comm.Abort(2)
        return 2
    if rank == 0:
        m = result.metrics
        print(f"{final.name}: {size} ranks, final loss {m['final']['loss']:.4f}, test accuracy "
              f"{m['final']['test_acc']:.4f}, step {1e3 * m['step_time_s_median']:.2f} ms (waiting "
              f"{1e3 * m['wait_time_s_median']:.2f} ms), gradients {m['gradient_bytes_per_step']} B/step "
              f"({m['gradient_wire_bytes_per_step_ring']:.0f} B on a ring) -> {path}", flush=True)
    return 0


def _inject_failure(mode: str) -> None:
    import time

    if mode == "exit":
        os._exit(3)
    time.sleep(3600)


def params_arrays(result) -> dict:
    """Raw parameter state: integers and point positions (dfp) or float32 values (fp32)."""
    import numpy as np

    out = {}
    for p in result.model.params():
        for kind, ref in (("value", p.value), ("velocity", p.velocity)):
            if ref is None:
                continue
            if result.engine is None:
                out[f"{p.name}.{kind}"] = np.asarray(ref.t)
            else:
                out[f"{p.name}.{kind}"] = ref.t.data
                out[f"{p.name}.{kind}.frac"] = np.array(ref.t.fmt.frac)
    if result.engine is not None:
        s = result.engine.settings
        out["settings"] = np.array([[t, s[t].encode()] for t in sorted(s)], dtype=np.int64)
    return out


def _write(result, out: str, name: str, force: bool) -> Path:
    import json
    import shutil

    import numpy as np

    from .outputs import publish_dir, temp_dir_beside, writing
    from .train import check_run_name

    check_run_name(name)
    final = Path(out) / name
    if final.exists() and not force:
        raise FileExistsError(f"train: run directory {final} exists (choose another --name or pass --force)")
    tmp = temp_dir_beside(final)
    try:
        with writing(final, "train: run directory"):
            metrics = dict(result.metrics, step_times_s=result.step_times, wait_times_s=result.wait_times)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
            np.savez(tmp / "params.npz", **params_arrays(result))
            publish_dir(tmp, final, replace=force, what="train: run directory")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def main(argv: list[str] | None = None) -> int:
    """Entry point of each MPI rank: ``python -m reference.parallel_cli [dlu train options]``."""
    from . import cli

    root = argparse.ArgumentParser(prog="dlu")
    sub = root.add_subparsers(dest="command")
    cli.register(sub)
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = root.parse_args(["train", *argv])
    if args.workers is None:
        root.error("reference.parallel_cli needs --workers N")
    args._argv = argv
    from .outputs import caused_by_interrupt

    try:
        return run(args)
    except BaseException as exc:  # Ctrl-C reaches every rank: the launcher prints the one line
        if not caused_by_interrupt(exc):
            raise
        if not args.launched and os.environ.get("PMI_RANK", "0") == "0":
            print("dlu train: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)  # not MPI_Finalize: its requests are pending, and the job is ending anyway


if __name__ == "__main__":
    sys.exit(main())
