"""Batch analysis of many maps on a Dask cluster: resumable, failure-isolated, aggregated.

:func:`run_batch` runs :func:`ptnp_gpu.pipeline.run_analyze` on every map of a
set of inputs (maps, folders, text lists), one Dask task per map, and writes::

    OUT/<name>/             one result folder per map (what ``ptnp analyze`` writes,
                            plus ``batch.json``: the map's checksum, parameters, version)
    OUT/manifest.json       per map: checksum, parameters, version, status, error
    OUT/failures.csv        maps that failed, with their error
    OUT/particles.csv       one row per analysed particle (also .parquet)
    OUT/particles.png       median CN and penetration depth against diameter

Guarantees
----------
* **Resumable.** A map is skipped when the manifest (or, if the manifest was
  lost, the folder's ``batch.json``) records the same SHA-256, parameters and
  package version and its ``summary.json`` exists. Maps that failed with an
  input error (corrupt map, no particle) are not retried unless asked
  (``retry_failed``); anything else is redone.
* **Nothing half-written looks complete.** A worker writes into
  ``OUT/.<name>.partial-<id>`` and renames the folder into place only after
  ``summary.json`` is written; leftovers are removed at the start and end of a run.
* **Failure isolation.** An input error is recorded and the batch goes on.
  Other exceptions are retried ``retries`` times by Dask; a worker process that
  dies is restarted by its nanny and its map resubmitted by the scheduler
  (``distributed.scheduler.allowed-failures``).
* Only the client (this process) writes the manifest and the tables, and
  one batch at a time per folder (``OUT/.ptnp-batch.lock``).

The Dask cluster is the one at ``scheduler`` (an address), a given ``client``,
or a local one sized to the machine (:func:`plan_workers`): several worker
processes sharing each GPU (:func:`workers_per_gpu`: one per core, within the
GPU's memory; a nanny per worker with its own ``CUDA_VISIBLE_DEVICES``, or
``dask_cuda.LocalCUDACluster`` when each GPU has one worker and dask-cuda is
installed), or single-threaded worker processes on CPU.
Workers of an external cluster must import ``ptnp_gpu`` and see the same paths.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import InputError

__all__ = ["MAP_SUFFIXES", "BatchResult", "collect_maps", "run_batch", "analyze_one",
           "plan_workers", "workers_per_gpu", "start_cluster", "aggregate", "particles_figure", "read_manifest"]

logger = logging.getLogger(__name__)

MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".rec")
MANIFEST = "manifest.json"
SIDECAR = "batch.json"
FAILURES = "failures.csv"
_FAILURE_COLUMNS = ("map", "name", "sha256", "error_type", "error")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# --------------------------------------------------------------------------- inputs
def _is_map(path: Path) -> bool:
    return path.suffix.lower() in MAP_SUFFIXES


def _maps_in_folder(folder: Path, recursive: bool) -> list[Path]:
    walk = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in walk if p.is_file() and _is_map(p) and not p.name.startswith("."))


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: neither a map ({', '.join(MAP_SUFFIXES)}) nor a readable "
                         f"text list of maps ({type(exc).__name__})") from None
    out = []
    for ln in lines:
        ln = ln.split("#", 1)[0].strip()
        if ln:
            p = Path(ln).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def collect_maps(inputs, *, recursive: bool = False) -> list[Path]:
    """Expand maps, folders and text lists into a list of map files.

    Parameters
    ----------
    inputs : str, Path or sequence of them
        Map files (suffix in :data:`MAP_SUFFIXES`), folders (their maps; hidden
        files skipped) or text files that list maps or folders, one per line
        (``#`` starts a comment; relative paths are relative to the list file).
    recursive : bool, optional
        Also search the sub-folders of folders.

    Returns
    -------
    list of Path
        Absolute paths, each once, in input order (folders sorted).

    Raises
    ------
    InputError
        A path that does not exist, an unreadable list, or no map at all.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.mrc").write_bytes(b""); _ = (d / "b.txt").write_text("a.mrc\\n")
    >>> [p.name for p in collect_maps([d / "b.txt", d])]
    ['a.mrc']
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    missing: list[str] = []

    def add(p: Path, from_list: Path | None):
        if p.is_dir():
            found.extend(_maps_in_folder(p, recursive))
        elif p.is_file() and (_is_map(p) or from_list is not None):
            found.append(p)
        elif p.is_file():
            for q in _read_list(p):
                add(q, p)
        else:
            missing.append(f"{p}" + (f" (listed in {from_list})" if from_list else ""))

    for item in inputs:
        add(Path(item).expanduser(), None)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"no such file or folder: {', '.join(missing[:5])}{more}")
    out, seen = [], set()
    for p in found:
        p = p.resolve()
        if p not in seen:
            seen.add(p)
            out.append(p)
    if not out:
        raise InputError(f"no maps ({', '.join(MAP_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    return out


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


# --------------------------------------------------------------------------- manifest
def _write_json(path: Path, obj) -> None:
    from .models import atomic_write
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=1, sort_keys=True, default=str))


