"""The CuPy code path run on the host: CPU-only checks of GPU behaviour.

A GPU is not always at hand, yet the GPU path has its own rules: device data
must never be turned into NumPy implicitly (CuPy raises ``TypeError``), and
every host read of device data (``float(x)``, ``int(x)``, ``bool(x)``,
``x.get()``, and the CuPy functions whose output size depends on the data:
``nonzero``, ``unique``, ``bincount``, boolean-mask indexing,
``ndimage.label``, ...) stalls the host until the device has caught up and
leaves the device idle until the host queues more work; one inside a loop
costs that once per pass.

:func:`emulate` makes the library take its CuPy branches on the host. Arrays
are NumPy arrays behind :class:`EmulatedArray`, which behaves like a CuPy
array where it matters here:

* ``np.asarray(device_array)`` raises ``TypeError`` as CuPy's does; ``.get()``
  and :func:`ptnp_gpu.backend.to_host` are the explicit copies;
* each call through the backend's ``xp`` / ``ndi`` / ``fft``, each ufunc and
  each gather or scatter counts as one kernel launch (views do not);
* each host read counts as a synchronisation, with the library line that
  caused it, so a sync inside a loop shows as one line with many counts;
* custom kernels (:mod:`ptnp_gpu.gpu_kernels`) run through their CPU twins and
  count as one launch each;
* host (NumPy) arrays handed to device functions are recorded: CuPy refuses
  most of them;
* the bytes each launch reads and writes, the device memory held by arrays
  (peak, and the line that reached it) and the host time spent outside
  device calls are recorded too (:class:`DeviceAudit`).

The counts are a model of CuPy, not a measurement: which library calls
synchronise follows CuPy 14 (its source marks them), launches are counted
per call, not per CUDA kernel, and time on the device is not modelled.

Examples
--------
>>> import numpy as np
>>> from ptnp_gpu.device_emulation import emulate
>>> with emulate() as audit:
...     xp = audit.backend.xp
...     a = xp.arange(10.0)
...     n = int((a > 4).sum())        # one host read
>>> n, audit.syncs
(5, 1)
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import sys
import time
import types
import weakref
from pathlib import Path

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import backend as _be

__all__ = ["EmulatedArray", "DeviceAudit", "emulate"]

_PKG_DIR = str(Path(__file__).resolve().parent)
_THIS = str(Path(__file__).resolve())
_PASS_THROUGH = {_THIS, str(Path(_be.__file__).resolve())}   # sites are named by their callers

# CuPy functions (xp namespace) that synchronise: output size or a check depends on the data
# (CuPy 14 source: "synchronize" marks; bincount checks x < 0 and reads max(x): two reads)
_XP_SYNCS = {"nonzero": 1, "flatnonzero": 1, "argwhere": 1, "unique": 1, "bincount": 2,
             "compress": 1, "extract": 1, "setdiff1d": 1, "intersect1d": 1, "union1d": 1,
             "trim_zeros": 1, "median": 1, "nanmedian": 1, "asnumpy": 1, "average": 1}
# ndimage: label returns a host count; the measurements read label ranges
_NDI_SYNCS = {"label": 1, "find_objects": 1, "sum_labels": 1, "sum": 1, "mean": 1, "variance": 1,
              "standard_deviation": 1, "minimum": 1, "maximum": 1, "median": 1,
              "minimum_position": 1, "maximum_position": 1, "extrema": 1, "center_of_mass": 1,
              "labeled_comprehension": 1, "value_indices": 1}
# host → device copies, not kernels on device data; host arrays are their normal input
_H2D = {"asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray", "frombuffer"}
# calls that read only metadata (no kernel): shapes, dtypes, views
_NO_LAUNCH = {"shape", "ndim", "size", "result_type", "can_cast", "dtype", "iscomplexobj",
              "isrealobj", "broadcast_shapes", "promote_types", "finfo", "iinfo", "isscalar",
              "reshape", "ravel", "transpose", "swapaxes", "moveaxis", "expand_dims", "squeeze",
              "broadcast_to", "atleast_1d", "atleast_2d", "atleast_3d", "next_fast_len"}
_METHOD_NO_LAUNCH = {"reshape", "view", "transpose", "swapaxes", "squeeze", "__array_namespace__"}
_METHOD_SYNCS = {"item": 1, "tolist": 1, "nonzero": 1, "get": 1, "tobytes": 1}


class DeviceAudit:
    """Counts of one emulation: kernel launches, synchronisations and host copies.

    Attributes
    ----------
    launches, syncs, h2d : int
        Totals.
    bytes : int
        Bytes of the arrays read and written by the launches (inputs plus
        outputs, once each): divided by the device's bandwidth, a lower bound
        of its time for the memory-bound work. ``byte_sites`` splits it by line.
    device_s : float
        Host seconds spent executing what stands for device work (NumPy
        calls on emulated arrays, kernel twins).
    inside_s : float
        Seconds inside emulated device calls: ``device_s`` plus this module's
        bookkeeping. A block's wall time minus ``inside_s`` is the library's own
        host work (Python and NumPy outside device arrays), which stays on the
        host when a GPU runs the device part.
    sync_sites : Counter
        ``"module.py:line function"`` of the library line behind each sync.
    h2d_sites : Counter
        The same for each host-to-device copy.
    launch_sites : Counter
        The same for launches.
    host_mixing : Counter
        Library lines that passed a NumPy array to a device function (CuPy
        raises ``TypeError`` for most of them).
    calls : Counter
        ``(function, keyword names)`` of every call through the backend's
        namespaces (``cupy.where``, ``cupyx.scipy.ndimage.label``...): what
        the GPU path asks of CuPy.
    live_bytes, peak_bytes, peak_site : int, int, str
        Device memory held now and at most since the last :meth:`reset`: the
        buffers behind emulated arrays, each counted once until freed (CuPy's
        pool keeps freed blocks for reuse; temporaries inside one library call
        are not seen), and the library line that reached the peak.
    marks : list of dict
        Running totals at each stream synchronise (the library's stage ends)
        and at each :meth:`mark`.
    """

    def __init__(self):
        self.byte_sites: collections.Counter = collections.Counter()
        self.sync_sites: collections.Counter = collections.Counter()
        self.launch_sites: collections.Counter = collections.Counter()
        self.h2d_sites: collections.Counter = collections.Counter()
        self.host_mixing: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.marks: list[dict] = []
        self.backend: _be.Backend | None = None
        self._held: dict[int, int] = {}
        self._depth = 0
        self._site_now = ""
        self.live_bytes = 0
        self.reset()

    def _hold(self, a) -> None:
        """Count the buffer behind ``a`` as device memory until NumPy frees it."""
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        key = id(root)
        if key in self._held or root.base is not None:     # counted, or not NumPy's own buffer
            return
        self._held[key] = root.nbytes
        self.live_bytes += root.nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.peak_site = _site()
        weakref.finalize(root, self._release, key)

    def _release(self, key) -> None:
        self.live_bytes -= self._held.pop(key, 0)

    def mark(self) -> dict:
        """The running totals now (also taken at every stream synchronise: stage ends)."""
        m = {"launches": self.launches, "syncs": self.syncs, "h2d": self.h2d, "bytes": self.bytes,
             "device_s": self.device_s, "inside_s": self.inside_s, "t": time.perf_counter()}
        self.marks.append(m)
        return m

    def reset(self) -> None:
        """Zero every count (e.g. after a warm-up); the memory peak restarts from what is held."""
        self.launches = self.syncs = self.h2d = self.bytes = 0
        self.device_s = self.inside_s = 0.0
        self.restart_peak()
        for counter in (self.byte_sites, self.sync_sites, self.launch_sites, self.h2d_sites,
                        self.host_mixing, self.calls):
            counter.clear()
        self.marks.clear()

    def restart_peak(self) -> None:
        """Measure the memory peak from now on (from what is held now)."""
        self.peak_bytes, self.peak_site = self.live_bytes, ""

    def _run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` timed as device work."""
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.device_s += time.perf_counter() - t0

    def _launch(self, n: int = 1) -> None:
        self.launches += n
        self._site_now = _site()
        self.launch_sites[self._site_now] += n

    def _traffic(self, *objs) -> None:
        """Bytes of the arrays a launch reads and writes (after :meth:`_launch`)."""
        b = _nbytes(objs)
        self.bytes += b
        self.byte_sites[self._site_now] += b

    def _sync(self, n: int = 1) -> None:
        if n:
            self.syncs += n
            self.sync_sites[_site()] += n

    def _host_arg(self, what: str) -> None:
        self.host_mixing[f"{_site()} ({what})"] += 1

    def summary(self, top: int = 12) -> dict:
        """Totals and the busiest lines, JSON-able."""
        return {"launches": self.launches, "syncs": self.syncs, "h2d_copies": self.h2d,
                "peak_device_bytes": self.peak_bytes, "peak_site": self.peak_site,
                "device_work_s": self.device_s, "bytes": self.bytes,
                "byte_sites": dict(self.byte_sites.most_common(top)),
                "sync_sites": dict(self.sync_sites.most_common(top)),
                "launch_sites": dict(self.launch_sites.most_common(top)),
                "h2d_sites": dict(self.h2d_sites.most_common(top)),
                "host_mixing": dict(self.host_mixing.most_common(top))}


_AUDIT: DeviceAudit | None = None


def _site() -> str:
    """The innermost library frame outside this module and :mod:`ptnp_gpu.backend` (whose
    ``to_host`` / ``synchronize`` are named by their callers): 'file.py:line function'."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn not in _PASS_THROUGH and fn.startswith(_PKG_DIR):
            return f"{Path(fn).name}:{f.f_lineno} {f.f_code.co_name}"
        f = f.f_back
    return "<outside ptnp_gpu>"


def _nbytes(x) -> int:
    if isinstance(x, EmulatedArray):
        return x._a.nbytes
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return sum(_nbytes(getattr(x, f.name)) for f in dataclasses.fields(x))
    return 0


def _is_host_array(x) -> bool:
    return isinstance(x, np.ndarray) and x.ndim > 0


def _unwrap(x, audit=None, what=""):
    """EmulatedArray → its NumPy array, through tuples, lists and dicts."""
    if isinstance(x, EmulatedArray):
        return x._a
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_unwrap(v, audit, what) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, audit, what) for k, v in x.items()}
    if audit is not None and _is_host_array(x):
        audit._host_arg(what)
    return x


def _wrap(x):
    """NumPy arrays and scalars → EmulatedArray (CuPy reductions give 0-d device arrays)."""
    if isinstance(x, EmulatedArray):
        return x
    if isinstance(x, np.ndarray):
        return EmulatedArray(x)
    if isinstance(x, np.generic):
        return EmulatedArray(np.asarray(x))
    if isinstance(x, tuple) and hasattr(x, "_fields"):          # NamedTuple
        return type(x)(*(_wrap(v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_wrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _wrap(v) for k, v in x.items()}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _wrap(getattr(x, f.name))
                                         for f in dataclasses.fields(x) if f.init})
    return x


def _inside(fn):
    """Time spent in an emulated device call (its NumPy work and this module's bookkeeping),
    so that the rest of a block's wall time is the library's own host work."""
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        audit = _AUDIT
        if audit is None or audit._depth:               # nested: the outer call times it
            return fn(*args, **kwargs)
        audit._depth += 1
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            audit.inside_s += time.perf_counter() - t0
            audit._depth -= 1
    return timed


def _audit() -> DeviceAudit:
    if _AUDIT is None:
        raise RuntimeError("an EmulatedArray was used outside ptnp_gpu.device_emulation.emulate()")
    return _AUDIT


def _basic_index(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice)) for k in keys)


def _has_bool_mask(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, np.ndarray) and k.dtype == bool and k.ndim > 0 for k in keys)


class EmulatedArray(NDArrayOperatorsMixin):
    """A NumPy array posing as a CuPy array (see the module docstring)."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray):
        self._a = a
        if _AUDIT is not None:
            _AUDIT._hold(a)

    def __del__(self):
        # freeing a large NumPy buffer takes host time that a device pool does not: it counts
        # as inside the emulation, not as the library's host work
        audit = _AUDIT
        if audit is None:
            return
        t0 = time.perf_counter()
        try:
            del self._a
        except AttributeError:
            return
        if not audit._depth:
            audit.inside_s += time.perf_counter() - t0

    # --- the device boundary
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly. "
                        "(ptnp_gpu device emulation, as CuPy)")

    @_inside
    def get(self, stream=None, order="C", out=None):
        _audit()._sync()
        return np.array(self._a, order=order)

    def _host_read(self):
        _audit()._sync()
        return self._a

    def __float__(self):
        return float(self._host_read())

    def __int__(self):
        return int(self._host_read())

    def __index__(self):
        return int(self._host_read())

    def __bool__(self):
        return bool(self._host_read())

    def __complex__(self):
        return complex(self._host_read())

    def __repr__(self):
        return f"emulated_device_array({self._host_read()!r})"

    def __str__(self):
        return str(self._host_read())

    def __format__(self, spec):
        return format(self._host_read()[()] if self._a.ndim == 0 else self._a, spec)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        # a host loop over device data: each element is a device scalar
        _audit()._launch(len(self._a))
        return iter([EmulatedArray(np.asarray(v)) if not isinstance(v, np.ndarray) else EmulatedArray(v)
                     for v in self._a])

    __hash__ = None

    # --- arithmetic and NumPy dispatch
    @_inside
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        audit = _audit()
        args = _unwrap(inputs, audit, f"np.{ufunc.__name__}")
        out = kwargs.get("out")                 # NumPy hands ``out`` over as a tuple
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o, audit, f"np.{ufunc.__name__} out") for o in out)
        audit._launch()
        res = audit._run(getattr(ufunc, method), *args, **kwargs)
        audit._traffic(args, kwargs.get("out"), res)
        if method == "at":
            return None
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(res)

    def __array_function__(self, func, types_, args, kwargs):
        return _call(func, func.__name__, _XP_SYNCS, args, kwargs)

    # --- indexing
    @_inside
    def __getitem__(self, key):
        audit = _audit()
        k = _unwrap(key, audit, "index")
        if _has_bool_mask(k):
            audit._sync()                      # the mask's count sizes the result
        gather = not _basic_index(k)           # views launch nothing
        if gather:
            audit._launch()
        out = audit._run(self._a.__getitem__, k)
        if gather:
            audit._traffic(k, out, out)
        return _wrap(out)

    @_inside
    def __setitem__(self, key, value):
        audit = _audit()
        k = _unwrap(key, audit, "index")
        audit._launch()
        v = _unwrap(value, audit, "setitem value")
        audit._run(self._a.__setitem__, k, v)
        audit._traffic(k, v, v if isinstance(v, np.ndarray) else None)

    # --- attributes and methods of the underlying array
    @property
    def T(self):
        return EmulatedArray(self._a.T)

    @property
    def real(self):
        return EmulatedArray(self._a.real)

    @property
    def imag(self):
        return EmulatedArray(self._a.imag)

    def __getattr__(self, name):
        if name == "_a" or name.startswith("__array"):
            # no __array_interface__ / __array_struct__: NumPy would read the data through them
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return attr
        syncs = _METHOD_SYNCS.get(name, 0)

        @_inside
        def method(*args, **kwargs):
            audit = _audit()
            if name not in _METHOD_NO_LAUNCH:
                audit._launch()
            audit._sync(syncs)
            a, kw = _unwrap(args, audit, f".{name}"), _unwrap(kwargs, audit, f".{name}")
            if name in _STABLE_SORTS:
                kw = _cupy_sort_kind(f".{name}", kw)
            out = audit._run(attr, *a, **kw)
            if name not in _METHOD_NO_LAUNCH:
                audit._traffic(self._a, a, out)
            return out if name in ("tolist", "item", "tobytes") else _wrap(out)
        return method

    def __copy__(self):
        _audit()._launch()
        return EmulatedArray(self._a.copy())

    def __deepcopy__(self, memo):
        return self.__copy__()


