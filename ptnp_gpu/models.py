"""Atomic models: reading (PDB, mmCIF, CSV, XYZ, our result folders) and writing (gemmi).

A model is a :class:`Model`: positions in Å (N, 3), element symbols, and
optional per-atom B (Å², B = 8π²·U_iso) and ANISOU U (N, 6, Å², order U11 U22
U33 U12 U13 U23), plus optional extra per-atom columns.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["Model", "read_model", "write_pdb", "write_cif", "write_structure", "atomic_write", "atomic_path",
           "json_safe", "write_json", "write_table", "format_cell"]

EIGHT_PI2 = 8.0 * np.pi ** 2


@dataclass
class Model:
    xyz_A: np.ndarray
    elements: list = field(default_factory=list)
    b_A2: np.ndarray | None = None
    u_aniso_A2: np.ndarray | None = None
    columns: dict = field(default_factory=dict)

    def __post_init__(self):
        self.xyz_A = np.asarray(self.xyz_A, dtype=np.float64).reshape(-1, 3)
        if not self.elements:
            self.elements = ["Pt"] * len(self.xyz_A)

    def __len__(self):
        return len(self.xyz_A)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    Readers never see a half-written file, and a failure leaves nothing behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path, write_fn, mode="w"):
    """Call ``write_fn(fileobj)`` on a temporary file, then rename it to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            write_fn(fh)
    return Path(path)


