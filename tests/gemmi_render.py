"""Maps rendered by gemmi's density calculators: a simulator that is not ours.

Used by ``tests/test_baseline.py`` (gemmi against :func:`ptnp_gpu.simulate.render_atoms`)
and ``benchmarks/gemmi_maps.py`` (detection and statistics on gemmi's maps).
"""
from __future__ import annotations

import gemmi
import numpy as np

EIGHT_PI2 = 8.0 * np.pi ** 2


def gemmi_map(xyz_A, elements, u_aniso_A2, shape_zyx, voxel_size_A, kind="E", blur_A2=0.0):
    """Density of the atoms computed by gemmi on a ``[z, y, x]`` grid with origin 0 (float64).

    ``kind`` "E": ``gemmi.DensityCalculatorE`` (electron scattering factors, International
    Tables C 4.3.2.2: the potential); "X": ``gemmi.DensityCalculatorX`` (X-ray form factors,
    IT92: the electron density, sharper atoms). ``u_aniso_A2`` (N, 3, 3) is each atom's
    ANISOU (Å², x y z); ``blur_A2`` gemmi's global blur B. Values are point-sampled at the voxel
    positions i·voxel. gemmi's cell is periodic: keep the atoms a few Å inside the box."""
    nz, ny, nx = (int(n) for n in shape_zyx)
    v = float(voxel_size_A)
    st = gemmi.Structure()
    st.cell = gemmi.UnitCell(nx * v, ny * v, nz * v, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    model, chain = gemmi.Model("1"), gemmi.Chain("A")
    for i, (p, el, u) in enumerate(zip(np.asarray(xyz_A, float).reshape(-1, 3), elements,
                                       np.asarray(u_aniso_A2, float).reshape(-1, 3, 3))):
        res = gemmi.Residue()
        res.name, res.seqid = str(el).upper(), gemmi.SeqId(i + 1, " ")
        atom = gemmi.Atom()
        atom.name, atom.element, atom.occ = str(el).upper(), gemmi.Element(str(el)), 1.0
        atom.pos = gemmi.Position(*p)
        atom.aniso = gemmi.SMat33f(u[0, 0], u[1, 1], u[2, 2], u[0, 1], u[0, 2], u[1, 2])
        atom.b_iso = EIGHT_PI2 * float(np.trace(u)) / 3.0
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    dc = gemmi.DensityCalculatorE() if kind == "E" else gemmi.DensityCalculatorX()
    dc.d_min = 0.0               # keep the grid set below; do not size it from a resolution
    dc.blur = float(blur_A2)
    dc.grid.set_unit_cell(st.cell)
    dc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    dc.grid.set_size(nx, ny, nz)
    dc.put_model_density_on_grid(st[0])
    return np.array(dc.grid, copy=True, dtype=np.float64).transpose(2, 1, 0)
