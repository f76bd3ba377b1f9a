"""Package functions replaced by wrappers for a measurement, wherever the package bound them.

A function imported by name into other modules (``from .sweep import sweep_scores``) lives there
under that name too: :func:`wrapped` replaces it in every ``ptnp_gpu`` module that holds the same
object, and puts the originals back on exit. Used by ``detect_trace_diff.py`` (each call's output
digest) and ``host_breakdown.py`` (each call's host time).
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil


@contextlib.contextmanager
def wrapped(functions, make_wrapper):
    """Within the block, each ``(module, name)`` of ``functions`` (modules of ``ptnp_gpu``) is
    ``make_wrapper(original, "module.name")`` wherever the package bound it; names that do not
    exist are skipped."""
    import ptnp_gpu
    mods = [importlib.import_module(f"ptnp_gpu.{m.name}") for m in pkgutil.iter_modules(ptnp_gpu.__path__)
            if m.name != "__main__"]
    saved = []
    try:
        for mod_name, fn_name in functions:
            orig = getattr(importlib.import_module(f"ptnp_gpu.{mod_name}"), fn_name, None)
            if orig is None:
                continue
            w = make_wrapper(orig, f"{mod_name}.{fn_name}")
            for m in mods:
                if getattr(m, fn_name, None) is orig:
                    saved.append((m, fn_name, orig))
                    setattr(m, fn_name, w)
        yield
    finally:
        for m, name, orig in reversed(saved):
            setattr(m, name, orig)
