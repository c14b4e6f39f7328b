"""Implicit shapes for the synthetic phantom, evaluated on sub-boxes of a voxel grid.

Every primitive gives an approximate signed distance in mm (negative inside) on the axis-aligned box of voxels
that can lie within `pad` mm of it, so a whole case costs a few dozen small numpy passes rather than full-volume
ones. Painting is ordered: later paints win, which is how the phantom defines label priority.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from heartjax.data.phantom_levels import LEVELS, Level


@dataclasses.dataclass(frozen=True)
class Grid:
    """A voxel grid in RAS order: voxel (i, j, k) sits at world `origin + spacing * (i, j, k)` (mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, k: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """World coordinates (float32, mm) of voxel centres along axis k."""
        stop = self.shape[k] if stop is None else stop
        return (self.origin[k] + self.spacing[k] * np.arange(start, stop)).astype(np.float32)

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in the world box [lo, hi], or None if empty."""
        out = []
        for k in range(3):
            a = int(np.ceil((lo[k] - self.origin[k]) / self.spacing[k]))
            b = int(np.floor((hi[k] - self.origin[k]) / self.spacing[k])) + 1
            a, b = max(a, 0), min(b, self.shape[k])
            if a >= b:
                return None
            out.append(slice(a, b))
        return tuple(out)

    def coords(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates [n,1,1], [1,m,1], [1,1,p] of a box."""
        x, y, z = (self.axis(k, box[k].start, box[k].stop) for k in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]


def unit(v) -> np.ndarray:
    """v / |v| as float64."""
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def rotation(axis, angle_deg: float) -> np.ndarray:
    """3x3 rotation matrix about `axis` by `angle_deg` (right-handed)."""
    k = unit(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


@dataclasses.dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with orthonormal `axes` (rows, world) and `radii` (mm), cut by half-spaces n.p >= c."""

    center: np.ndarray
    axes: np.ndarray
    radii: np.ndarray
    planes: tuple = ()  # ((normal, offset), ...): keep the points with normal . p >= offset

    def bounds(self, pad: float):
        """World box enclosing the shape grown by pad."""
        half = np.sqrt(((self.radii[:, None] * self.axes) ** 2).sum(0)) + pad
        return self.center - half, self.center + half

    def sdf(self, x, y, z) -> np.ndarray:
        """Approximate signed distance (mm, float32) on broadcast coordinates."""
        c, r = self.center, self.radii
        f = (self.axes / r[:, None]).astype(np.float32)
        dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
        u = [(f[i, 0] * dx + f[i, 1] * dy) + f[i, 2] * dz for i in range(3)]
        sq = [ui * ui for ui in u]
        k0 = np.sqrt(sq[0] + sq[1] + sq[2])
        # |p / r^2| normalises the level set to a distance near the surface (Quilez's ellipsoid bound)
        k1 = np.sqrt(sq[0] / np.float32(r[0] ** 2) + sq[1] / np.float32(r[1] ** 2) + sq[2] / np.float32(r[2] ** 2))
        d = k0 * (k0 - 1) / np.maximum(k1, np.float32(1e-6))
        return _cut(d, self.planes, x, y, z)


@dataclasses.dataclass(frozen=True)
class Capsule:
    """Tube from a to b with radius ra -> rb; a cut (normal) replaces that round end by a plane through it."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float
    cut_a: np.ndarray | None = None  # keep n . (p - a) >= 0
    cut_b: np.ndarray | None = None  # keep n . (p - b) <= 0

    def bounds(self, pad: float):
        """World box enclosing the shape grown by pad."""
        r = max(self.ra, self.rb) + pad
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def sdf(self, x, y, z) -> np.ndarray:
        """Signed distance (mm, float32) on broadcast coordinates."""
        ab = self.b - self.a
        length = float(np.linalg.norm(ab))
        e = ab / length
        wx, wy, wz = x - np.float32(self.a[0]), y - np.float32(self.a[1]), z - np.float32(self.a[2])
        proj = (np.float32(e[0]) * wx + np.float32(e[1]) * wy) + np.float32(e[2]) * wz
        w2 = (wx * wx + wy * wy) + wz * wz
        t = np.clip(proj / np.float32(length), 0, 1)
        dist2 = w2 - 2 * np.float32(length) * t * proj + (np.float32(length) * t) ** 2
        d = np.sqrt(np.maximum(dist2, 0)) - (np.float32(self.ra) + np.float32(self.rb - self.ra) * t)
        planes = []
        if self.cut_a is not None:
            planes.append((self.cut_a, float(np.dot(self.cut_a, self.a))))
        if self.cut_b is not None:
            planes.append((-self.cut_b, -float(np.dot(self.cut_b, self.b))))
        return _cut(d, planes, x, y, z)


def _cut(d: np.ndarray, planes, x, y, z) -> np.ndarray:
    """Intersect a distance field with half-spaces n . p >= offset."""
    for n, off in planes:
        outside = np.float32(off) - ((np.float32(n[0]) * x + np.float32(n[1]) * y) + np.float32(n[2]) * z)
        d = np.maximum(d, outside)
    return d


def polyline(points, radii, cut_start=None, cut_end=None) -> list[Capsule]:
    """Capsules joining consecutive points; optional plane cuts (normals) at the first and last point."""
    pts = [np.asarray(p, np.float64) for p in points]
    out = []
    for i in range(len(pts) - 1):
        out.append(Capsule(pts[i], pts[i + 1], float(radii[i]), float(radii[i + 1]),
                           cut_a=cut_start if i == 0 else None,
                           cut_b=cut_end if i == len(pts) - 2 else None))
    return out


class Field:
    """A primitive's distance field on its box, cached for the several thresholds the painter uses."""

    def __init__(self, grid: Grid, shape, pad: float):
        self.box = grid.box(*shape.bounds(pad))
        self.d = None if self.box is None else shape.sdf(*grid.coords(self.box))

    def paint(self, targets, hi: float = 0.0, lo: float = -np.inf, only=None) -> None:
        """For each (vol, value) in targets set vol = value where lo <= d < hi.

        `only`: (vol, value) restricting the paint to voxels where vol currently holds value.
        """
        if self.box is None:
            return
        mask = self.d < hi
        if lo > -np.inf:
            mask &= self.d >= lo
        if only is not None:
            mask &= only[0][self.box] == only[1]
        for vol, value in targets:
            np.copyto(vol[self.box], value, where=mask)

    def mask(self, hi: float = 0.0) -> np.ndarray | None:
        """Boolean d < hi on the box (None if the box is empty)."""
        return None if self.box is None else self.d < hi


# ---------------------------------------------------------------------------------------------------------
# Anatomy. Heart offsets are in a canonical frame (mm, RAS axes, origin at the mitral valve centre B) drawn at
# the textbook orientation; each patient maps them to the world by q -> s * R q. Chest structures are world-fixed.

AIR, FAT, MUSCLE, LUNG, CORTEX, MARROW, RIB, CSF, LIVER, ABDOMEN, MYO, WALL, BLOOD_L, BLOOD_R, IVC, SVC = range(16)
TISSUES = ("air", "fat", "muscle", "lung", "cortex", "marrow", "rib", "csf", "liver", "abdomen", "myocardium",
           "vessel_wall", "blood_left", "blood_right", "ivc", "svc")
# label indices (heartjax.data.labels.MMWHS order: MYO, LA, LV, RA, RV, AO, PA)
L_MYO, L_LA, L_LV, L_RA, L_RV, L_AO, L_PA = range(1, 8)

_D0 = unit((-1.0, 1.0, -np.sqrt(2) * np.tan(np.deg2rad(35.0))))  # base -> apex: left, anterior, 35 deg down
_E2 = unit((1.0, 1.0, 0.0))  # towards the septum / RV (right-anterior)
_E3 = np.cross(_D0, _E2)  # inferior wall direction
_LV_FRAME = np.stack([_D0, _E2, _E3])
REF_RC = 27.0  # canonical LV cavity short-axis radius (mm) that sets the patient scale s


@dataclasses.dataclass(frozen=True)
class Part:
    """A solid with its painting roles: halo (mediastinal fat), wall (label 0) and lumen (tissue, label)."""

    shape: object
    tissue: int
    label: int = 0
    wall: float = 0.0
    wall_tissue: int = WALL
    halo: float = 0.0
    inside: int = 0  # > 0: paint only over voxels already holding this label (detail within a cavity)


def _lvq(a, b, c):
    """Canonical point from LV-frame coordinates (a along the long axis, b septal, c inferior)."""
    return a * _D0 + b * _E2 + c * _E3


def sample_patient(rng: np.random.Generator, level: Level = LEVELS[0]) -> dict:
    """Draw one patient's anatomy and pose parameters (mm and degrees) within a difficulty level's ranges."""
    extra = np.random.default_rng(rng.integers(0, 2 ** 63)) if level.detail else None
    phase = extra.uniform(0.0, level.phase) if extra is not None else 0.0
    v_lv = rng.uniform(*level.v_lv) * (1.0 - 0.45 * phase)  # towards end-systole the cavity shrinks
    aspect = rng.uniform(2.7, 3.2)
    rc = (3 * v_lv / (2 * np.pi * aspect)) ** (1 / 3)
    az, el, roll = rng.uniform(-level.yaw, level.yaw), rng.uniform(-level.tilt, level.tilt), rng.uniform(
        -level.roll, level.roll)
    # patient rotation: yaw about S-I, tilt of the long axis, roll about the long axis
    tilt_axis = np.cross(_D0, (0.0, 0.0, 1.0))
    rot = rotation((0, 0, 1), az) @ rotation(tilt_axis, el) @ rotation(_D0, roll)
    p = dict(
        s=rc / REF_RC, rot=rot, lc=aspect * rc, rc=rc, t=rng.uniform(8.0, 12.0), apex_thin=rng.uniform(0.6, 0.9),
        f_rv=rng.uniform(0.94, 1.08), f_la=rng.uniform(0.9, 1.12), f_ra=rng.uniform(0.88, 1.12),
        r_ao=rng.uniform(13.5, 16.5), r_pa=rng.uniform(*level.r_pa), halo=rng.uniform(*level.halo),
        midline=15.0 + rng.uniform(-8, 8), spine_y=-72.0 + rng.uniform(-4, 4), front_y=66.0 + rng.uniform(-2, 6),
        half_width=rng.uniform(*level.half_width), fat=rng.uniform(*level.fat), muscle=rng.uniform(8, 14),
        dome=-40.0 + rng.uniform(-8, 8), dome_left=rng.uniform(5, 15), rib_phase=rng.uniform(0, 27),
        rib_drop=rng.uniform(70, 100), fov_shift=rng.uniform(-level.fov_shift, level.fov_shift, 3),
    )
    if extra is not None:
        from heartjax.data.phantom_detail import detail_params

        p["t"] *= 1.0 + 0.35 * phase  # the wall thickens as the cavity empties
        p.update(detail_params(extra, level), phase=phase)
    return p


class _Pose:
    """Maps canonical heart geometry to world primitives for one patient."""

    def __init__(self, p):
        self.s, self.r = p["s"], p["rot"]

    def pt(self, q):
        """World point of canonical point q."""
        return self.s * (self.r @ np.asarray(q, np.float64))

    def n(self, v):
        """World direction of a canonical direction."""
        return self.r @ unit(v)

    def ellipsoid(self, center, axes, radii, planes=()):
        """World Ellipsoid from canonical centre, axes (rows), radii and planes ((normal, point), ...)."""
        wp = tuple((self.n(nq), float(self.n(nq) @ self.pt(pq))) for nq, pq in planes)
        return Ellipsoid(self.pt(center), (self.r @ np.asarray(axes).T).T, self.s * np.asarray(radii, float), wp)

    def tube(self, points, radii, cut_start=None, cut_end=None, world_tail=()):
        """World polyline from canonical points and radii, then world-fixed tail points (radius tapering 5 %)."""
        pts = [self.pt(q) for q in points] + [np.asarray(w, np.float64) for w in world_tail]
        rad = list(self.s * np.asarray(radii, float))
        rad += [rad[-1] * 0.95 ** (i + 1) for i in range(len(world_tail))]
        cs = None if cut_start is None else self.n(cut_start)
        ce = None if cut_end is None else self.n(cut_end)
        return polyline(pts, rad, cs, ce)


def heart_parts(p: dict) -> list[Part]:
    """All heart, great-vessel and airway parts in painting priority order (later parts win)."""
    ps, s = _Pose(p), p["s"]
    lc, rc, t = p["lc"] / s, p["rc"] / s, p["t"] / s
    base = (_D0, np.zeros(3))
    xm, ys = p["midline"], p["spine_y"]
    av, ao1, ao_top = np.array([6.0, 6, 8]), np.array([14.0, 12, 40]), np.array([14.0, 6, 70])
    pv, pa1, bif = np.array([-12.0, 32, 28]), np.array([-18.0, 18, 52]), np.array([-14.0, 0, 62])
    n_ao, n_top, n_pa, n_bif = ao1 - av, ao_top - ao1, pa1 - pv, bif - pa1
    r_ao, r_pa, halo = p["r_ao"] / s, p["r_pa"] / s, p["halo"]
    dx, dy = xm - 33.0, ys + 17.0  # descending aorta: left-anterior of the vertebral body
    tr = (xm - 3.0, ys + 28.0)
    carina = np.array([tr[0], tr[1], 60.0 * s])
    parts = []

    def add(shapes, **kw):
        parts.extend(Part(sh, **kw) for sh in (shapes if isinstance(shapes, list) else [shapes]))

    # airways and oesophagus: lowest priority, walls of soft tissue
    add(polyline([(tr[0], tr[1], 260.0), carina], [9.0, 9.0]), tissue=AIR, wall=2.5, wall_tissue=MUSCLE)
    add(polyline([carina, carina + (36.0, -5, -18)], [7.0, 6.0]), tissue=AIR, wall=2.0, wall_tissue=MUSCLE)
    add(polyline([carina, carina + (-48.0, 7, -16)], [6.5, 5.5]), tissue=AIR, wall=2.0, wall_tissue=MUSCLE)
    add(polyline([(xm - 13.0, ys + 21, 260), (xm - 13.0, ys + 21, -260)], [7.0, 7.0]), tissue=MUSCLE, halo=3.0)
    # unlabelled contrast vessels; the aortic arch (heart frame) runs into the descending aorta beside the spine
    add(ps.tube([ao_top, (4, -12, 86), (-12, -38, 86)], [0.9 * r_ao, 0.85 * r_ao, 0.8 * r_ao],
                world_tail=[(dx, dy, 68.0 * s), (dx, dy - 2, -300.0)]), tissue=BLOOD_L, wall=1.5, halo=3.0)
    add(ps.tube([bif, (10, -20, 58), (40, -22, 56), (62, -24, 50)], np.array([0.75, 0.72, 0.65, 0.6]) * r_pa),
        tissue=BLOOD_R, wall=1.5, halo=2.0)
    add(ps.tube([bif, (-34, -18, 66), (-58, -28, 58)], [0.72 * r_pa, 0.68 * r_pa, 0.6 * r_pa]),
        tissue=BLOOD_R, wall=1.5, halo=2.0)
    for a, b in (((28, -30, 24), (55, -35, 32)), ((28, -34, 4), (55, -40, -4)),
                 ((-24, -30, 24), (-50, -34, 32)), ((-24, -34, 4), (-50, -40, -4))):
        add(ps.tube([a, b], [6.0, 5.5]), tissue=BLOOD_L, wall=1.5, halo=2.0)
    add(ps.tube([(44, 2, 140), (42, -2, 18)], [10.0, 10.0]), tissue=SVC, wall=1.5, halo=3.0)
    add(ps.tube([(36, -14, -160), (40, -8, -18)], [12.0, 12.0]), tissue=IVC, wall=1.5, halo=2.0)
    detail = bool(p.get("detail"))
    if detail:  # unlabelled lumen under the labelled trunks, so the annotator's label ends are free to move
        from heartjax.data import phantom_detail as dd

        add(ps.tube([pv, pa1, bif], [r_pa, r_pa, 0.95 * r_pa], cut_start=n_pa, cut_end=n_bif), tissue=BLOOD_R,
            wall=1.5, halo=3.0)
        add(ps.tube([av, ao1, ao_top], [r_ao, 1.05 * r_ao, r_ao], cut_start=n_ao, cut_end=n_top), tissue=BLOOD_L,
            wall=1.5, halo=3.0)
    # labelled chambers and vessels, lowest priority first
    eye = np.eye(3)
    add(ps.ellipsoid((42, -6, 0), eye, np.array([24, 22, 28]) * p["f_ra"]), tissue=BLOOD_R, label=L_RA, wall=2.0,
        wall_tissue=MYO, halo=halo)
    add(ps.ellipsoid((3, -24, 15), eye, np.array([34, 17, 24]) * p["f_la"]), tissue=BLOOD_L, label=L_LA, wall=2.0,
        wall_tissue=MYO, halo=halo)
    if detail:  # the auricles, and inflows that meet the ventricles without a wall (edgeless valve planes)
        parts.extend(dd.atrial_detail(p, ps, halo))
    add(ps.tube([_lvq(12, 30, -18), pv], [13.0, 12.0], cut_end=n_pa), tissue=BLOOD_R, label=L_RV, wall=3.0,
        wall_tissue=MYO, halo=halo)
    # RV: an ellipsoid around the septal side of the LV; the LV (painted later) carves the crescent, and a cut
    # where the crescent is still ~4 mm thick keeps its tips from breaking into voxel slivers
    r_out = rc + t
    rv_rad = np.array([0.68 * lc, r_out + 5.0, r_out + 8.0]) * p["f_rv"]
    rv_cuts = [(_D0, -8.0 * _D0), (_E2, -0.1 * r_out * _E2)]
    add(ps.ellipsoid(_lvq(0.12 * lc, 0.36 * r_out, 0), _LV_FRAME, rv_rad, rv_cuts), tissue=BLOOD_R, label=L_RV,
        wall=3.0, wall_tissue=MYO, halo=halo)
    pa_end, ao_end = bif, ao_top
    if detail:  # the annotator ends the labels a little short of the bifurcation level (docs/phantom.md)
        pa_end = bif - p["pa_cut"] / s * unit(n_bif)
        ao_end = ao_top - p["ao_cut"] / s * unit(n_top)
    add(ps.tube([pv, pa1, pa_end], [r_pa, r_pa, 0.95 * r_pa], cut_start=n_pa, cut_end=n_bif), tissue=BLOOD_R,
        label=L_PA, wall=1.5, halo=3.0)
    add(ps.tube([av, ao1, ao_end], [r_ao, 1.05 * r_ao, r_ao], cut_start=n_ao, cut_end=n_top), tissue=BLOOD_L,
        label=L_AO, wall=1.5, halo=3.0)
    outer = np.array([lc + t * p["apex_thin"], rc + t, 0.95 * rc + t])
    add(ps.ellipsoid(np.zeros(3), _LV_FRAME, outer, [base]), tissue=MYO, label=L_MYO, halo=halo)
    add(ps.ellipsoid(np.zeros(3), _LV_FRAME, np.array([lc, rc, 0.95 * rc]), [base]), tissue=BLOOD_L, label=L_LV)
    add(ps.tube([_lvq(18, 8, 0), av], [12.0, 13.0], cut_end=n_ao), tissue=BLOOD_L, label=L_LV)
    if detail:
        parts.extend(dd.cavity_detail(p, ps, lc, rc, t, rv_rad, _lvq(0.12 * lc, 0.36 * r_out, 0)))
    return parts