def read_manifest(out_dir) -> dict:
    """The batch manifest of ``out_dir`` as ``{map path: entry}`` (empty if none).

    An unreadable manifest is set aside as ``manifest.json.bad-<time>`` with a
    warning; the result folders' ``batch.json`` files still let a re-run skip
    finished maps.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        maps = doc["maps"]
        if not isinstance(maps, dict):
            raise TypeError("'maps' is not an object")
        return maps
    except Exception as exc:  # noqa: BLE001 - any damage: start a new manifest
        bad = path.with_name(f"{MANIFEST}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, bad)
        logger.warning("%s is unreadable (%s); set aside as %s", path, exc, bad.name)
        return {}


def _write_manifest(out_dir: Path, maps: dict) -> None:
    _write_json(out_dir / MANIFEST, {"format": "ptnp-batch-manifest", "format_version": 1,
                                     "maps": maps})


def _canonical(obj):
    """JSON round trip, so tuples/lists and key order compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _same_inputs(rec: dict | None, sha: str, params: dict, version: str) -> bool:
    return bool(rec) and rec.get("sha256") == sha and rec.get("params") == params \
        and rec.get("version") == version


def _read_sidecar(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SIDECAR).read_text())
    except Exception:  # noqa: BLE001 - absent or damaged: not a usable result
        return None


