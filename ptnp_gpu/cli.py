"""Command line: ``ptnp <command> ...``, a thin layer over the library.

Each command lives in a ``cli_*`` module that exposes ``register(subparsers)``;
the parser's ``func(args)`` returns the exit status. User errors
(:class:`~ptnp_gpu.errors.InputError`) become one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import InputError

_COMMAND_MODULES = ("cli_detect", "cli_stats", "cli_compare", "cli_batch")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptnp", description="Atomic models and per-atom statistics "
                                "from nanoparticle density maps (CPU or GPU).")
    p.add_argument("--version", action="version", version=f"ptnp_gpu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"ptnp_gpu.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ptnp_gpu.{name}":
                continue
            raise
        mod.register(sub)
    return p


class _ArgError(Exception):
    pass


class _Once(logging.Filter):
    """Pass each library warning once per run (detection and statistics may both raise one)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


def _library_warnings(command: str) -> logging.Handler:
    """Library warnings on stderr as ``ptnp COMMAND: warning: …``, each once; returns the handler
    (removed when the command ends)."""
    h = logging.StreamHandler(sys.stderr)
    h.setLevel(logging.WARNING)
    h.setFormatter(logging.Formatter(f"ptnp {command}: warning: %(message)s"))
    h.addFilter(_Once())
    logging.getLogger("ptnp_gpu").addHandler(h)
    return h


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = None
    if getattr(args, "func", None) and args.command != "batch":   # batch configures its own logging
        handler = _library_warnings(args.command)
    try:
        return _main(parser, args)
    finally:
        if handler is not None:
            logging.getLogger("ptnp_gpu").removeHandler(handler)


def _main(parser, args) -> int:
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"ptnp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ptnp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
