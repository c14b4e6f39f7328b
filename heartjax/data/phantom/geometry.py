"""Implicit shapes for the synthetic phantom, evaluated on sub-boxes of a voxel grid.

Every primitive gives an approximate signed distance in mm (negative inside) on the axis-aligned box of voxels
that can lie within `pad` mm of it, so a whole case costs a few dozen small numpy passes rather than full-volume
ones. Painting is ordered: later paints win, which is how the phantom defines label priority.
"""

from __future__ import annotations

import dataclasses

import numpy as np


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

D0 = unit((-1.0, 1.0, -np.sqrt(2) * np.tan(np.deg2rad(35.0))))  # base -> apex: left, anterior, 35 deg down
E2 = unit((1.0, 1.0, 0.0))  # towards the septum / RV (right-anterior)
E3 = np.cross(D0, E2)  # inferior wall direction
LV_FRAME = np.stack([D0, E2, E3])
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


def lvq(a, b, c):
    """Canonical point from LV-frame coordinates (a along the long axis, b septal, c inferior)."""
    return a * D0 + b * E2 + c * E3


class Pose:
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
