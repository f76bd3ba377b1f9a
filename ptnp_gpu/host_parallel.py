"""Parallel Numba functions that several Python threads may call at once.

Numba runs ``parallel=True`` functions on a threading layer: TBB or OpenMP where the process
has them (both take concurrent calls), else its own ``workqueue``, which aborts the process
("Concurrent access has been detected") when two Python threads call parallel functions at the
same time — a threaded stream of maps, or a statistics thread beside a detection. Every
parallel function of the package is wrapped by :func:`thread_safe`: on TBB and OpenMP the call
goes straight through; on ``workqueue`` the calls take turns under one lock.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

__all__ = ["thread_safe", "thread_pool"]

_LOCK = threading.RLock()
_SAFE: bool | None = None     # whether the layer takes concurrent calls; known after the first


def _layer_takes_concurrent_calls() -> bool:
    global _SAFE
    if _SAFE is None:
        try:
            _SAFE = numba.threading_layer() != "workqueue"
        except ValueError:    # no parallel function has run yet: the first call takes the lock
            return False
    return _SAFE


def thread_safe(dispatcher):
    """``dispatcher`` (a ``numba.njit(parallel=True)`` function) callable from many threads."""
    @functools.wraps(dispatcher.py_func)
    def call(*args, **kwargs):
        if _layer_takes_concurrent_calls():
            return dispatcher(*args, **kwargs)
        with _LOCK:
            return dispatcher(*args, **kwargs)
    call.dispatcher = dispatcher
    return call


_POOLS: dict = {}             # name -> (threads, ThreadPoolExecutor)
_POOLS_LOCK = threading.Lock()


def thread_pool(name: str, n: int) -> ThreadPoolExecutor:
    """The package's worker pool ``name`` with ``n`` threads, made on first use (and again when
    ``n`` changes: the old one is shut down without waiting). A forked child has none of its
    parent's threads, so work queued to the parent's pool would wait forever there: it makes
    its own."""
    with _POOLS_LOCK:
        have = _POOLS.get(name)
        if have is None or have[0] != n:
            if have is not None:
                have[1].shutdown(wait=False)
            have = (n, ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"ptnp-{name}"))
            _POOLS[name] = have
        return have[1]


def _forget_pools_in_child() -> None:
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)
