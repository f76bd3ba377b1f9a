"""Elements are data: every listed metal has gemmi's Peng coefficients, a radius and a lattice."""
from __future__ import annotations

import gemmi
import numpy as np
import pytest

from ptnp_gpu.detect import detect_atoms
from ptnp_gpu.elements import get_element
from ptnp_gpu.errors import InputError
from ptnp_gpu.pairing import match_accuracy
from ptnp_gpu.synth import make_particle

METALS = ["Pt", "Au", "Ag", "Pd", "Cu", "Ni", "Rh", "Ir", "Fe", "Co"]


@pytest.mark.parametrize("sym", METALS)
def test_element_constants(sym):
    el = get_element(sym.lower())
    assert el.symbol == sym
    coefs = gemmi.Element(sym).c4322.get_coefs()
    assert np.allclose(el.peng_a + el.peng_b, coefs, rtol=1e-6)
    assert 0.9 < el.radius_A < 1.6 and el.lattice in ("fcc", "bcc", "hcp")
    assert 2.3 < el.nn_distance_A < 3.0
    # the CN cutoff lies between the first and second neighbour shells
    assert el.nn_distance_A < el.cn_cutoff_A < (el.lattice_param_A if el.lattice != "hcp" else 1.414 * el.lattice_param_A)


def test_unknown_element():
    with pytest.raises(ValueError, match="unknown element"):
        get_element("Xx")
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("sym", ["Au", "Cu", "Fe", "Co"])
def test_detect_other_metals(sym):
    """fcc Au and Cu, bcc Fe, and hcp Co (built with fcc stacking at its bond length)."""
    p = make_particle(n_atoms=400, element=sym, seed=6)
    a = match_accuracy(detect_atoms(p.map, sym, backend="numpy").xyz_A, p.xyz_A, 1.0)
    assert a["recall"] >= 0.99 and a["precision"] >= 0.99 and a["rmsd_A"] <= 0.09, a
