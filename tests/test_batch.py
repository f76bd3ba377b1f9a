"""Tests of ``ptnp batch``: inputs, resumption, failure isolation, worker death, aggregation.

The batches run the real pipeline (:func:`ptnp_gpu.pipeline.run_analyze`) on
small simulated maps when it is importable, else a stand-in with its contract.
The cluster tests start real Dask worker processes.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

import cloudpickle  # noqa: E402 - a dependency of distributed

from ptnp_gpu import batch  # noqa: E402
from ptnp_gpu.cli import main  # noqa: E402
from ptnp_gpu.errors import InputError  # noqa: E402
from ptnp_gpu.mapio import read_map, write_map  # noqa: E402
from ptnp_gpu.synth import make_particle, write_particle  # noqa: E402

# the helpers below travel to worker processes by value (tests/ is not importable there)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_GOOD = 3


def _stand_in_analyze(map_path, out_dir=None, element="Pt", voxel_size_A=None, force=False,
                      quiet=True, **opts):
    """The run_analyze contract in miniature: InputError for bad maps, summary.json last."""
    m = read_map(map_path, voxel_size_A)
    d = m.data
    med = float(np.median(d))
    if float(d.max()) - med < 8 * 1.4826 * float(np.median(np.abs(d - med))):
        raise InputError(f"{map_path}: no particle found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "atoms.csv").write_text("x,y,z\n")
    n = int((d > d.mean() + 3 * d.std()).sum())
    s = {"n_atoms": n, "threshold": 0.5, "out_dir": str(out), "backend": "numpy",
         "version": "test", "times_s": {"detect": 0.01, "total": 0.02},
         "particle": {"n_atoms": n, "diameter_A": float(d.shape[0] * m.voxel_size_A[0]),
                      "cn_median": 9.0, "bond_nn_median_A": 2.75, "strain_radial_median_pct": 1.0,
                      "core_ratio": 0.3, "lattice_mean_A": 3.92},
         "penetration": {"cn": {"delta_A": 3.0, "m": 1.2, "c": 12.0}}, "opts": opts}
    (out / "summary.json").write_text(json.dumps(s))
    return s


def _real_or_stand_in():
    try:
        from ptnp_gpu.pipeline import run_analyze
    except ImportError:
        return _stand_in_analyze
    return run_analyze


def _dying_analyze(map_path, out_dir=None, *, victim, marker, inner, **kw):
    """Half-write a result, then SIGKILL the worker process: once (marker) or every time."""
    if Path(map_path).stem == victim and (marker is None or not Path(marker).exists()):
        if marker is not None:
            Path(marker).write_text(str(os.getpid()))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "HALF_WRITTEN").write_text("not a result")
        (Path(out_dir) / "summary.json").write_text("{")   # even a torn summary must not count
        os.kill(os.getpid(), signal.SIGKILL)
    return inner(map_path, out_dir=out_dir, **kw)


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """N_GOOD small simulated particles, one corrupt file, one map without a particle.

    (A map of white noise alone is not used: the pipeline finds ~100 "atoms" in it.)"""
    d = tmp_path_factory.mktemp("maps")
    for i in range(N_GOOD):
        write_particle(make_particle(n_atoms=150, seed=i, noise=0.05), d / f"np{i}")
    (d / "corrupt.mrc").write_bytes(b"\x00\x01garbage" * 64)
    from scipy.ndimage import gaussian_filter    # solvent background, no atoms
    bg = gaussian_filter(np.random.default_rng(0).normal(size=(48, 48, 48)), 6.0)
    write_map(d / "empty.mrc", bg.astype(np.float32), 0.358)
    return d


def _good(maps):
    return sorted(maps.glob("np*.mrc"))


def _assert_complete(out, names):
    for n in names:
        s = json.loads((out / n / "summary.json").read_text())
        assert s["out_dir"] == str(out / n)          # paths point at the final folder
        side = json.loads((out / n / batch.SIDECAR).read_text())
        assert side["sha256"] == batch.sha256_file(side["map"])
        assert not (out / n / "HALF_WRITTEN").exists()
    assert not [p for p in out.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------- inputs
def test_collect_maps_folders_lists_and_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.mrc", "b.map", "notes.txt", ".hidden.mrc", "sub/c.mrc"):
        (tmp_path / name).write_bytes(b"")
    lst = tmp_path / "list.txt"
    lst.write_text("# my maps\nsub/c.mrc\n\na.mrc  # again\n")
    got = batch.collect_maps([lst, tmp_path])
    assert [p.name for p in got] == ["c.mrc", "a.mrc", "b.map"]      # once each, list first
    assert [p.name for p in batch.collect_maps(tmp_path, recursive=True)] == ["a.mrc", "b.map", "c.mrc"]
    with pytest.raises(InputError, match="nope.mrc"):
        batch.collect_maps([tmp_path / "nope.mrc"])
    lst.write_text("missing.mrc\n")
    with pytest.raises(InputError, match=r"missing.mrc \(listed in"):
        batch.collect_maps([lst])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no maps"):
        batch.collect_maps([tmp_path / "empty"])
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(InputError, match="neither a map"):
        batch.collect_maps([tmp_path / "bin.dat"])


def test_result_names_are_unique_and_stable(tmp_path):
    a, b = tmp_path / "x" / "p.mrc", tmp_path / "y" / "p.mrc"
    names = batch._assign_names([a, b], {})
    assert names[a] == "p" and names[b].startswith("p-") and len(set(names.values())) == 2
    # a map known to the manifest keeps its folder whatever the order
    again = batch._assign_names([b, a], {str(a): {"name": "p"}, str(b): {"name": names[b]}})
    assert again == names


def test_plan_workers_sizes_to_maps_and_devices(monkeypatch):
    cpu = batch.plan_workers(3, gpus="none")
    assert cpu["kind"] == "cpu" and 1 <= cpu["n_workers"] <= 3 and cpu["threads"] >= 1
    # several workers share each GPU (host work overlaps kernels), within the cores and memory
    monkeypatch.setattr(batch, "_usable_cores", lambda: 16)
    monkeypatch.setattr(batch, "_gpu_memory_gib", lambda: 141.0)
    gpu = batch.plan_workers(10, gpus=["0", "1"])
    assert gpu == {"kind": "gpu", "n_workers": 10, "threads": 1, "devices": ["0", "1"] * 5}
    assert batch.plan_workers(40, gpus=["0", "1"])["n_workers"] == 16     # a core each
    assert batch.plan_workers(5, gpus=["0", "1"])["devices"] == ["0", "1", "0", "1", "0"]
    assert batch.plan_workers(1, gpus=["0", "1"])["n_workers"] == 1
    assert batch.plan_workers(10, n_workers=2, gpus=["0", "1"])["devices"] == ["0", "1"]
    monkeypatch.setattr(batch, "_gpu_memory_gib", lambda: 16.0)           # 8 GiB each: 2 per GPU
    assert batch.plan_workers(10, gpus=["0"])["n_workers"] == 2
    monkeypatch.setattr(batch, "_usable_cores", lambda: 2)                # 2 cores, 2 GPUs: 1 each
    monkeypatch.setattr(batch, "_gpu_memory_gib", lambda: None)
    assert batch.plan_workers(10, gpus=["0", "1"]) == {"kind": "gpu", "n_workers": 2, "threads": 1,
                                                      "devices": ["0", "1"]}


def test_workers_per_gpu_bounds():
    assert batch.workers_per_gpu(1, 16, 141.0) == 16         # a core each
    assert batch.workers_per_gpu(1, 64, None) == 16          # at most 16 on one GPU
    assert batch.workers_per_gpu(4, 8, None) == 2            # cores shared out over the devices
    assert batch.workers_per_gpu(1, 64, 12.0) == 1           # memory: 8 GiB each
    assert batch.workers_per_gpu(8, 4, 4.0) == 1             # never below one
    assert batch.workers_per_gpu(1, 16, 141.0, map_bytes=4 * 256 ** 3) == 16   # small maps: 8 GiB each
    assert batch.workers_per_gpu(1, 16, 141.0, map_bytes=4 * 640 ** 3) == 5    # 24x 0.98 GiB + 0.5 each


def test_largest_map_bytes_reads_headers(maps, tmp_path):
    """The batch sizes its GPU workers by the largest map, read from the headers alone."""
    import mrcfile
    small = tmp_path / "small.mrc"
    mrcfile.new(str(small), data=np.zeros((4, 5, 6), np.float32)).close()
    big = tmp_path / "big.mrc"
    mrcfile.new(str(big), data=np.zeros((20, 30, 40), np.float32)).close()
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"not a map")
    assert batch._largest_map_bytes([small, big, bad]) == 4 * 20 * 30 * 40
    assert batch._largest_map_bytes([small]) == 4 * 4 * 5 * 6
    assert batch._largest_map_bytes([bad]) == 0


@pytest.mark.skipif(bool(__import__("importlib").util.find_spec("dask_cuda")),
                    reason="dask_cuda is installed: LocalCUDACluster needs real GPUs")
def test_gpu_cluster_gives_each_worker_its_device():
    import dask
    from distributed import Client
    plan = {"kind": "gpu", "n_workers": 2, "threads": 1, "devices": ["0", "1"]}
    before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "PYTHONHASHSEED")}
    with dask.config.set({"distributed.diagnostics.nvml": False}):   # device 1 may not exist
        cluster = batch.start_cluster(plan)
    with cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        seen = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["OMP_NUM_THREADS"]))
        # the workers' thread limits stay theirs: distributed sets them in this process to spawn
        # the workers, and the cluster puts them back
        assert {k: os.environ.get(k) for k in before} == before
    assert sorted(v[0] for v in seen.values()) == ["0", "1"]
    assert {v[1] for v in seen.values()} == {"1"}
    assert {k: os.environ.get(k) for k in before} == before


# --------------------------------------------------------------------------- batches
def test_batch_isolates_failures_and_second_run_does_no_work(maps, tmp_path, monkeypatch, capsys):
    """Done-when 1: every good map analysed, 2 failures recorded, rerun does nothing."""
    analyze = _real_or_stand_in()
    monkeypatch.setattr(batch, "_default_analyze", lambda: analyze)
    out = tmp_path / "out"
    argv = ["batch", str(maps), "--out", str(out), "--workers", "2", "--gpus", "none", "-q"]
    assert main(argv) == 1                                      # some failed
    names = [p.stem for p in _good(maps)]
    _assert_complete(out, names)
    fail = pd.read_csv(out / "failures.csv")
    assert sorted(fail["name"]) == ["corrupt", "empty"]
    assert set(fail["error_type"]) == {"InputError"}
    assert fail.set_index("name").loc["corrupt", "error"].startswith(str(maps / "corrupt.mrc"))
    table = pd.read_csv(out / "particles.csv")
    assert sorted(table["name"]) == names
    assert list(table.columns[4:10]) == list(batch._TABLE1)      # the paper's Table 1 first
    assert (table["n_atoms"] > 0).all() and (table["diameter_A"] > 10).all()
    assert table["cn_median"].between(3, 12).all()
    assert table["bond_nn_median_A"].between(2.5, 3.0).all()     # Pt: 2.77 Å in the bulk
    for col in ("lattice_mean_A", "penetration_cn_delta_A", "threshold", "time_total_s", "position_sd_A_median",
                "backend", "version"):
        assert table[col].notna().all(), col
    assert set(table["backend"]) == {"numpy"}                    # --gpus none keeps off the GPU
    assert pd.read_parquet(out / "particles.parquet").shape == table.shape
    assert (out / "particles.png").stat().st_size > 1000
    man = json.loads((out / "manifest.json").read_text())["maps"]
    assert {r["status"] for r in man.values()} == {"done", "failed"}
    assert all(len(r["sha256"]) == 64 and r["params"]["element"] == "Pt" for r in man.values())
    capsys.readouterr()

    stamp = {n: (out / n / "summary.json").stat().st_mtime_ns for n in names}
    assert main(argv) == 1                                      # the failures still stand
    assert "0 analysed, 5 skipped (unchanged)" in capsys.readouterr().out
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in names} == stamp
    assert json.loads((out / "manifest.json").read_text())["maps"] == man


def test_resume_redoes_changed_partial_and_lost_results(maps, tmp_path):
    from distributed import Client
    out = tmp_path / "out"
    good = _good(maps)
    src = tmp_path / "src"
    src.mkdir()
    for p in good:
        (src / p.name).write_bytes(p.read_bytes())
    kw = dict(analyze=_stand_in_analyze)
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None,
                scheduler_kwargs=batch._QUIET_HTTP) as client:
        r = batch.run_batch(src, out, client=client, **kw)
        assert (r.n_analysed, r.n_skipped, r.ok) == (3, 0, True)
        # other parameters: everything is redone
        r = batch.run_batch(src, out, client=client, opts={"min_cn": 2}, **kw)
        assert (r.n_analysed, r.n_skipped) == (3, 0)
        assert json.loads((out / "np0" / "summary.json").read_text())["opts"] == {"min_cn": 2}
        # a changed map, a deleted result, a stale partial folder, a lost manifest entry
        m = read_map(src / "np0.mrc")
        write_map(src / "np0.mrc", m.data * 2, m.voxel_size_A, m.origin_A)
        (out / "np1" / "summary.json").unlink()
        (out / ".np2.partial-deadbeef").mkdir()
        doc = json.loads((out / "manifest.json").read_text())
        del doc["maps"][str(src / "np2.mrc")]
        (out / "manifest.json").write_text(json.dumps(doc))
        r = batch.run_batch(src, out, client=client, opts={"min_cn": 2}, **kw)
        assert (r.n_analysed, r.n_skipped) == (2, 1)            # np2 adopted from batch.json
        man = json.loads((out / "manifest.json").read_text())["maps"]
        assert man[str(src / "np2.mrc")].get("adopted") is True
        assert man[str(src / "np0.mrc")]["sha256"] == batch.sha256_file(src / "np0.mrc")
        _assert_complete(out, ["np0", "np1", "np2"])
        # a damaged manifest is set aside; the results are still recognised
        (out / "manifest.json").write_text("{not json")
        r = batch.run_batch(src, out, client=client, opts={"min_cn": 2}, **kw)
        assert (r.n_analysed, r.n_skipped) == (0, 3)
        assert list(out.glob("manifest.json.bad-*"))
        r = batch.run_batch(src, out, client=client, opts={"min_cn": 2}, force=True, **kw)
        assert (r.n_analysed, r.n_skipped) == (3, 0)


def test_killed_worker_does_not_lose_the_batch(maps, tmp_path):
    """Done-when 2: a worker dies mid-map (SIGKILL); its map is redone, results intact."""
    out = tmp_path / "out"
    marker = tmp_path / "killed.pid"
    analyze = functools.partial(_dying_analyze, victim="np1", marker=str(marker),
                                inner=_real_or_stand_in())
    r = batch.run_batch(_good(maps), out, n_workers=2, gpus="none", analyze=analyze)
    assert marker.exists(), "the victim map never killed its worker"
    assert r.ok and (r.n_analysed, r.n_failed) == (N_GOOD, 0)
    _assert_complete(out, [p.stem for p in _good(maps)])
    man = json.loads((out / "manifest.json").read_text())["maps"]
    rec = man[str(maps / "np1.mrc")]
    assert rec["status"] == "done" and not rec["worker"].endswith(f":{marker.read_text()}")
    assert len(pd.read_csv(out / "particles.csv")) == N_GOOD


def test_map_that_always_kills_its_worker_is_recorded(maps, tmp_path):
    out = tmp_path / "out"
    analyze = functools.partial(_dying_analyze, victim="np0", marker=None, inner=_stand_in_analyze)
    r = batch.run_batch(_good(maps), out, n_workers=2, gpus="none", retries=1, analyze=analyze)
    assert [(f["name"], f["error_type"]) for f in r.failures] == [("np0", "KilledWorker")]
    assert r.n_analysed == N_GOOD - 1
    assert not (out / "np0").exists()
    _assert_complete(out, ["np1", "np2"])
    assert pd.read_csv(out / "failures.csv")["name"].tolist() == ["np0"]


def test_folder_lock_and_external_scheduler(maps, tmp_path):
    import socket
    from distributed import LocalCluster
    out = tmp_path / "out"
    out.mkdir()
    lock = out / batch.LOCK
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))  # live batch
    with pytest.raises(InputError, match="another ptnp batch"):
        batch.run_batch(_good(maps)[:1], out, analyze=_stand_in_analyze)
    assert not (out / "manifest.json").exists()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 1}))  # dead: stale
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      scheduler_port=0, dashboard_address=None,
                      scheduler_kwargs=batch._QUIET_HTTP) as cluster:
        r = batch.run_batch(_good(maps)[:2], out, scheduler=cluster.scheduler_address,
                            analyze=_stand_in_analyze)
    assert r.ok and r.n_analysed == 2
    assert r.cluster == {"kind": "external", "scheduler": cluster.scheduler_address}
    assert not lock.exists()


@pytest.mark.gpu
def test_gpu_batch_runs_on_the_gpu(maps, tmp_path):
    from ptnp_gpu.backend import cupy_available
    if not cupy_available():
        pytest.skip("no usable CUDA device")
    r = batch.run_batch(_good(maps)[:2], tmp_path / "out", gpus="auto")
    assert r.ok and r.cluster["kind"] == "gpu"
    assert {row["backend"] for row in r.rows} == {"cupy"}
    # two maps: two workers, sharing a GPU when the machine's cores and memory allow
    gpus = sorted(set(r.cluster["devices"]))
    per = batch.workers_per_gpu(len(gpus), batch._usable_cores(), batch._gpu_memory_gib())
    assert r.cluster["n_workers"] == min(2, len(gpus) * per)


def test_cli_bad_invocations_exit_2(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "missing.mrc"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "a.mrc").write_bytes(b"")
    assert main(["batch", str(tmp_path / "a.mrc"), "--out", str(tmp_path / "o"),
                 "--opt", "nokeyvalue"]) == 2
    assert main(["batch", str(tmp_path / "a.mrc"), "--out", str(tmp_path / "o"),
                 "--opt", "element=Au"]) == 2
    assert "--element" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "a.mrc"), "--out", str(tmp_path / "o"),
                 "--opt", "no_such_knob=1"]) == 2
    assert "no_such_knob" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_passes_analyze_options(monkeypatch, tmp_path):
    seen = {}

    def fake_run_batch(inputs, out_dir, **kw):
        seen.update(kw)
        return batch.BatchResult(out_dir=Path(out_dir), n_maps=1, n_analysed=1)
    monkeypatch.setattr(batch, "run_batch", fake_run_batch)
    argv = ["batch", "a.mrc", "--out", str(tmp_path), "--element", "Au", "--voxel-size", "0.4",
            "--min-cn", "2", "--no-split", "--backend", "numpy", "--opt", "refine_steps=4",
            "--force", "-q"]
    assert main(argv) == 0
    assert (seen["element"], seen["voxel_size_A"]) == ("Au", 0.4)
    assert seen["opts"] == {"min_cn": 2, "split": False, "backend": "numpy", "refine_steps": 4}
    assert (seen["gpus"], seen["force"], seen["progress"]) == ("none", True, False)
    assert main(["batch", "a.mrc", "--out", str(tmp_path), "--voxel-size", "auto", "-q"]) == 0
    assert seen["voxel_size_A"] == "auto"                 # each map's own, found by the pipeline


def test_parse_opt_values():
    from ptnp_gpu.cli_batch import _parse_opt
    assert _parse_opt("min-cn=3") == ("min_cn", 3)
    assert _parse_opt("split=false") == ("split", False)
    assert _parse_opt("radius=1.5") == ("radius", 1.5)
    assert _parse_opt("mode=fast") == ("mode", "fast")
    # the word "none" of the statistics options stays a word (it read as None and failed the map)
    assert _parse_opt("fit_baseline=none") == ("fit_baseline", "none")
    assert _parse_opt("blur-correction=none") == ("blur_correction", "none")
    assert _parse_opt("b_extra_A2=none") == ("b_extra_A2", None)


def test_statistics_options_pass_the_batch_check(tmp_path):
    """``--opt depth=surface`` / ``fit_baseline=none`` / ``blur_correction=none`` reach the
    analysis (they failed the up-front check as unknown detection options); bad values are one
    error before any map runs."""
    from ptnp_gpu.synth import make_particle, write_particle
    paths = write_particle(make_particle(n_atoms=150, seed=2), tmp_path / "maps" / "p")
    opts = {"depth": "surface", "fit_baseline": "none", "blur_correction": "none", "backend": "numpy"}
    res = batch.run_batch([paths["map"]], tmp_path / "out", opts=opts, n_workers=1, gpus="none")
    assert res.n_failed == 0, res
    part = json.loads(next((tmp_path / "out").glob("*/summary.json")).read_text())["particle"]
    assert part["fit_baseline"] == "none" and part["depth_definition"] == "surface"
    assert not part["blur_corrected"]
    with pytest.raises(InputError, match="fit_baseline"):
        batch.run_batch([paths["map"]], tmp_path / "bad", opts={"fit_baseline": "zero"}, n_workers=1, gpus="none")