def _cupyx_next_fast_len(target, real=False):
    """``cupyx.scipy.fft.next_fast_len``: the smallest 2·3·5·7-smooth length ≥ ``target``
    (``real`` ignored), where SciPy's real transforms take 2·3·5-smooth ones (62: 63, not 64).
    Code that pads by the backend's own rule pads differently on a GPU; emulated, it does too."""
    target = int(target)
    if target <= 1:
        return max(target, 0) if target <= 0 else 1
    best = None
    p7 = 1
    while p7 < 2 * target:
        p5 = p7
        while p5 < 2 * target:
            p3 = p5
            while p3 < 2 * target:
                v = p3
                while v < target:
                    v *= 2
                if best is None or v < best:
                    best = v
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


_STABLE_SORTS = ("argsort", "sort")


def _cupy_sort_kind(name, kw):
    """CuPy's sorts are always stable and take no other ``kind``: NumPy's default quicksort
    orders ties differently, which the emulated device must not hide."""
    kind = kw.get("kind")
    if kind not in (None, "stable"):
        raise ValueError(f"{name}: CuPy sorts take only kind=None or 'stable', not {kind!r}")
    return {**kw, "kind": "stable"}


@_inside
def _call(func, name, syncs_table, args, kwargs):
    audit = _audit()
    out_arg = kwargs.get("out")
    what = "" if name in _H2D else name
    a = _unwrap(args, None if name in _H2D else audit, what)
    kw = _unwrap(kwargs, None if name in _H2D else audit, what)
    if name in _H2D:
        if args and not isinstance(args[0], EmulatedArray):    # host data, scalars included
            audit.h2d += 1
            audit.h2d_sites[_site()] += 1
    elif name not in _NO_LAUNCH:
        audit._launch()
    n_sync = syncs_table.get(name, 0)
    if syncs_table is _NDI_SYNCS and name == "label" and isinstance(kwargs.get("structure"), EmulatedArray):
        n_sync += 1                              # cupyx reads a device structure back (cupy.asnumpy)
    if syncs_table is _XP_SYNCS:
        if name == "where" and len(args) == 1:
            n_sync = 1
        if name == "histogram" and kwargs.get("range") is None:
            n_sync = 2                           # range read from the data: min, max checks
        if name == "repeat" and len(args) > 1 and getattr(args[1], "ndim", 0) > 0:
            n_sync = 1
    audit._sync(n_sync)
    if name in _STABLE_SORTS and syncs_table is _XP_SYNCS:
        kw = _cupy_sort_kind(name, kw)
    res = audit._run(func, *a, **kw)
    if name not in _H2D and name not in _NO_LAUNCH:
        audit._traffic(a, kw, res)
    if isinstance(out_arg, EmulatedArray):
        return out_arg
    if name in ("count_nonzero", "array_equal", "allclose", "array_equiv") and \
            isinstance(res, (bool, int, float)):
        res = np.asarray(res)                   # CuPy answers with a 0-d device array
    return _wrap(res)


