"""Element constants as data: scattering factors, radii, lattices.

Electron scattering factors are Peng et al. (1996) 5-Gaussian fits, read from
gemmi (``gemmi.Element(sym).c4322``). Theoretical radii are the hand-tuned
values of the reference implementation (used for splitting and windows);
lattice parameters are bulk room-temperature values in Å.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Element", "get_element", "ELEMENT_TABLE", "known_elements"]

# symbol: (theoretical radius Å, lattice type, bulk lattice parameter Å)
ELEMENT_TABLE: dict[str, tuple[float, str, float]] = {
    "Pt": (1.10, "fcc", 3.924),
    "Au": (1.23, "fcc", 4.078),
    "Ag": (1.45, "fcc", 4.079),
    "Pd": (1.12, "fcc", 3.891),
    "Cu": (1.32, "fcc", 3.597),
    "Ni": (1.24, "fcc", 3.499),
    "Rh": (1.42, "fcc", 3.803),
    "Ir": (1.41, "fcc", 3.839),
    "Al": (1.43, "fcc", 4.046),
    "Pb": (1.75, "fcc", 4.920),
    "Fe": (1.02, "bcc", 2.856),
    "Co": (1.26, "hcp", 2.507),
    "Mo": (1.39, "bcc", 3.142),
    "W": (1.39, "bcc", 3.155),
}


@dataclass(frozen=True)
class Element:
    """Constants of one chemical element.

    Attributes
    ----------
    symbol : str
    peng_a, peng_b : tuple of 5 floats
        Peng 1996 electron scattering factor coefficients (a in Å, b in Å²).
    radius_A : float
        Theoretical atomic radius in Å (splitting, windows, validation).
    lattice : str
        "fcc", "bcc" or "hcp".
    lattice_param_A : float
        Bulk lattice parameter in Å.
    """
    symbol: str
    peng_a: tuple
    peng_b: tuple
    radius_A: float
    lattice: str
    lattice_param_A: float

    @property
    def cn_cutoff_A(self) -> float:
        """Neighbour radius for coordination numbers with the bulk lattice (Å).

        fcc: the paper's ``a/2 · (1 + 1/√2)``, midway between the first and second
        shells; bcc: midway between the first (a√3/2) and second (a) shells; hcp:
        the fcc value for the same bond length.
        """
        a, nn = self.lattice_param_A, self.nn_distance_A
        if self.lattice == "bcc":
            return 0.5 * (nn + a)
        return nn * (1.0 / np.sqrt(2.0) + 0.5)

    @property
    def near_neighbour_cutoff_A(self) -> float:
        """Radius holding an atom's near neighbours (Å): the CN cutoff, but for bcc up to
        midway between the second (a) and third (a√2) shells, as bcc's second shell is only
        15% beyond the first (vertices of faceted bcc particles have two first-shell
        neighbours). Used by the CN < 3 rejection of detected atoms."""
        if self.lattice == "bcc":
            return 0.5 * (1.0 + np.sqrt(2.0)) * self.lattice_param_A
        return self.cn_cutoff_A

    @property
    def nn_distance_A(self) -> float:
        """Ideal nearest-neighbour distance in Å for the bulk lattice."""
        a = self.lattice_param_A
        return {"fcc": a / np.sqrt(2.0), "bcc": a * np.sqrt(3.0) / 2.0}.get(self.lattice, a)


def known_elements() -> list[str]:
    return sorted(ELEMENT_TABLE)


@lru_cache(maxsize=None)
def get_element(symbol: str) -> Element:
    """Return the :class:`Element` for ``symbol`` (case-insensitive).

    Raises
    ------
    ValueError
        If the element is not in :data:`ELEMENT_TABLE`.
    """
    import gemmi
    key = str(symbol).strip().capitalize()
    if key not in ELEMENT_TABLE:
        raise ValueError(f"unknown element {symbol!r}; known: {', '.join(known_elements())}")
    coefs = gemmi.Element(key).c4322.get_coefs()
    radius, lattice, lp = ELEMENT_TABLE[key]
    return Element(key, tuple(float(c) for c in coefs[:5]), tuple(float(c) for c in coefs[5:10]),
                   radius, lattice, lp)
