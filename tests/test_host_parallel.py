"""Parallel Numba functions called from several threads at once (a threaded stream of maps)."""
import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import threading
    import numba
    import numpy as np
    from ptnp_gpu.lattice_sites import vacant_sites
    from ptnp_gpu.lattice import fit_lattice
    from ptnp_gpu.synth import fcc_particle
    rng = np.random.default_rng(3)
    xyz = fcc_particle(1500, 3.924, "sphere")
    xyz = xyz[rng.random(len(xyz)) > 0.05] + rng.normal(0, 0.04, (1, 3))
    bond = 3.924 / np.sqrt(2)
    want = vacant_sites(xyz, bond)
    want_a = fit_lattice(xyz, "Pt").mean_param_A
    bad = []
    def work():
        for _ in range(15):
            s, v = vacant_sites(xyz, bond)
            a = fit_lattice(xyz, "Pt").mean_param_A
            if not (np.array_equal(s, want[0]) and np.array_equal(v, want[1]) and a == want_a):
                bad.append(1)
    ts = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print(numba.threading_layer(), len(want[0]), len(bad))
""")


def test_parallel_numba_from_threads_on_the_workqueue_layer():
    """Numba's fallback threading layer (no OpenMP, no TBB) aborts the process when two
    threads run parallel functions at once; the package's parallel functions take turns there
    (``ptnp_gpu.host_parallel``), and give the same sites and lattice in every thread."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    r = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    layer, n_sites, n_bad = r.stdout.split()
    assert layer == "workqueue" and int(n_sites) > 20 and n_bad == "0"


def _pool_in_child(q):
    from ptnp_gpu.statistics import _lattice_pool
    try:
        q.put(_lattice_pool().submit(lambda: 42).result(timeout=20))
    except Exception as exc:  # noqa: BLE001 - report, the parent asserts
        q.put(repr(exc))


def test_lattice_pool_works_in_a_forked_child():
    """The statistics' lattice thread pool made in the parent: a forked child (which has none of
    its threads) gets a pool of its own instead of queueing work no thread takes."""
    import multiprocessing as mp

    import pytest

    from ptnp_gpu.statistics import _lattice_pool
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    assert _lattice_pool().submit(lambda: 1).result(timeout=20) == 1     # the parent's threads exist
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_pool_in_child, args=(q,))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=30)
    assert got == 42
