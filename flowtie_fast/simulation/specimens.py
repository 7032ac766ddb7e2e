"""Specimens for multislice simulation: orthorhombic ``ase.Atoms``, z along the beam.

Every builder returns an orthorhombic cell (x and y across the beam, z along
it, all lengths in Å) and is deterministic: random choices come from the
``seed`` argument only. Builders that make a whole specimen (2D stacks,
amorphous films, nanoparticles) record the depths (Å) after which an abTEM
exit plane gives a physically meaningful thinner specimen in
``atoms.info["exit_depths"]``; bulk cells are z-periodic and take exit planes
after whole cells.

- :func:`crystal_cell`: a bulk crystal in a zone axis, as an orthogonal cell
  (cubic [001], [110], [111]; tetragonal [001], [100], [110]; hexagonal
  [0001], [11-20], [1-100]);
- :func:`layered`: 2D materials (MoS2, WSe2, graphene, hBN), one to a few
  layers with their natural stacking;
- :func:`amorphous`: random-packed films (carbon, SiO2) with minimum
  interatomic distances;
- :func:`nanoparticle_on_support`: a spherical fcc cluster in a zone axis on
  an amorphous carbon film;
- :func:`point_defects`: vacancies and substitutions drawn in a specimen;
- :func:`interface`: two crystals side by side along x in one cell.

Needs ase (extra ``sim``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError, is_integer

__all__ = ["CRYSTALS", "LAYERED", "AMORPHOUS", "ZONES", "crystal_cell", "layered", "amorphous",
           "nanoparticle_on_support", "point_defects", "interface", "repeat_to",
           "orthogonal_cell", "check_orthorhombic"]

#: Bulk crystals: structure and lattice parameters (Å; ``u`` internal parameter).
CRYSTALS = {
    "Si": {"structure": "diamond", "a": 5.431},
    "GaAs": {"structure": "zincblende", "a": 5.6533},
    "InP": {"structure": "zincblende", "a": 5.8687},
    "MgO": {"structure": "rocksalt", "a": 4.212},
    "SrTiO3": {"structure": "perovskite", "a": 3.905},
    "BaTiO3": {"structure": "perovskite", "a": 4.00},
    "Au": {"structure": "fcc", "a": 4.078},
    "Pt": {"structure": "fcc", "a": 3.924},
    "Al": {"structure": "fcc", "a": 4.05},
    "Fe": {"structure": "bcc", "a": 2.8665},
    "W": {"structure": "bcc", "a": 3.165},
    "TiO2": {"structure": "rutile", "a": 4.594, "c": 2.959, "u": 0.305},
    "ZnO": {"structure": "wurtzite", "a": 3.25, "c": 5.207, "u": 0.382},
    "GaN": {"structure": "wurtzite", "a": 3.189, "c": 5.185, "u": 0.377},
}

#: Zone axes per lattice family: rows of the integer matrix whose rows, in units
#: of the conventional cell vectors, become the new x, y and z (z: the zone).
ZONES = {
    "cubic": {"001": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
              "110": ((-1, 1, 0), (0, 0, 1), (1, 1, 0)),
              "111": ((1, -1, 0), (1, 1, -2), (1, 1, 1))},
    "tetragonal": {"001": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
                   "100": ((0, 1, 0), (0, 0, 1), (1, 0, 0)),
                   "110": ((-1, 1, 0), (0, 0, 1), (1, 1, 0))},
    "hexagonal": {"0001": ((1, 0, 0), (1, 2, 0), (0, 0, 1)),
                  "11-20": ((1, 2, 0), (0, 0, 1), (1, 0, 0)),
                  "1-100": ((0, 0, 1), (1, 0, 0), (1, 2, 0))},
}
_FAMILY = {"diamond": "cubic", "zincblende": "cubic", "rocksalt": "cubic",
           "perovskite": "cubic", "fcc": "cubic", "bcc": "cubic", "rutile": "tetragonal",
           "wurtzite": "hexagonal"}

#: 2D materials: in-plane lattice a, layer thickness (chalcogen to chalcogen) and
#: interlayer distance d (Å).
LAYERED = {
    "MoS2": {"kind": "tmd", "a": 3.16, "thickness": 3.17, "d": 6.15},
    "WSe2": {"kind": "tmd", "a": 3.28, "thickness": 3.36, "d": 6.49},
    "graphene": {"kind": "graphene", "a": 2.46, "d": 3.35},
    "hBN": {"kind": "hbn", "a": 2.504, "d": 3.33},
}

#: Amorphous films: fractions of the species, number density (atoms/Å³) and
#: minimum distances (Å) per pair of species.
AMORPHOUS = {
    "C": {"fractions": {"C": 1.0}, "density": 0.100, "dmin": {("C", "C"): 1.40}},
    "SiO2": {"fractions": {"Si": 1 / 3, "O": 2 / 3}, "density": 0.0662,
             "dmin": {("Si", "O"): 1.50, ("O", "O"): 2.10, ("Si", "Si"): 2.60}},
}


def check_orthorhombic(atoms, name="atoms"):
    """Refuse a cell that is not orthorhombic with z along the beam (InputError)."""
    cell = np.asarray(atoms.cell.array, dtype=float)
    if cell.shape != (3, 3) or not np.allclose(cell, np.diag(np.diag(cell)), atol=1e-6) \
            or np.any(np.diag(cell) <= 0):
        raise InputError(f"{name}: expected an orthorhombic cell with positive lengths in Å "
                         f"(z along the beam), got cell {cell.round(4).tolist()}")
    return atoms


def orthogonal_cell(atoms, rows):
    """The cell spanned by integer combinations ``rows`` of the cell vectors of
    ``atoms``, rotated so that the rows point along x, y and z.

    Parameters
    ----------
    atoms : ase.Atoms
        Any periodic cell.
    rows : 3 x 3 integers
        New cell vectors in units of the old ones; they must be orthogonal.

    Returns
    -------
    ase.Atoms
        Orthorhombic, atoms wrapped into the cell.
    """
    from ase.build import make_supercell

    rows = np.asarray(rows, dtype=int)
    vectors = rows @ np.asarray(atoms.cell.array)
    gram = vectors @ vectors.T
    if not np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * gram.max()):
        raise InputError(f"rows: {rows.tolist()} do not span an orthogonal cell")
    if np.linalg.det(vectors) < 0:
        rows = rows.copy()
        rows[0] *= -1
        vectors[0] *= -1
    big = make_supercell(atoms, rows)
    lengths = np.linalg.norm(vectors, axis=1)
    rotation = vectors / lengths[:, None]
    out = big.copy()
    out.set_cell(np.diag(lengths), scale_atoms=False)
    out.positions = big.positions @ rotation.T
    out.pbc = True
    out.wrap(eps=1e-6)
    return _tidy(out)


def _tidy(atoms):
    """Snap coordinates within 1e-6 Å of the upper cell face to zero and sort by
    z then y then x (a canonical order, so that seeded choices are repeatable)."""
    lengths = np.diag(atoms.cell.array)
    p = atoms.positions
    p[np.isclose(p, lengths, atol=1e-6)] = 0.0
    p[np.abs(p) < 1e-9] = 0.0
    atoms.positions = p
    order = np.lexsort((p[:, 0].round(6), p[:, 1].round(6), p[:, 2].round(6)))
    return atoms[order]


def _conventional(name):
    import ase
    import ase.build

    if name not in CRYSTALS:
        raise InputError(f"material: expected one of {sorted(CRYSTALS)}, got {name!r}")
    p = CRYSTALS[name]
    s = p["structure"]
    if s == "perovskite":
        a = p["a"]
        return ase.Atoms(name, cell=[a, a, a], pbc=True,
                         scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0),
                                           (0.5, 0, 0.5), (0, 0.5, 0.5)])
    if s == "rutile":
        from ase.spacegroup import crystal

        metal = name[:-2]
        return crystal([metal, "O"], basis=[(0, 0, 0), (p["u"], p["u"], 0)], spacegroup=136,
                       cellpar=[p["a"], p["a"], p["c"], 90, 90, 90])
    if s == "wurtzite":
        return ase.build.bulk(name, "wurtzite", a=p["a"], c=p["c"], u=p["u"])
    return ase.build.bulk(name, s, a=p["a"], cubic=True)


def crystal_cell(material, zone="001"):
    """The orthogonal cell of a bulk crystal with ``zone`` along the beam (z).

    Parameters
    ----------
    material : str
        A key of :data:`CRYSTALS`.
    zone : str
        Cubic: "001", "110", "111"; tetragonal (rutile): "001", "100", "110";
        hexagonal (wurtzite): "0001", "11-20", "1-100".

    Returns
    -------
    ase.Atoms
        One period along x, y and z (Å).
    """
    conventional = _conventional(material)
    family = _FAMILY[CRYSTALS[material]["structure"]]
    zones = ZONES[family]
    if zone not in zones:
        raise InputError(f"zone: {material} ({family}) has zones {tuple(zones)}, got {zone!r}")
    atoms = orthogonal_cell(conventional, zones[zone])
    atoms.info.update({"material": material, "zone": zone})
    return atoms


def repeat_to(atoms, extent):
    """Repeat a z-periodic cell laterally to at least ``extent`` (Å, x and y).

    Returns the repeated atoms and the repeats ``(rx, ry)``.
    """
    a, b = np.diag(atoms.cell.array)[:2]
    rep = (max(1, math.ceil(extent[0] / a - 1e-9)), max(1, math.ceil(extent[1] / b - 1e-9)))
    out = atoms * (rep[0], rep[1], 1)
    out.info.update(atoms.info)
    return out, rep


def _orthogonal_hexagonal(atoms):
    """A hexagonal 2D cell (120° between a1 and a2) made orthogonal: a x a√3."""
    return orthogonal_cell(atoms, ((1, 0, 0), (1, 2, 0), (0, 0, 1)))


def layered(material, layers=1, vacuum=2.0):
    """A 2D material of ``layers`` layers in its natural stacking, flat in x-y.

    Parameters
    ----------
    material : str
        A key of :data:`LAYERED`: MoS2, WSe2 (2H), graphene (Bernal, AB) or
        hBN (AA').
    layers : int
        1 to 20.
    vacuum : float
        Empty space above the first and below the last layer, Å.

    Returns
    -------
    ase.Atoms
        Orthogonal cell a x a√3 in x-y; ``info["exit_depths"]`` holds the
        depths (Å) midway between consecutive layers and the cell's bottom,
        so exit planes give 1, 2, ..., ``layers`` layers.
    """
    import ase
    import ase.build

    if material not in LAYERED:
        raise InputError(f"material: expected one of {sorted(LAYERED)}, got {material!r}")
    if not (is_integer(layers) and 1 <= layers <= 20):
        raise InputError(f"layers: expected an integer in [1, 20], got {layers!r}")
    p = LAYERED[material]
    if p["kind"] == "tmd":
        one = ase.build.mx2(material, "2H", a=p["a"], thickness=p["thickness"],
                            size=(1, 1, 1), vacuum=None)
        t = p["thickness"]
    else:
        one = ase.build.graphene("C2" if p["kind"] == "graphene" else "BN", a=p["a"],
                                 size=(1, 1, 1), vacuum=None)
        t = 0.0
    one.positions[:, 2] -= one.positions[:, 2].min()
    one.set_cell([one.cell[0], one.cell[1], [0, 0, 1.0]])
    # In-plane vector from the first atom to the second (metal to chalcogen, or
    # sublattice A to B): the stacking shift.
    shift = one.positions[1, :2] - one.positions[0, :2]
    d = p["d"]
    stack = ase.Atoms(cell=one.cell, pbc=True)
    for k in range(layers):
        layer = one.copy()
        if k % 2:
            if p["kind"] == "tmd":  # 2H: rotated by 180° and shifted (metal over chalcogen)
                layer.positions[:, :2] = -layer.positions[:, :2] + shift
            elif p["kind"] == "graphene":  # Bernal AB
                layer.positions[:, :2] += shift
            else:  # hBN AA': boron over nitrogen
                symbols = layer.get_chemical_symbols()
                layer.set_chemical_symbols(["N" if s == "B" else "B" for s in symbols])
        layer.positions[:, 2] += vacuum + k * d
        stack += layer
    height = 2 * vacuum + t + (layers - 1) * d
    stack.set_cell([stack.cell[0], stack.cell[1], [0, 0, height]])
    stack.wrap()
    out = _orthogonal_hexagonal(stack)
    depths = [vacuum + t + k * d + (d - t) / 2 for k in range(layers - 1)] + [height]
    out.info.update({"material": material, "layers": int(layers),
                     "exit_depths": [float(x) for x in depths]})
    return out


def amorphous(kind, extent, thickness, seed, *, vacuum=0.0, density=None):
    """A random-packed amorphous film filling ``extent`` x ``thickness``.

    Random sequential addition: points drawn uniformly are kept when no kept
    atom is closer than the minimum distance of the pair (x and y periodic,
    z not), until the number density is reached.

    Parameters
    ----------
    kind : str
        A key of :data:`AMORPHOUS`: "C" (2.0 g/cm³) or "SiO2" (2.2 g/cm³).
    extent : (float, float)
        Lateral size, Å.
    thickness : float
        Film thickness, Å.
    seed : int
    vacuum : float
        Empty space added above and below the film, Å.
    density : float, optional
        Atoms per Å³ instead of the kind's.

    Returns
    -------
    ase.Atoms
        ``info["exit_depths"]``: the film's bottom (and cell bottom).
    """
    import ase

    if kind not in AMORPHOUS:
        raise InputError(f"kind: expected one of {sorted(AMORPHOUS)}, got {kind!r}")
    p = AMORPHOUS[kind]
    lx, ly = (float(e) for e in extent)
    rho = p["density"] if density is None else float(density)
    n = int(round(rho * lx * ly * float(thickness)))
    rng = np.random.default_rng(seed)
    species = list(p["fractions"])
    weights = np.array([p["fractions"][s] for s in species])
    dmin = np.zeros((len(species), len(species)))
    for (s1, s2), d in p["dmin"].items():
        i, j = species.index(s1), species.index(s2)
        dmin[i, j] = dmin[j, i] = d
    reach = dmin.max()
    box = np.array([lx, ly, float(thickness)])
    kept_pos = np.zeros((0, 3))
    kept_kind = np.zeros(0, dtype=int)
    for _ in range(200):
        if len(kept_pos) >= n:
            break
        m = max(64, 2 * (n - len(kept_pos)))
        cand = rng.random((m, 3)) * box
        cand_kind = rng.choice(len(species), size=m, p=weights / weights.sum())
        order = np.argsort(cand[:, 2])
        cand, cand_kind = cand[order], cand_kind[order]
        # Kept atoms sorted by z: each candidate is checked against those within reach.
        zs = kept_pos[:, 2]
        new_pos, new_kind = [], []
        for c, k in zip(cand, cand_kind):
            if len(kept_pos) + len(new_pos) >= n:
                break
            lo, hi = np.searchsorted(zs, [c[2] - reach, c[2] + reach])
            near = [kept_pos[lo:hi]]
            near_kind = [kept_kind[lo:hi]]
            if new_pos:
                recent = np.asarray(new_pos[-512:])
                sel = recent[:, 2] > c[2] - reach
                near.append(recent[sel])
                near_kind.append(np.asarray(new_kind[-512:])[sel])
            pos = np.concatenate(near)
            if len(pos):
                d = pos - c
                d[:, 0] -= lx * np.round(d[:, 0] / lx)
                d[:, 1] -= ly * np.round(d[:, 1] / ly)
                if np.any((d**2).sum(axis=1) < dmin[k, np.concatenate(near_kind)] ** 2):
                    continue
            new_pos.append(c)
            new_kind.append(k)
        if new_pos:
            kept_pos = np.concatenate([kept_pos, np.asarray(new_pos)])
            kept_kind = np.concatenate([kept_kind, np.asarray(new_kind)])
            order = np.argsort(kept_pos[:, 2], kind="stable")
            kept_pos, kept_kind = kept_pos[order], kept_kind[order]
    if len(kept_pos) < n:
        raise InputError(f"density: {rho:g} atoms/Å³ cannot be packed with the minimum "
                         f"distances of {kind} ({len(kept_pos)} of {n} atoms placed)")
    kept_pos[:, 2] += vacuum
    atoms = ase.Atoms([species[k] for k in kept_kind], positions=kept_pos,
                      cell=[lx, ly, float(thickness) + 2 * vacuum], pbc=True)
    atoms.info.update({"material": f"a-{kind}",
                       "exit_depths": [float(thickness) + 2 * vacuum]})
    return atoms


def nanoparticle_on_support(element, diameter, extent, support, seed, *, zone="110",
                            support_kind="C", gap=2.0, vacuum=1.0, centre=None):
    """A spherical cluster cut from an fcc crystal in ``zone``, above an amorphous film.

    The beam meets the particle first, then the support.

    Parameters
    ----------
    element : str
        An fcc metal of :data:`CRYSTALS` (Au, Pt, Al).
    diameter : float
        Particle diameter, Å.
    extent : (float, float)
        Lateral cell size, Å.
    support : float
        Support film thickness, Å (0: no support).
    seed : int
    zone : str
        Cubic zone axis of the particle along the beam.
    support_kind : str
        A key of :data:`AMORPHOUS`.
    gap : float
        Distance between the particle's lowest atom and the support, Å.
    vacuum : float
        Empty space above the particle and below the support, Å.
    centre : (float, float), optional
        Lateral position of the particle's centre, Å (default: drawn in the
        middle half of the cell).

    Returns
    -------
    ase.Atoms
        ``info["exit_depths"]``: below the particle (particle alone), through
        half the support and the whole cell.
    """
    if element not in CRYSTALS or CRYSTALS[element]["structure"] != "fcc":
        fcc = sorted(k for k, v in CRYSTALS.items() if v["structure"] == "fcc")
        raise InputError(f"element: expected an fcc metal {fcc}, got {element!r}")
    rng = np.random.default_rng(seed)
    lx, ly = (float(e) for e in extent)
    if diameter <= 0 or diameter > min(lx, ly) - 2:
        raise InputError(f"diameter: expected 0 < diameter < min(extent) - 2 Å = "
                         f"{min(lx, ly) - 2:g}, got {diameter!r}")
    cell = crystal_cell(element, zone)
    r = diameter / 2
    big, _ = repeat_to(cell, (diameter + 8, diameter + 8))
    nz = math.ceil((diameter + 8) / cell.cell[2, 2])
    big = big * (1, 1, nz)
    cut = np.diag(big.cell.array) / 2 + (rng.random(3) - 0.5) * cell.cell.lengths()
    keep = np.linalg.norm(big.positions - cut, axis=1) <= r
    particle = big[keep]
    particle.positions -= particle.positions.min(axis=0) * [0, 0, 1]
    particle.positions[:, :2] -= particle.positions[:, :2].mean(axis=0)
    offset = (rng.random(2) - 0.5) * [lx / 2, ly / 2]
    particle.positions[:, :2] += [lx / 2, ly / 2] + offset if centre is None else centre
    particle.positions[:, 2] += vacuum
    bottom = particle.positions[:, 2].max()
    depths = [float(bottom + gap / 2)]
    atoms = particle.copy()
    if support > 0:
        film = amorphous(support_kind, (lx, ly), support, int(rng.integers(2**31)))
        film.positions[:, 2] += bottom + gap
        atoms += film
        depths += [float(bottom + gap + support / 2)]
        height = bottom + gap + support + vacuum
    else:
        height = bottom + vacuum
    atoms.set_cell([lx, ly, height])
    atoms.pbc = True
    atoms.wrap()
    depths.append(float(height))
    atoms.info.update({"material": f"{element}-np" + (f"/a-{support_kind}" if support else ""),
                       "exit_depths": depths, "particle_atoms": int(len(particle))})
    return atoms


def point_defects(atoms, seed, *, vacancies=None, substitutions=None):
    """Vacancies and substitutions drawn at random sites of ``atoms``.

    Parameters
    ----------
    atoms : ase.Atoms
    seed : int
    vacancies : dict, optional
        ``{element: fraction}``: that fraction of the element's atoms removed.
    substitutions : dict, optional
        ``{element: [new_element, fraction]}``: that fraction replaced.

    Returns
    -------
    ase.Atoms
        A copy; ``info["defects"]`` counts what was done.
    """
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    symbols = np.array(out.get_chemical_symbols())
    counts = {}
    for element, (new, fraction) in (substitutions or {}).items():
        sites = np.flatnonzero(symbols == element)
        k = int(round(float(fraction) * len(sites)))
        pick = rng.choice(sites, size=k, replace=False) if k else []
        symbols[pick] = new
        counts[f"{element}->{new}"] = k
    out.set_chemical_symbols(list(symbols))
    remove = []
    for element, fraction in (vacancies or {}).items():
        sites = np.flatnonzero(symbols == element)
        k = int(round(float(fraction) * len(sites)))
        if k:
            remove.extend(rng.choice(sites, size=k, replace=False).tolist())
        counts[f"V_{element}"] = k
    if remove:
        del out[sorted(remove)]
    out.info.update(atoms.info)
    out.info["defects"] = counts
    return out


def interface(left, right, n_left, n_right):
    """Two z-periodic crystals side by side along x, coherently strained to the
    left one's y and z periods.

    Parameters
    ----------
    left, right : ase.Atoms
        Orthorhombic cells (e.g. from :func:`crystal_cell`); ``right`` is
        scaled along y and z to match ``left`` (a strain above 8 % is refused).
    n_left, n_right : int
        Cells of each along x.

    Returns
    -------
    ase.Atoms
        One period in y and z; x holds both crystals (two interfaces, as the
        cell is periodic).
    """
    check_orthorhombic(left, "left")
    check_orthorhombic(right, "right")
    la, lb, lc = np.diag(left.cell.array)
    ra, rb, rc = np.diag(right.cell.array)
    strain = max(abs(lb / rb - 1), abs(lc / rc - 1))
    if strain > 0.08:
        raise InputError(f"right: its y and z periods ({rb:.3f}, {rc:.3f} Å) differ from the "
                         f"left crystal's ({lb:.3f}, {lc:.3f} Å) by {100 * strain:.1f} %; "
                         "expected at most 8 %")
    a = left * (int(n_left), 1, 1)
    b = right * (int(n_right), 1, 1)
    b.positions *= [1.0, lb / rb, lc / rc]
    b.positions[:, 0] += n_left * la
    out = a.copy()
    out += b
    out.set_cell([n_left * la + n_right * ra, lb, lc])
    out.pbc = True
    out.wrap(eps=1e-6)
    out.info.update({"material": f"{left.info.get('material', 'A')}|"
                                 f"{right.info.get('material', 'B')}",
                     "interface_x": [0.0, float(n_left * la)], "strain": float(strain)})
    return out