class _Namespace:
    """A module seen through the emulated device (xp, xp.linalg, ndi, fft)."""

    def __init__(self, mod, syncs_table, name):
        self._mod = mod
        self._syncs = syncs_table
        self.__name__ = name

    def __getattr__(self, name):
        obj = getattr(self._mod, name)
        if isinstance(obj, types.ModuleType):
            return _Namespace(obj, {}, f"{self.__name__}.{name}")
        if isinstance(obj, (type, np.ufunc)) or not callable(obj):
            return obj                   # dtypes, constants; ufuncs dispatch on their inputs

        qualname = f"{self.__name__}.{name}"
        syncs = self._syncs

        @_inside
        def f(*args, **kwargs):
            _audit().calls[(qualname, tuple(sorted(kwargs)))] += 1
            return _call(obj, name, syncs, args, kwargs)
        f.__name__ = name
        setattr(self, name, f)             # later lookups find it directly
        return f


class _Stream:
    def synchronize(self):
        audit = _audit()
        audit._sync()
        audit.mark()


class _Event:
    """``cupy.cuda.Event``: ``record`` queues a mark (no host read; the audit takes its running
    totals there, as at a stream synchronise: stage ends), ``synchronize`` waits for it (one host
    read); the emulated device has no queue, so a mark's time is the host's clock."""

    def __init__(self, *args, **kwargs):
        self._t = None

    def record(self, stream=None):
        self._t = time.perf_counter()
        _audit().mark()                  # a stage boundary (the library's stage clock records one)

    def synchronize(self):
        _audit()._sync()


