"""The ``gpu`` tests run on the emulated device (``tests/emulated_cupy.py``), so that a broken GPU
test, or a CuPy-path change that breaks one, shows in CPU-only CI and not first on a device.

One subprocess (the plugin replaces ``cupy`` for its whole session) with a fixed fresh seed,
so CI does not vary between runs; ``PTNP_PARITY_SEED`` set by the caller wins.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.skipif(os.environ.get("PTNP_NESTED_EMULATION") == "1", reason="already inside the emulated run")
def test_gpu_tests_pass_on_the_emulated_device():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PTNP_PARITY_SEED", "20261130")
    env["PTNP_NESTED_EMULATION"] = "1"
    env.pop("PYTEST_XDIST_TESTRUNUID", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "emulated_cupy", "-m", "gpu",
                          "-p", "no:cacheprovider", "-rs", str(TESTS)],
                         capture_output=True, text=True, env=env, timeout=1200, cwd=str(TESTS.parent))
    tail = (res.stdout + res.stderr)[-6000:]
    assert res.returncode == 0, tail
    summary = [ln for ln in res.stdout.splitlines() if " passed" in ln]
    assert summary and "failed" not in summary[-1], tail
    passed = int(summary[-1].split(" passed")[0].split()[-1])
    assert passed >= 60, tail                     # the gpu tests ran, not only skipped