def json_safe(obj):
    """Plain JSON types from NumPy scalars/arrays, dicts, lists and dataclass-like objects.

    Non-finite floats become ``None`` (JSON has no NaN).
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return json_safe(vars(obj))
    return obj


def write_json(path, obj, indent: int = 2):
    """Write ``obj`` (made JSON-safe) atomically."""
    return atomic_write(path, lambda fh: json.dump(json_safe(obj), fh, indent=indent, allow_nan=False))


def format_cell(v) -> str:
    """One table cell: integers and booleans as 0/1 integers, floats with 6 significant digits."""
    if isinstance(v, (str, np.str_)):
        return str(v)
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "nan" if not np.isfinite(v) else f"{v:.6g}"


def write_table(path, columns: dict):
    """Write equal-length columns (name → sequence) as CSV, atomically."""
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0

    def write(fh):
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(names)
        for i in range(n):     # text formatting, after all numeric work is done
            w.writerow([format_cell(columns[k][i]) for k in names])
    return atomic_write(path, write)


def _structure(model: Model):
    import gemmi
    st = gemmi.Structure()
    st.name = "ptnp"
    st.cell = gemmi.UnitCell()  # no crystal cell: a particle in a map frame
    m = gemmi.Model(1) if hasattr(gemmi.Model, "__init__") else gemmi.Model("1")
    ch = gemmi.Chain("A")
    n = len(model)
    b = np.zeros(n) if model.b_A2 is None else np.asarray(model.b_A2, float)
    for i in range(n):
        el = str(model.elements[i]).capitalize()
        res = gemmi.Residue()
        res.name = el.upper()[:3]
        res.seqid = gemmi.SeqId(i + 1, " ")
        res.het_flag = "H"
        at = gemmi.Atom()
        at.name = el.upper()
        at.element = gemmi.Element(el)
        at.pos = gemmi.Position(*model.xyz_A[i])
        at.occ = 1.0
        at.b_iso = float(b[i]) if np.isfinite(b[i]) else 0.0
        if model.u_aniso_A2 is not None and np.all(np.isfinite(model.u_aniso_A2[i])):
            u = model.u_aniso_A2[i]
            at.aniso = gemmi.SMat33f(*(float(v) for v in u))
        res.add_atom(at)
        ch.add_residue(res)
    m.add_chain(ch)
    st.add_model(m)
    st.setup_entities()
    return st


def write_pdb(path, model: Model):
    """Write a PDB file (B = 8π²·U_iso, ANISOU when present), atomically.

    PDB atom serial numbers stop at 99,999; write mmCIF for bigger models.
    """
    import gemmi
    st = _structure(model)
    text = st.make_pdb_string(gemmi.PdbWriteOptions(minimal=True))
    return atomic_write(path, lambda fh: fh.write(text))


def write_cif(path, model: Model):
    """Write an mmCIF file with B and anisotropic U, atomically."""
    st = _structure(model)
    doc = st.make_mmcif_document()
    text = doc.as_string()
    return atomic_write(path, lambda fh: fh.write(text))


def write_structure(out_dir, model: Model, stem="atoms"):
    out_dir = Path(out_dir)
    write_pdb(out_dir / f"{stem}.pdb", model)
    write_cif(out_dir / f"{stem}.cif", model)


def _read_gemmi(path: Path) -> Model:
    import gemmi
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable PDB/mmCIF model ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    xyz, els, b, aniso, has_aniso = [], [], [], [], False
    if len(st) == 0:
        raise InputError(f"{path}: model file holds no atoms")
    for ch in st[0]:
        for res in ch:
            for at in res:
                xyz.append((at.pos.x, at.pos.y, at.pos.z))
                els.append(at.element.name)
                b.append(at.b_iso)
                if at.aniso.nonzero():
                    has_aniso = True
                u = at.aniso
                aniso.append((u.u11, u.u22, u.u33, u.u12, u.u13, u.u23))
    if not xyz:
        raise InputError(f"{path}: model file holds no atoms")
    return Model(np.array(xyz), els, np.array(b), np.array(aniso) if has_aniso else None)


def _read_xyz(path: Path) -> Model:
    try:
        lines = path.read_text().splitlines()
        n = int(lines[0].split()[0])
        xyz, els = [], []
        for ln in lines[2:2 + n]:
            p = ln.split()
            els.append(p[0])
            xyz.append([float(v) for v in p[1:4]])
    except Exception:  # noqa: BLE001
        raise InputError(f"{path}: not a valid XYZ file (count line, comment line, then 'element x y z' lines)") from None
    if len(xyz) != n or n == 0:
        raise InputError(f"{path}: XYZ file declares {n} atoms but holds {len(xyz)}")
    return Model(np.array(xyz), els)


def _read_csv(path: Path) -> Model:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except Exception:  # noqa: BLE001
        raise InputError(f"{path}: not a readable CSV file") from None
    if not rows:
        raise InputError(f"{path}: CSV model holds no atoms")
    keys = {k.strip().lower(): k for k in rows[0].keys() if k}
    names = [("x", "y", "z"), ("x_a", "y_a", "z_a")]
    cols = next((c for c in names if all(k in keys for k in c)), None)
    if cols is None:
        raise InputError(f"{path}: CSV model needs columns x, y, z (Å); found {list(rows[0].keys())}")
    try:
        xyz = np.array([[float(r[keys[c]]) for c in cols] for r in rows])
    except ValueError:
        raise InputError(f"{path}: non-numeric coordinates in CSV model") from None
    els = [r[keys["element"]] for r in rows] if "element" in keys else []
    extra = {}
    for low, k in keys.items():
        if low in cols or low == "element":
            continue
        try:
            extra[k] = np.array([float(r[k]) for r in rows])
        except (ValueError, TypeError):
            continue
    b = extra.get("b_iso_A2")
    return Model(xyz, els, b, None, extra)


def _read_mat(path: Path) -> Model:
    """MATLAB model file (as published with AET data): ``model`` (3, N) Å, optional ``atoms`` (1, N) species."""
    from scipy.io import loadmat
    try:
        d = loadmat(str(path))
    except Exception:  # noqa: BLE001
        raise InputError(f"{path}: not a readable MATLAB .mat file") from None
    if "model" not in d:
        raise InputError(f"{path}: .mat model needs a 'model' variable of shape (3, N) in Å; "
                         f"found {sorted(k for k in d if not k.startswith('__'))}")
    xyz = np.asarray(d["model"], dtype=float)
    if xyz.ndim != 2 or 3 not in xyz.shape or xyz.size == 0:
        raise InputError(f"{path}: 'model' must have shape (3, N); got {xyz.shape}")
    xyz = xyz.T if xyz.shape[0] == 3 else xyz
    cols = {}
    if "atoms" in d and np.asarray(d["atoms"]).size == len(xyz):
        cols["species"] = np.asarray(d["atoms"], float).ravel()
    return Model(xyz, [], None, None, cols)


def read_model(path) -> Model:
    """Read a model: a ptnp result folder, PDB, mmCIF, CSV (x, y, z columns), XYZ or MATLAB .mat.

    Raises
    ------
    InputError
        Missing, empty or malformed files.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("atoms.csv", "atoms.cif", "atoms.pdb"):
            if (path / name).is_file():
                return read_model(path / name)
        raise InputError(f"{path}: folder holds no atoms.csv, atoms.cif or atoms.pdb")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    suf = path.suffix.lower()
    if suf == ".xyz":
        model = _read_xyz(path)
    elif suf == ".csv":
        model = _read_csv(path)
    elif suf in (".pdb", ".ent", ".cif", ".mmcif"):
        model = _read_gemmi(path)
    elif suf == ".mat":
        model = _read_mat(path)
    else:
        raise InputError(f"{path}: unknown model format {suf!r}; use .pdb, .cif, .csv, .xyz or .mat")
    if not np.all(np.isfinite(model.xyz_A)):
        raise InputError(f"{path}: model holds non-finite coordinates")
    return model