class _Cuda:
    """The parts of ``cupy.cuda`` the library touches."""

    Event = _Event

    @staticmethod
    def get_current_stream():
        return _Stream()

    @staticmethod
    def get_elapsed_time(start, end):
        """Milliseconds between two recorded events (``cupy.cuda.get_elapsed_time``)."""
        return 1e3 * (end._t - start._t)

    class Device:                       # no memory query: callers fall back to fixed budgets
        def __init__(self, *a):
            raise RuntimeError("no memory query on the emulated device")


def _scatter(ufunc):
    @_inside
    def scatter(out, index, values):
        audit = _audit()
        audit._launch()
        args = _unwrap(out), _unwrap(index, audit, "scatter"), _unwrap(values, audit, "scatter")
        audit._run(ufunc.at, *args)
        audit._traffic(args)
    return scatter


def _kernel_twin(fn):
    """A custom-kernel entry point run through its CPU twin: one launch."""
    @_inside
    def twin(*args, **kwargs):
        if not any(isinstance(v, EmulatedArray) for v in (*args, *kwargs.values())):
            return fn(*args, **kwargs)          # NumPy inputs: the host path, untouched
        audit = _audit()
        audit._launch()
        a, kw = _unwrap(args), _unwrap(kwargs)
        out = audit._run(fn, *a, **kw)
        audit._traffic(a, kw, out)
        return _wrap(out)
    twin.__wrapped__ = fn
    twin.__name__ = fn.__name__
    twin._ptnp_twin_of = fn
    return twin


