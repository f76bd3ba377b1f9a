"""The fresh seed of one test run, shared by every pytest-xdist worker of that run.

Parity tests draw new random inputs each run besides their fixed ones. The seed goes into
the test ids, so all workers of one ``pytest -n N`` run must draw the same one (xdist refuses
workers that collected different ids): it is derived from ``PYTEST_XDIST_TESTRUNUID``, which
xdist gives every worker of a run. ``PTNP_PARITY_SEED=<seed>`` reproduces a failure.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np


def fresh_seed() -> int:
    """``PTNP_PARITY_SEED``, else one seed per xdist run, else a new one (< 2**31)."""
    if "PTNP_PARITY_SEED" in os.environ:
        return int(os.environ["PTNP_PARITY_SEED"])
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id:
        return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:4], "little") % 2 ** 31
    return int(np.random.SeedSequence().entropy % 2 ** 31)
