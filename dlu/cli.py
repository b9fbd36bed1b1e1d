"""``dlu``: one console command with subcommands.

This module only parses arguments. Each subcommand lives beside the code it drives, in a
module that exposes ``register(subparsers)``; that function adds its parser and sets
``func`` to a callable taking the parsed namespace and returning an exit code. Modules are
imported only when listed here, so a subcommand's heavy dependencies (Amaranth, MPI) load
only when that subcommand runs: each module keeps its imports inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `dlu --help` lists them.
SUBCOMMAND_MODULES: list[str] = [
    "reference.cli",
    "reference.parallel_cli",  # extends `dlu train` with --workers (must follow reference.cli)
    "dlu.demo",
    "reference.memplan_cli",
    "sim.scale_cli",
    "sim.cli",
    "rtl_gen.cli",
]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dlu",
        description="Deep Learning Unit: dynamic fixed-point training, RTL generation and simulation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def describe(exc: BaseException) -> str:
    """One line for a bad-input exception (an ``OSError`` as 'what: path', not its repr)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Bad input (ValueError, OSError, KeyError) is one line on stderr and exit
    code 2; Ctrl-C is ``dlu COMMAND: interrupted`` and exit code 130 (outputs are written by rename,
    so an interrupted command leaves the previous ones intact)."""
    command = "?"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"dlu {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from reference.outputs import caused_by_interrupt

        if caused_by_interrupt(exc):  # Ctrl-C inside compiled code (numba) surfaces as a SystemError
            print(f"dlu {command}: interrupted", file=sys.stderr)
            return 130
        if not isinstance(exc, (ValueError, OSError, KeyError)):
            raise
        # Bad input (config, trace, setting, path): one clear line, no traceback.
        print(f"dlu {command}: error: {describe(exc)}", file=sys.stderr)
        return 2



if __name__ == "__main__":
    sys.exit(main())