def _package_modules():
    """The loaded ``ptnp_gpu`` modules."""
    return [mod for name, mod in list(sys.modules.items())
            if mod is not None and (name == "ptnp_gpu" or name.startswith("ptnp_gpu."))]


_KERNEL_ENTRY_POINTS = ("render_windows", "window_normal_equations", "window_pearson",
                        "mean_shift_centres", "label_moments", "_cell_pairs_pass",
                        "_cell_keys", "local_maxima", "segment_sum_columns", "shifted_moments",
                        "thin_peaks", "atom_filter", "rfft_shell_index", "_bucket_starts",
                        "_solve_normal_device", "pair_affine_sums",
                        "radial_fit_sums", "label_mask", "label_above",
                        "occupancy_above", "filter1d_pass", "_pair_table_pass",
                        "outside_balls", "linear_at")


@contextlib.contextmanager
def emulate():
    """Run the library's CuPy path on the host for the duration of the block.

    Yields a :class:`DeviceAudit` whose ``backend`` is the emulated device; it
    is also the default backend inside the block, so ``detect_atoms(dmap)``
    takes it without a ``backend=`` argument. Not thread-safe; not re-entrant.
    """
    global _AUDIT
    import scipy.fft
    import scipy.ndimage

    from . import gpu_kernels
    if _AUDIT is not None:
        raise RuntimeError("device emulation is already active")
    audit = DeviceAudit()
    xp = _Namespace(np, _XP_SYNCS, "cupy")
    xp.cuda = _Cuda()
    xp.asnumpy = lambda a, *args, **kw: a.get() if isinstance(a, EmulatedArray) else np.asarray(a)
    fft = _Namespace(scipy.fft, {}, "cupyx.scipy.fft")
    fft.next_fast_len = _cupyx_next_fast_len          # cuFFT's sizes, not pocketfft's
    ndi = _Namespace(scipy.ndimage, _NDI_SYNCS, "cupyx.scipy.ndimage")
    # the CuPy backend's own filters (one ptnp_filter1d launch per axis), as on a GPU
    from . import device_ndimage
    ndi.gaussian_filter, ndi.uniform_filter = device_ndimage.gaussian_filter, device_ndimage.uniform_filter
    backend = _be.Backend("cupy", xp, ndi, fft)
    audit.backend = backend
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = _scatter(np.add)
    cupyx.scatter_max = _scatter(np.maximum)
    cupyx.scatter_min = _scatter(np.minimum)
    # every module attribute bound to a kernel entry point, e.g. detect.window_pearson
    originals = {name: getattr(gpu_kernels, name) for name in _KERNEL_ENTRY_POINTS}
    patched = [(mod, attr, fn) for mod in _package_modules() for attr, fn in list(vars(mod).items())
               if any(fn is orig for orig in originals.values())]
    saved = {"backends": dict(_be._BACKENDS), "default": _be._DEFAULT,
             "cupyx": sys.modules.get("cupyx")}
    EmulatedArray.__module__ = "cupy._emulated"          # backend.namespace() recognises CuPy by module
    try:
        for mod, attr, orig in patched:
            setattr(mod, attr, _kernel_twin(orig))
        _be._BACKENDS["cupy"] = backend
        _be._DEFAULT = backend
        sys.modules["cupyx"] = cupyx
        _AUDIT = audit
        yield audit
    finally:
        _AUDIT = None
        # modules imported inside the block bound the twins too: restore every one
        for mod in _package_modules():
            for attr, fn in list(vars(mod).items()):
                if hasattr(fn, "_ptnp_twin_of"):
                    setattr(mod, attr, fn._ptnp_twin_of)
        _be._BACKENDS.clear()
        _be._BACKENDS.update(saved["backends"])
        _be._DEFAULT = saved["default"]
        if saved["cupyx"] is None:
            sys.modules.pop("cupyx", None)
        else:
            sys.modules["cupyx"] = saved["cupyx"]
        EmulatedArray.__module__ = __name__
