"""Unit cells: parameters, bases, lattice type and centering, gemmi conversion.

Basis convention: :attr:`UnitCell.direct_basis` holds the direct vectors **a, b, c as
rows** (Å), in the standard orthogonal setting of the PDB/gemmi (a along x, b in the x–y
plane, c* along z); :attr:`UnitCell.reciprocal_basis` holds **a*, b*, c* as rows** (1/Å,
no 2π), so a reflection's scattering vector is ``hkl @ reciprocal_basis`` and
``direct_basis @ reciprocal_basis.T`` is the identity.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

__all__ = ["LATTICE_TYPES", "UnitCell"]

LATTICE_TYPES = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "rhombohedral",
    "hexagonal",
    "cubic",
)

_CRYSTAL_SYSTEM_TO_LATTICE = {
    "triclinic": "triclinic",
    "monoclinic": "monoclinic",
    "orthorhombic": "orthorhombic",
    "tetragonal": "tetragonal",
    "trigonal": "hexagonal",
    "hexagonal": "hexagonal",
    "cubic": "cubic",
}


def _space_group(name):
    import gemmi

    if name is None:
        return None
    if isinstance(name, gemmi.SpaceGroup):
        return name
    sg = gemmi.find_spacegroup_by_name(str(name))
    if sg is None:
        raise ValueError(f"unknown space group {name!r}")
    return sg


@dataclass(frozen=True)
class UnitCell:
    """A unit cell with optional symmetry.

    Parameters
    ----------
    a, b, c : float
        Cell edges in Å.
    alpha, beta, gamma : float
        Cell angles in degrees.
    space_group : str, optional
        Space-group symbol understood by gemmi (e.g. ``"P 43 21 2"``, ``"P43212"``);
        sets ``lattice_type``, ``centering`` and ``unique_axis`` when they are not given.
    lattice_type : str, optional
        One of :data:`LATTICE_TYPES` (CrystFEL naming; trigonal space groups in the
        hexagonal setting are ``hexagonal``, rhombohedral setting ``rhombohedral``).
    centering : str, optional
        One of ``P A B C I F R H``.
    unique_axis : str, optional
        ``a``, ``b`` or ``c`` for monoclinic, tetragonal and hexagonal lattices.

    Examples
    --------
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> cell.lattice_type, cell.centering, cell.unique_axis
    ('tetragonal', 'P', 'c')
    >>> round(cell.d_spacing([1, 0, 0]), 2)
    79.1
    """

    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0
    space_group: str | None = None
    lattice_type: str | None = None
    centering: str | None = None
    unique_axis: str | None = None

    def __post_init__(self):
        for name in ("a", "b", "c", "alpha", "beta", "gamma"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"cell parameter {name} must be positive, got {v}")
            object.__setattr__(self, name, v)
        if not (self.alpha + self.beta + self.gamma < 360.0):
            raise ValueError("cell angles must sum to less than 360°")
        if self.space_group is not None:
            sg = _space_group(self.space_group)
            object.__setattr__(self, "space_group", sg.hm)
            if self.centering is None:
                object.__setattr__(self, "centering", sg.centring_type())
            if self.lattice_type is None:
                system = sg.crystal_system_str()
                lat = _CRYSTAL_SYSTEM_TO_LATTICE[system]
                if system == "trigonal" and sg.centring_type() == "R" and sg.ext == "R":
                    lat = "rhombohedral"
                object.__setattr__(self, "lattice_type", lat)
            if self.unique_axis is None and self.lattice_type in (
                "monoclinic",
                "tetragonal",
                "hexagonal",
            ):
                ua = "b" if self.lattice_type == "monoclinic" else "c"
                if self.lattice_type == "monoclinic":
                    q = sg.qualifier.lstrip("-")[:1] if sg.qualifier else ""
                    ua = q if q in ("a", "b", "c") else "b"
                object.__setattr__(self, "unique_axis", ua)
        if self.lattice_type is not None and self.lattice_type not in LATTICE_TYPES:
            raise ValueError(f"unknown lattice type {self.lattice_type!r}")
        if self.centering is not None and self.centering not in "PABCIFRH":
            raise ValueError(f"unknown centering {self.centering!r}")
        if self.unique_axis is not None and self.unique_axis not in ("a", "b", "c"):
            raise ValueError(f"unique axis must be a, b or c, got {self.unique_axis!r}")

    # ------------------------------------------------------------------ bases
    @property
    def parameters(self) -> tuple[float, float, float, float, float, float]:
        return (self.a, self.b, self.c, self.alpha, self.beta, self.gamma)

    @property
    def direct_basis(self) -> np.ndarray:
        """Rows a, b, c in Å (a along x, b in the x–y plane)."""
        al, be, ga = np.deg2rad([self.alpha, self.beta, self.gamma])
        ca, cb, cg, sg = np.cos(al), np.cos(be), np.cos(ga), np.sin(ga)
        cx = self.c * cb
        cy = self.c * (ca - cb * cg) / sg
        cz = np.sqrt(max(self.c**2 - cx**2 - cy**2, 0.0))
        return np.array(
            [[self.a, 0.0, 0.0], [self.b * cg, self.b * sg, 0.0], [cx, cy, cz]]
        )

    @property
    def reciprocal_basis(self) -> np.ndarray:
        """Rows a*, b*, c* in 1/Å (no 2π)."""
        return np.linalg.inv(self.direct_basis).T

    @property
    def volume(self) -> float:
        """Cell volume in Å³."""
        return float(abs(np.linalg.det(self.direct_basis)))

    def d_spacing(self, hkl) -> np.ndarray | float:
        """Resolution d (Å) of reflections ``hkl`` (shape (3,) or (n, 3))."""
        h = np.asarray(hkl, dtype=float)
        q = h @ self.reciprocal_basis
        with np.errstate(divide="ignore"):
            d = 1.0 / np.linalg.norm(q, axis=-1)
        return float(d) if np.ndim(d) == 0 else d

    # ----------------------------------------------------------------- gemmi
    def to_gemmi(self):
        """``gemmi.UnitCell`` with the same parameters."""
        import gemmi

        return gemmi.UnitCell(*self.parameters)

    def gemmi_space_group(self):
        """``gemmi.SpaceGroup`` or None."""
        return _space_group(self.space_group)

    @classmethod
    def from_gemmi(cls, cell, space_group=None) -> UnitCell:
        """Build from a ``gemmi.UnitCell`` (and optional ``gemmi.SpaceGroup`` or name)."""
        sg = None
        if space_group is not None:
            sg = space_group.hm if hasattr(space_group, "hm") else str(space_group)
        return cls(cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma, space_group=sg)

    @classmethod
    def from_reciprocal_basis(cls, astar, **kwargs) -> UnitCell:
        """Cell parameters of a reciprocal basis (rows a*, b*, c* in 1/Å, any orientation)."""
        direct = np.linalg.inv(np.asarray(astar, dtype=float)).T
        return cls.from_direct_basis(direct, **kwargs)

    @classmethod
    def from_direct_basis(cls, basis, **kwargs) -> UnitCell:
        """Cell parameters of a direct basis (rows a, b, c in Å, any orientation)."""
        m = np.asarray(basis, dtype=float)
        la, lb, lc = np.linalg.norm(m, axis=1)

        def ang(u, v):
            return float(np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u)
                                                       / np.linalg.norm(v), -1, 1))))

        return cls(la, lb, lc, ang(m[1], m[2]), ang(m[0], m[2]), ang(m[0], m[1]), **kwargs)

    # --------------------------------------------------------------- display
    def __repr__(self) -> str:
        sym = f" {self.space_group}" if self.space_group else ""
        return (
            f"UnitCell({self.a:.3f}, {self.b:.3f}, {self.c:.3f}, {self.alpha:.2f}, "
            f"{self.beta:.2f}, {self.gamma:.2f}{sym})"
        )

    def _repr_html_(self) -> str:
        sym = html.escape(self.space_group or "—")
        lat = html.escape(
            f"{self.lattice_type or '?'} {self.centering or '?'}"
            + (f", unique axis {self.unique_axis}" if self.unique_axis else "")
        )
        return (
            "<table><tr><th>a (Å)</th><th>b (Å)</th><th>c (Å)</th><th>α (°)</th>"
            "<th>β (°)</th><th>γ (°)</th><th>space group</th><th>lattice</th>"
            f"<th>V (Å³)</th></tr><tr><td>{self.a:.3f}</td><td>{self.b:.3f}</td>"
            f"<td>{self.c:.3f}</td><td>{self.alpha:.2f}</td><td>{self.beta:.2f}</td>"
            f"<td>{self.gamma:.2f}</td><td>{sym}</td><td>{lat}</td>"
            f"<td>{self.volume:.0f}</td></tr></table>"
        )