LOCK = ".ptnp-batch.lock"


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _batch_lock(out_dir: Path):
    """Hold ``OUT/.ptnp-batch.lock`` (host and pid) while a batch writes to ``out_dir``.

    A lock left by a dead process of this host, or an unreadable one older
    than 10 s, is stale and taken over.

    Raises
    ------
    InputError
        When another live batch holds the folder.
    """
    import socket
    path = out_dir / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
                age = 0.0
            except (OSError, ValueError):
                other, age = {}, time.time() - path.stat().st_mtime if path.exists() else 1e9
            stale = (other.get("host") == me["host"] and not _pid_alive(other.get("pid"))) \
                or (not other and age > 10.0)
            if stale:
                path.unlink(missing_ok=True)
                continue
            if not other:
                time.sleep(1.0)
                continue
            raise InputError(f"another ptnp batch (host {other.get('host')}, pid {other.get('pid')}) "
                             f"is writing to {out_dir}; if none is, delete {path}") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise InputError(f"cannot take the batch lock {path}; if no batch is running, delete it")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _clean_partials(out_dir: Path) -> int:
    n = 0
    for p in out_dir.glob(".*"):
        if p.is_dir() and (".partial-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


# --------------------------------------------------------------------------- worker task
def _default_analyze():
    from .pipeline import run_analyze
    return run_analyze


def _relocate(summary_path: Path, old: str, new: str) -> dict:
    """Rewrite paths under ``old`` in a summary.json to ``new`` (atomically); return it."""
    def fix(v):
        if isinstance(v, str) and v.startswith(old):
            return new + v[len(old):]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    summary = json.loads(summary_path.read_text())
    fixed = fix(summary)
    if fixed != summary:
        from .models import atomic_write
        atomic_write(summary_path, lambda fh: json.dump(fixed, fh, indent=2))
    return fixed


def analyze_one(map_path, out_root, name, sha256, params, analyze=None) -> dict:
    """Analyse one map into ``out_root/name``; the task that batch workers run.

    The analysis writes into a hidden ``.<name>.partial-<id>`` folder, which is
    renamed to ``name`` only when ``summary.json`` is there.

    Parameters
    ----------
    map_path : str or Path
    out_root : str or Path
        The batch output folder.
    name : str
        Result folder name inside ``out_root``.
    sha256 : str
        The map's checksum, recorded in ``batch.json``.
    params : dict
        ``element``, ``voxel_size_A`` and extra pipeline options, passed to ``analyze``.
    analyze : callable, optional
        ``analyze(map_path, out_dir=..., element=..., voxel_size_A=..., force=True,
        quiet=True, **opts) -> dict``; default :func:`ptnp_gpu.pipeline.run_analyze`.

    Returns
    -------
    dict
        ``status`` ("done" or "failed"), ``elapsed_s``, ``worker`` (host:pid) and
        either ``summary`` or ``error_type`` and ``error``. Input errors are
        returned as "failed"; other exceptions propagate (Dask retries them).
    """
    analyze = analyze or _default_analyze()
    out_root = Path(out_root)
    partial = out_root / f".{name}.partial-{uuid.uuid4().hex[:12]}"
    opts = {k: v for k, v in params.items() if k not in ("element", "voxel_size_A")}
    t0 = time.perf_counter()
    base = {"worker": f"{os.uname().nodename}:{os.getpid()}"}
    try:
        analyze(str(map_path), out_dir=str(partial), element=params.get("element", "Pt"),
                voxel_size_A=params.get("voxel_size_A"), force=True, quiet=True, **opts)
        if not (partial / "summary.json").is_file():
            raise RuntimeError(f"analysis of {map_path} returned without writing summary.json")
        _write_json(partial / SIDECAR, {"map": str(map_path), "sha256": sha256, "params": params,
                                        "version": __version__})
        summary = _relocate(partial / "summary.json", str(partial), str(out_root / name))
        from .pipeline import _commit_folder          # rename into place, old result aside
        _commit_folder(partial, out_root / name)
    except InputError as exc:
        return {**base, "status": "failed", "error_type": "InputError", "error": str(exc),
                "elapsed_s": time.perf_counter() - t0}
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return {**base, "status": "done", "summary": summary, "elapsed_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- cluster
def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_devices() -> list[str]:
    """CUDA device ids to use (respecting CUDA_VISIBLE_DEVICES); empty without a usable GPU."""
    if os.environ.get("PTNP_BACKEND", "").strip().lower() == "numpy":
        return []
    from .backend import cupy_available
    if not cupy_available():
        return []
    import cupy
    n = int(cupy.cuda.runtime.getDeviceCount())
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis:
        ids = [v.strip() for v in vis.split(",") if v.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


# workers sharing one GPU by default: a map's time in a worker is mostly host work (reading,
# statistics on the host, writing and the figures: ~1.4 s of one core for a 160³ map, whose
# detection and statistics take ~0.2 s on an H200), which processes overlap with each other's
# kernels. bench_batch on an H200 with 16 cores: 2 / 4 workers did 1.7x / 2.5x the maps/min of
# one (200-atom maps; 600-atom maps: 4 workers 3.0x), capacity 30 -> 66 -> 128 maps/min; the
# 160³ stream (no files) 5.9 -> 11.1 / 13.2 / 14.1 maps/s with 4 / 8 / 16 processes
# (benchmarks/results/batch_gpu_h200_*.json, 2026-11-28_nvidia-h200). Up to one per core, at
# most 16 per GPU (the most measured)
_GPU_WORKERS_PER_DEVICE = 16
# device memory each may need: CuPy's pool keeps a worker's peak (a 384³ analyze grew it by
# 18x the map, 3.9 GB, on 2026-11-28, detection holds 12-22x), so at least 8 GiB, and for big
# maps 24x the largest map's float32 size plus a CUDA context
_GPU_GIB_PER_WORKER = 8.0
_GPU_MAP_FACTOR = 24.0
_GPU_CONTEXT_GIB = 0.5


def _gib_per_gpu_worker(map_bytes: int | None) -> float:
    """Device memory (GiB) to allow each GPU worker for maps of at most ``map_bytes`` (float32)."""
    need = _GPU_MAP_FACTOR * float(map_bytes or 0) / 2 ** 30 + _GPU_CONTEXT_GIB
    return max(_GPU_GIB_PER_WORKER, need)


def _largest_map_bytes(paths) -> int:
    """float32 bytes of the largest map among ``paths`` (headers only, through the pipeline's
    :func:`ptnp_gpu.pipeline._map_size`; an unreadable map counts 0 and fails later, in its task)."""
    from .pipeline import _map_size
    return max((_map_size(p)[1] for p in paths), default=0)


def _gpu_memory_gib() -> float | None:
    """The smallest total memory (GiB) of the visible CUDA devices; None when CuPy cannot tell."""
    try:
        from .backend import cupy_available
        if not cupy_available():
            return None
        import cupy
        n = int(cupy.cuda.runtime.getDeviceCount())
        return min(cupy.cuda.runtime.getDeviceProperties(k)["totalGlobalMem"] for k in range(n)) / 2 ** 30
    except Exception:  # noqa: BLE001 - the default then rests on the cores alone
        return None


def workers_per_gpu(n_devices: int, cores: int, memory_gib: float | None, map_bytes: int | None = None) -> int:
    """Default worker processes per GPU: one per CPU core shared out over the devices, no more
    than the device memory holds at 8 GiB each, or 24× the largest map (``map_bytes``, float32)
    plus 0.5 GiB when that is more (unknown memory: no limit), nor than
    ``_GPU_WORKERS_PER_DEVICE`` (16); at least 1.

    >>> workers_per_gpu(1, 16, 141.0), workers_per_gpu(2, 4, 80.0), workers_per_gpu(1, 16, 24.0)
    (16, 2, 3)
    >>> workers_per_gpu(1, 16, 80.0, map_bytes=4 * 512 ** 3)     # 512³ maps: 12.5 GiB each
    6
    """
    per = min(_GPU_WORKERS_PER_DEVICE, max(1, int(cores) // max(1, int(n_devices))))
    if memory_gib is not None:
        per = min(per, max(1, int(memory_gib // _gib_per_gpu_worker(map_bytes))))
    return max(1, per)


def plan_workers(n_maps: int, n_workers: int | None = None, gpus="auto", map_bytes: int | None = None) -> dict:
    """Decide the local cluster: GPU workers or CPU worker processes, and threads.

    Parameters
    ----------
    n_maps : int
        Maps to analyse; no more workers than maps are started.
    n_workers : int, optional
        Worker count (default: :func:`workers_per_gpu` per GPU, one per core within the
        GPU's memory, else one per usable CPU core).
    gpus : "auto", "none" or sequence of str
        CUDA device ids for GPU workers; "auto" uses every visible device.
    map_bytes : int, optional
        float32 size of the largest map: big maps get fewer workers per GPU
        (:func:`workers_per_gpu`).

    Returns
    -------
    dict
        ``kind`` ("gpu" or "cpu"), ``n_workers``, ``threads`` (BLAS/OpenMP/Numba
        threads per worker) and ``devices`` (one CUDA id per GPU worker).
    """
    if gpus == "auto":
        devices = _gpu_devices()
    elif gpus in (None, "none", False):
        devices = []
    else:
        devices = [str(d) for d in gpus]
    cores = _usable_cores()
    if devices:
        n = n_workers or len(devices) * workers_per_gpu(len(devices), cores, _gpu_memory_gib(), map_bytes)
    else:
        n = n_workers or cores
    n = max(1, min(int(n), max(1, n_maps)))
    return {"kind": "gpu" if devices else "cpu", "n_workers": n, "threads": max(1, cores // n),
            "devices": [devices[i % len(devices)] for i in range(n)] if devices else []}


# no dashboard; the scheduler's small HTTP server (health, metrics) on a free port, not 8787
_QUIET_HTTP = {"dashboard_address": ":0"}


def start_cluster(plan: dict, *, allowed_failures: int = 3, silence_logs=logging.ERROR):
    """Start the local Dask cluster described by :func:`plan_workers`.

    CPU: ``LocalCluster`` of single-threaded worker processes with thread
    variables (``OMP_NUM_THREADS``, ``NUMBA_NUM_THREADS``, ...) set to
    ``plan["threads"]`` and ``PTNP_BACKEND=numpy``. GPU: ``dask_cuda.LocalCUDACluster`` when installed,
    else a ``SpecCluster`` with one nanny per device and its own
    ``CUDA_VISIBLE_DEVICES``.

    Returns
    -------
    distributed.SpecCluster
    """
    saved = {k: os.environ.get(k) for k in (*_THREAD_VARS, "PYTHONHASHSEED")}
    cluster = _start_cluster(plan, allowed_failures, silence_logs)
    return _keeping_environ(cluster, saved)


def _restore_environ(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _keeping_environ(cluster, saved: dict):
    """Distributed's nannies set their ``pre-spawn-environ`` (our thread limits, PYTHONHASHSEED)
    in *this* process's environment when they spawn a worker, and leave them there: a session
    that ran a batch would run single-threaded afterwards (and Numba, whose thread pool was
    launched before, refuses to recompile with another thread count). Put them back now and
    again when the cluster closes (a restarted worker sets them once more)."""
    _restore_environ(saved)
    close = cluster.close

    def close_and_restore(*args, **kwargs):
        try:
            return close(*args, **kwargs)
        finally:
            _restore_environ(saved)
    cluster.close = close_and_restore
    return cluster


def _start_cluster(plan: dict, allowed_failures: int, silence_logs):
    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster
    threads = {k: str(plan["threads"]) for k in _THREAD_VARS}
    cfg = {"distributed.scheduler.allowed-failures": int(allowed_failures),
           "distributed.scheduler.worker-saturation": 1.0,  # one map per worker: a death blames one map
           **{f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in threads.items()}}
    with dask.config.set(cfg):
        if plan["kind"] == "cpu":       # CPU workers stay off any GPU the machine has
            return LocalCluster(n_workers=plan["n_workers"], threads_per_worker=1, processes=True,
                                dashboard_address=None, scheduler_kwargs=_QUIET_HTTP,
                                silence_logs=silence_logs, env={**threads, "PTNP_BACKEND": "numpy"})
        devices = plan["devices"]
        with contextlib.suppress(ImportError):
            from dask_cuda import LocalCUDACluster
            if len(set(devices)) == len(devices):
                return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(devices), threads_per_worker=1,
                                        dashboard_address=None, scheduler_kwargs=_QUIET_HTTP,
                                        silence_logs=silence_logs)
        scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False,
                                                   **_QUIET_HTTP}}
        workers = {f"gpu{i}-dev{dev}": {"cls": Nanny, "options": {
            "host": "127.0.0.1", "nthreads": 1, "dashboard": False, "silence_logs": silence_logs,
            "env": {**threads, "CUDA_VISIBLE_DEVICES": dev}}} for i, dev in enumerate(devices)}
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=silence_logs)


# --------------------------------------------------------------------------- progress
class _Progress:
    """tqdm bar on stderr when tqdm is installed, else one line with rate and ETA."""

    def __init__(self, total: int, enabled: bool, desc: str = "ptnp batch"):
        self.total, self.enabled, self.desc = total, enabled and total > 0, desc
        self.n, self.failed, self.t0, self.t_print = 0, 0, time.perf_counter(), 0.0
        self.bar = None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="map", file=sys.stderr,
                                dynamic_ncols=True, smoothing=0.1)
            except ImportError:
                self._line(force=True)

    def update(self, failed: bool = False):
        self.n += 1
        self.failed += bool(failed)
        if self.bar is not None:
            self.bar.update(1)
            if self.failed:
                self.bar.set_postfix(failed=self.failed)
        elif self.enabled:
            self._line(force=self.n == self.total)

    def _line(self, force=False):
        now = time.perf_counter()
        if not force and now - self.t_print < 1.0:
            return
        self.t_print = now
        dt = now - self.t0
        rate = self.n / dt if dt > 0 and self.n else 0.0
        eta = (self.total - self.n) / rate if rate else float("nan")
        eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        fail = f", {self.failed} failed" if self.failed else ""
        end = "\n" if self.n == self.total else ""
        print(f"\r{self.desc}: {self.n}/{self.total} maps{fail} "
              f"[{dt:.0f} s, {rate * 60:.2f} maps/min, ETA {eta_s}]", end=end, file=sys.stderr,
              flush=True)

    def note(self, msg: str) -> bool:
        """Print ``msg`` on its own line above the bar; False when the bar is off."""
        if not self.enabled:
            return False
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(f"\r{msg}", file=sys.stderr, flush=True)
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- aggregation
_TABLE1 = ("n_atoms", "diameter_A", "cn_median", "bond_nn_median_A", "strain_radial_median_pct",
           "core_ratio")
_SKIP_FIT_KEYS = ("statistic", "message")


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _row(summary: dict, rec: dict) -> dict:
    """One table row from a result's ``summary.json``.

    Order: map identity; the paper's Table 1 (``n_atoms``, ``diameter_A``,
    ``cn_median``, ``bond_nn_median_A``, ``strain_radial_median_pct``,
    ``core_ratio``); the other particle statistics (lattice parameters, GCN,
    DOI, U_iso medians, ...); ``penetration_<statistic>_<delta_A|delta_err_A|m|c|...>``;
    detection figures (``threshold``, ``correlation``, ``counts_*``, the ``precision`` medians,
    voxel size);
    ``time_<stage>_s``; ``backend``, ``device``, ``version``.
    """
    part = summary.get("particle") or {}
    row = {"name": rec.get("name"), "map": rec.get("map"), "sha256": rec.get("sha256"),
           "element": summary.get("element") or (rec.get("params") or {}).get("element")}
    row["n_atoms"] = summary.get("n_atoms", part.get("n_atoms"))
    for k in _TABLE1[1:]:
        row[k] = part.get(k)
    row.update({k: v for k, v in part.items() if _scalar(v) and k not in row})
    for stat, fit in (summary.get("penetration") or {}).items():
        if isinstance(fit, dict):
            row.update({f"penetration_{stat}_{k}": v for k, v in fit.items()
                        if _scalar(v) and k not in _SKIP_FIT_KEYS})
    for k in ("threshold", "otsu_threshold", "correlation"):
        row[k] = summary.get(k)
    row.update({f"counts_{k}": v for k, v in (summary.get("counts") or {}).items() if _scalar(v)})
    row.update({k: v for k, v in (summary.get("precision") or {}).items() if _scalar(v)})
    m = summary.get("map") or {}
    if m.get("voxel_size_A"):
        row["voxel_size_A"] = m["voxel_size_A"][0]
    row["voxel_size_source"] = (summary.get("voxel_size") or {}).get("source")
    row["bond_over_bulk"] = (summary.get("scale") or {}).get("ratio")
    row["n_warnings"] = len(summary.get("warnings") or [])
    if m.get("shape_zyx"):
        row["map_shape_zyx"] = "x".join(str(n) for n in m["shape_zyx"])
    row.update({f"time_{k}_s": v for k, v in (summary.get("times_s") or {}).items()
                if isinstance(v, (int, float))})
    row["backend"] = summary.get("backend")
    row["device"] = (summary.get("backend_info") or {}).get("device")
    row["version"] = summary.get("version")
    return row


def aggregate(out_dir, records: list[dict]) -> list[dict]:
    """Read the ``summary.json`` of each done record into one table; write CSV, Parquet, PNG.

    Parameters
    ----------
    out_dir : str or Path
        The batch folder; ``particles.csv``, ``particles.parquet`` (when pyarrow
        is installed) and ``particles.png`` are written there.
    records : list of dict
        Manifest entries (with ``name``, ``map``, ``sha256``, ``params``); only
        those with status "done" are read.

    Returns
    -------
    list of dict
        The table rows (columns as described in :func:`_row`): the paper's
        Table 1 first, then lattice parameters and other particle statistics,
        penetration fits, detection figures, stage times, backend and version.
    """
    import pandas as pd
    out_dir = Path(out_dir)
    rows = []
    for rec in records:
        if rec.get("status") != "done":
            continue
        try:
            summary = json.loads((out_dir / rec["name"] / "summary.json").read_text())
        except (OSError, ValueError) as exc:
            logger.warning("skipping %s in the table: %s", rec.get("name"), exc)
            continue
        rows.append(_row(summary, rec))
    cols = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    df = pd.DataFrame(rows, columns=cols or ["name", "map", "sha256", "element", *_TABLE1])
    from .models import atomic_write
    atomic_write(out_dir / "particles.csv", lambda fh: df.to_csv(fh, index=False), mode="w")
    try:
        import pyarrow  # noqa: F401
        atomic_write(out_dir / "particles.parquet", lambda fh: df.to_parquet(fh, index=False),
                     mode="wb")
    except ImportError:
        logger.warning("pyarrow is not installed: no particles.parquet (pip install 'ptnp_gpu[batch]')")
    if rows:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        fig = particles_figure(df)
        atomic_write(out_dir / "particles.png", lambda fh: fig.savefig(fh, format="png", dpi=120),
                     mode="wb")
        plt.close(fig)
    return rows


def _delta_column(columns) -> str | None:
    for c in ("penetration_cn_delta_A", "penetration_CN_delta_A"):
        if c in columns:
            return c
    return next((c for c in columns if c.startswith("penetration_") and c.endswith("_delta_A")), None)


def particles_figure(table):
    """Median CN and penetration depth δ against particle diameter, one point per particle.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows from :func:`aggregate` (needs ``diameter_A``; uses ``cn_median`` and
        ``penetration_cn_delta_A`` or the first ``penetration_*_delta_A`` column).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    d = np.asarray(table.get("diameter_A", np.full(len(table), np.nan)), dtype=float)
    dcol = _delta_column(table.columns)
    stat = dcol[len("penetration_"):-len("_delta_A")].upper() if dcol else "CN"
    for ax, col, label in ((axes[0], "cn_median", "median CN"),
                           (axes[1], dcol, f"{stat} penetration depth δ (Å)")):
        y = np.asarray(table[col], dtype=float) if col in table else np.full(len(table), np.nan)
        ok = np.isfinite(d) & np.isfinite(y)
        ax.scatter(d[ok], y[ok], s=22)
        if ok.sum() <= 40:                       # names stay legible
            for name, x, v in zip(np.asarray(table["name"])[ok], d[ok], y[ok]):
                ax.annotate(str(name), (x, v), fontsize=6, xytext=(2, 2), textcoords="offset points")
        if ok.any():                             # near-equal particles: keep a readable span
            for lim, v, span in ((ax.set_xlim, d[ok], 2.0), (ax.set_ylim, y[ok], 1.0)):
                mid, half = 0.5 * (v.min() + v.max()), max(0.6 * (v.max() - v.min()), span / 2)
                lim(mid - half, mid + half)
        ax.ticklabel_format(useOffset=False)
        ax.set_xlabel("diameter (Å)")
        ax.set_ylabel(label)
        if not ok.any():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{len(table)} particles")
    return fig


def _write_failures(out_dir: Path, failures: list[dict]) -> None:
    from .models import atomic_write

    def w(fh):
        wr = csv.DictWriter(fh, fieldnames=_FAILURE_COLUMNS, extrasaction="ignore")
        wr.writeheader()
        for f in failures:
            wr.writerow({k: (" ".join(str(f.get(k, "")).split()) if k == "error" else f.get(k, ""))
                         for k in _FAILURE_COLUMNS})
    atomic_write(out_dir / FAILURES, w)


# --------------------------------------------------------------------------- driver
@dataclass
class BatchResult:
    """What :func:`run_batch` did.

    Attributes
    ----------
    out_dir : Path
    n_maps : int
        Maps in the inputs.
    n_analysed : int
        Maps analysed in this run.
    n_skipped : int
        Maps whose results (or recorded input errors) were already there.
    failures : list of dict
        One per failed map (``map``, ``name``, ``sha256``, ``error_type``,
        ``error``), also in ``failures.csv``; includes recorded input errors.
    rows : list of dict
        The aggregate table (``particles.csv``).
    elapsed_s : float
    cluster : dict
        The cluster plan (:func:`plan_workers`) or the external scheduler address.
    """
    out_dir: Path
    n_maps: int = 0
    n_analysed: int = 0
    n_skipped: int = 0
    failures: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    elapsed_s: float = 0.0
    cluster: dict = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def ok(self) -> bool:
        """True when every map has a result."""
        return not self.failures


def _assign_names(paths: list[Path], manifest: dict) -> dict:
    """Result folder name per map: the manifest's, else the stem, made unique."""
    names, taken = {}, set()
    for p in paths:
        n = (manifest.get(str(p)) or {}).get("name")
        if n and n not in taken:
            names[p] = n
            taken.add(n)
    for p in paths:
        if p in names:
            continue
        n = p.stem if not p.stem.startswith(".") else p.stem.lstrip(".") or "map"
        if n in taken:
            n = f"{n}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
        names[p] = n
        taken.add(n)
    return names


def _checksum(p: Path, rec: dict | None) -> str:
    """SHA-256 of ``p``, reusing the manifest's when size and mtime are unchanged."""
    st = p.stat()
    if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns \
            and rec.get("sha256"):
        return rec["sha256"]
    return sha256_file(p)


def run_batch(inputs, out_dir, *, element: str = "Pt", voxel_size_A=None, opts: dict | None = None,
              scheduler: str | None = None, client=None, n_workers: int | None = None,
              gpus="auto", retries: int = 2, retry_failed: bool = False, force: bool = False,
              recursive: bool = False,
              progress: bool = False, analyze=None, callback=None) -> BatchResult:
    """Analyse many maps on a Dask cluster; resumable, with failures isolated.

    Parameters
    ----------
    inputs : str, Path or sequence
        Maps, folders and text lists (see :func:`collect_maps`).
    out_dir : str or Path
        Batch folder (created). One sub-folder per map plus manifest and tables.
    element : str, optional
        Element symbol passed to the analysis.
    voxel_size_A : float or "auto", optional
        Overrides every map's header voxel size (Å); ``"auto"``: each map's own, read from its
        lattice fringes (see :func:`ptnp_gpu.pipeline.run_analyze`).
    opts : dict, optional
        Further keyword options of :func:`ptnp_gpu.pipeline.run_analyze`; part of
        the parameters that decide whether a result can be reused.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``) to use.
    client : distributed.Client, optional
        A client to use (wins over ``scheduler``); it is not closed.
    n_workers : int, optional
        Local cluster size (default: one per CPU core, sharing the GPUs within their memory
        (:func:`workers_per_gpu`), or on the CPU; never more than the maps to analyse).
    gpus : "auto", "none" or sequence of str, optional
        CUDA devices for local GPU workers.
    retries : int, optional
        Retries of a map after an unexpected exception; also the number of
        worker deaths a map may cause before it is recorded as failed.
    retry_failed : bool, optional
        Also redo maps that failed with an input error before.
    force : bool, optional
        Redo every map, even those with complete, matching results.
    recursive : bool, optional
        Search folders recursively.
    progress : bool, optional
        Show a progress bar (tqdm, else a line) with rate and ETA on stderr.
    analyze : callable, optional
        Replaces :func:`ptnp_gpu.pipeline.run_analyze` (same signature; must be
        picklable for the workers).
    callback : callable, optional
        Called in this process as ``callback(map_path, record)`` after each map
        of this run finishes (``record`` is its manifest entry).

    Returns
    -------
    BatchResult
        ``result.ok`` is False when some map failed (``failures.csv``).

    Raises
    ------
    InputError
        Missing inputs, no maps, an output path that is a file, bad options.
    """
    t_start = time.perf_counter()
    paths = collect_maps(inputs, recursive=recursive)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder")
    if isinstance(voxel_size_A, str) and voxel_size_A.strip().lower() == "auto":
        voxel_size_A = "auto"                 # per map, from its lattice fringes (pipeline.run_analyze)
    elif voxel_size_A is not None and not (float(voxel_size_A) > 0 and math.isfinite(float(voxel_size_A))):
        raise InputError(f"voxel size must be a positive number of Å or 'auto', got {voxel_size_A}")
    if int(retries) < 0:
        raise InputError(f"retries must be 0 or more, got {retries}")
    if analyze is None:
        try:
            analyze = _default_analyze()
        except ImportError as exc:
            raise RuntimeError(f"the analysis pipeline is not importable here ({exc})") from exc
        from .detect import DetectOptions      # a bad option is a bad invocation, not N failures
        from .pipeline import ANALYSIS_OPTIONS
        from .statistics import check_statistics_options
        o = dict(opts or {})
        DetectOptions.from_kwargs(**{k: v for k, v in o.items()
                                     if k not in ("backend", "figures") + ANALYSIS_OPTIONS})
        check_statistics_options(o.get("depth", "radial"), o.get("blur_correction", "auto"),
                                 o.get("fit_baseline", "solvent"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with _batch_lock(out_dir):         # one batch at a time per folder
        _clean_partials(out_dir)
        params = _canonical({"element": element, "voxel_size_A": voxel_size_A if voxel_size_A in (None, "auto")
                             else float(voxel_size_A), **(opts or {})})
        manifest = read_manifest(out_dir)
        names = _assign_names(paths, manifest)
        result = BatchResult(out_dir=out_dir, n_maps=len(paths))

        todo = []   # (path, name, sha)
        for p in paths:
            key, name, rec = str(p), names[p], manifest.get(str(p))
            try:
                sha = _checksum(p, rec)
                st = p.stat()
            except OSError as exc:
                manifest[key] = {"map": key, "name": name, "sha256": None, "params": params,
                                 "version": __version__, "status": "failed",
                                 "error_type": type(exc).__name__, "error": str(exc)}
                continue
            ident = {"map": key, "name": name, "sha256": sha, "size": st.st_size,
                     "mtime_ns": st.st_mtime_ns, "params": params, "version": __version__}
            done_files = (out_dir / name / "summary.json").is_file() and not force
            if not force and _same_inputs(rec, sha, params, __version__) and rec.get("name") == name:
                if rec.get("status") == "done" and done_files:
                    manifest[key] = {**rec, **ident}
                    result.n_skipped += 1
                    continue
                if rec.get("status") == "failed" and rec.get("error_type") == "InputError" \
                        and not retry_failed:
                    manifest[key] = {**rec, **ident}
                    result.n_skipped += 1
                    continue
            if done_files and _same_inputs(_read_sidecar(out_dir / name), sha, params, __version__):
                manifest[key] = {**ident, "status": "done", "adopted": True}   # manifest was lost
                result.n_skipped += 1
                continue
            manifest[key] = {**ident, "status": "pending"}
            todo.append((p, name, sha))
        _write_manifest(out_dir, manifest)
        logger.info("%d maps: %d to analyse, %d already done", len(paths), len(todo), result.n_skipped)

        try:
            if todo:
                result.cluster = _run_todo(todo, out_dir, params, manifest, result,
                                           scheduler=scheduler, client=client, n_workers=n_workers,
                                           gpus=gpus, retries=int(retries), progress=progress,
                                           analyze=analyze, callback=callback)
        finally:                                     # also on Ctrl-C: keep what finished
            _clean_partials(out_dir)
            _write_manifest(out_dir, manifest)
        records = [manifest[str(p)] for p in paths]
        result.failures = [r for r in records if r.get("status") != "done"]
        _write_failures(out_dir, result.failures)
        result.rows = aggregate(out_dir, records)
        result.elapsed_s = time.perf_counter() - t_start
        return result


def _run_todo(todo, out_dir, params, manifest, result, *, scheduler, client, n_workers, gpus,
              retries, progress, analyze, callback) -> dict:
    from distributed import Client, as_completed
    from distributed.scheduler import KilledWorker

    stack = contextlib.ExitStack()
    with stack:
        if client is not None:
            info = {"kind": "external", "scheduler": client.scheduler.address}
        elif scheduler:
            try:
                client = stack.enter_context(Client(scheduler, timeout="30s"))
            except (OSError, TimeoutError) as exc:
                raise InputError(f"cannot reach Dask scheduler {scheduler}: {exc}") from None
            info = {"kind": "external", "scheduler": scheduler}
        else:
            sized = not n_workers and gpus not in (None, "none", False)     # only GPU plans use it
            info = plan_workers(len(todo), n_workers, gpus,
                                map_bytes=_largest_map_bytes(p for p, _, _ in todo) if sized else None)
            cluster = stack.enter_context(start_cluster(info, allowed_failures=retries))
            client = stack.enter_context(Client(cluster))
        logger.info("dask cluster: %s", info)
        futures = {}
        for p, name, sha in todo:
            fut = client.submit(analyze_one, str(p), str(out_dir), name, sha, params, analyze,
                                key=f"ptnp-analyze-{name}-{uuid.uuid4().hex[:8]}", pure=False,
                                retries=retries)
            futures[fut] = (p, name)
        bar = _Progress(len(todo), progress)
        t_flush = time.perf_counter()
        try:
            for fut in as_completed(futures):
                p, name = futures.pop(fut)
                rec = manifest[str(p)]
                try:
                    res = fut.result()
                except KilledWorker as exc:   # the scheduler's allowed-failures ran out
                    res = {"status": "failed", "error_type": "KilledWorker",
                           "error": f"workers died while analysing this map (out of memory or a "
                                    f"crash?): {exc}"}
                except Exception as exc:  # noqa: BLE001 - one map's bug must not stop the batch
                    res = {"status": "failed", "error_type": type(exc).__name__,
                           "error": f"{exc}".strip() or type(exc).__name__,
                           "traceback": "".join(traceback.format_exception(exc))[-4000:]}
                fut.release()
                summary = res.pop("summary", None) or {}
                for k in ("error", "error_type", "traceback"):
                    rec.pop(k, None)
                rec.update(res)
                rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if rec["status"] == "done":
                    result.n_analysed += 1
                    rec["n_atoms"] = summary.get("n_atoms")
                    rec["backend"] = summary.get("backend")
                else:
                    msg = f"{p} failed: {rec.get('error_type')}: {rec.get('error')}"
                    if not bar.note(f"ptnp batch: {msg}"):
                        logger.warning("%s", msg)
                bar.update(failed=rec["status"] != "done")
                if callback is not None:
                    callback(p, rec)
                if time.perf_counter() - t_flush > 2.0:   # keep the manifest close to the truth
                    _write_manifest(out_dir, manifest)
                    t_flush = time.perf_counter()
        finally:
            bar.close()
            for fut in futures:
                fut.cancel()
    return info
