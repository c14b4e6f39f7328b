"""The anatomy a level >= 1 phantom adds to the first generator's heart (`heartjax.data.phantom.shapes`).

- the left and right auricles (labelled with their atrium, as MM-WHS does);
- mitral and tricuspid inflows: each atrium reaches into its ventricle, which paints over it, so the atrium and the
  ventricle meet blood to blood with no wall between them, as at a valve plane in contrast CT;
- papillary muscles, a moderator band and trabeculae: myocardium-dense bundles inside the ventricles that keep the
  cavity's label (the usual annotation rule, ACDC's and MM-WHS's), so the endocardial border is not an edge;
- the annotator's end of the aorta and pulmonary trunk labels (drawn in `sample_patient`, applied in
  `heart_parts`), and the annotator's hand: label boundaries that wander about a millimetre from the image's
  (`annotate`), as manual references do.

Points are canonical heart coordinates (mm before the patient's scale, see `geometry.Pose`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from heartjax.data.phantom.geometry import (BLOOD_L, BLOOD_R, L_LA, L_LV, L_RA, L_RV, MYO, D0, E2, E3, Capsule,
                                            Part, lvq)
from heartjax.data.phantom.levels import Level


def detail_params(rng: np.random.Generator, level: Level) -> dict:
    """A level's extra per-patient draws (mm): label ends, field-of-view scale, trabeculae, auricle size."""
    return dict(
        detail=True,
        pa_cut=rng.uniform(0.0, level.cut_jitter), ao_cut=rng.uniform(0.0, level.cut_jitter),
        fov_scale=rng.uniform(*level.fov_scale, 3),
        trabeculae=(int(rng.integers(level.trabeculae[0], level.trabeculae[1] + 1)),
                    int(rng.integers(level.trabeculae[0], level.trabeculae[1] + 1))),
        auricle=rng.uniform(0.8, 1.2, 2), detail_seed=int(rng.integers(0, 2 ** 31)),
    )


def atrial_detail(p: dict, ps, halo: float) -> list[Part]:
    """Auricles and the atrioventricular inflows (painted after the atria, before the ventricles)."""
    fl, fr = p["auricle"]
    la_app = ps.tube([(-6, -22, 26), (-26, -8, 30), (-36, 6, 24), (-34, 14, 16)],
                     [9.0 * fl, 8.0 * fl, 6.0 * fl, 3.5 * fl])
    ra_app = ps.tube([(40, 0, 18), (34, 14, 30), (24, 22, 30), (18, 24, 24)], [11.0 * fr, 9.0 * fr, 6.5 * fr, 4.0 * fr])
    mitral = ps.tube([(3, -20, 12), -6.0 * D0], [14.0, 13.0])  # ends inside the LV, which paints over it
    tricuspid = ps.tube([(40, -4, 0), lvq(0.0, 40.0, 10.0)], [15.0, 14.0])  # ends inside the RV
    out = [Part(sh, BLOOD_L, L_LA, wall=1.5, wall_tissue=MYO, halo=halo) for sh in la_app]
    out += [Part(sh, BLOOD_R, L_RA, wall=1.5, wall_tissue=MYO, halo=halo) for sh in ra_app]
    out += [Part(sh, BLOOD_L, L_LA) for sh in mitral] + [Part(sh, BLOOD_R, L_RA) for sh in tricuspid]
    return out


def _lv_wall_point(a: float, phi: float, frac: float, lc: float, rc: float) -> np.ndarray:
    """Canonical point at long-axis fraction a (0 base .. 1 apex), angle phi (0: septum) and radial fraction frac
    of the LV cavity half-ellipsoid."""
    ring = np.sqrt(max(1.0 - a * a, 0.0)) * frac
    return a * lc * D0 + ring * rc * (np.cos(phi) * E2 + 0.95 * np.sin(phi) * E3)


def cavity_detail(p: dict, ps, lc: float, rc: float, t: float, rv_rad: np.ndarray, rv_centre: np.ndarray
                  ) -> list[Part]:
    """Papillary muscles, trabeculae and the moderator band: myocardium tissue that keeps the cavity label."""
    rng = np.random.default_rng(p["detail_seed"])
    s, out = p["s"], []

    def bundle(a, b, ra, rb, label):
        out.append(Part(Capsule(ps.pt(a), ps.pt(b), s * ra, s * rb), MYO, label, inside=label))

    for phi in (np.pi - 0.7 + rng.uniform(-0.2, 0.2), np.pi / 2 + 0.4 + rng.uniform(-0.2, 0.2)):  # papillary muscles
        bundle(_lv_wall_point(0.65, phi, 1.05, lc, rc), _lv_wall_point(0.3, phi, 0.45, lc, rc),
               rng.uniform(6.5, 8.0), rng.uniform(3.5, 4.5), L_LV)
    for _ in range(p["trabeculae"][0]):  # chords along the apical endocardium
        a, phi = rng.uniform(0.4, 0.93), rng.uniform(0, 2 * np.pi)
        a2 = float(np.clip(a + rng.uniform(-0.15, 0.15), 0.35, 0.95))
        bundle(_lv_wall_point(a, phi, 0.93, lc, rc), _lv_wall_point(a2, phi + rng.uniform(-0.6, 0.6), 0.93, lc, rc),
               rng.uniform(2.0, 3.2), rng.uniform(1.6, 2.6), L_LV)
    frame = np.stack([D0, E2, E3])

    def rv_point(u):  # a point on the RV ellipsoid's surface (free-wall side) in direction u (frame coordinates)
        u = np.asarray(u, float) / np.linalg.norm(u)
        return rv_centre + (u * rv_rad * 0.9) @ frame

    band_a = rng.uniform(0.45, 0.6)
    bundle(_lv_wall_point(band_a, 0.0, 1.0, lc + t, rc + t), rv_point((0.35, 1.0, rng.uniform(-0.2, 0.2))),
           rng.uniform(2.5, 3.5), rng.uniform(2.0, 3.0), L_RV)
    for _ in range(p["trabeculae"][1]):
        u = np.array([rng.uniform(-0.3, 0.8), rng.uniform(0.4, 1.0), rng.uniform(-0.8, 0.8)])
        v = u + rng.normal(0, 0.25, 3)
        bundle(rv_point(u), rv_point(v), rng.uniform(2.0, 3.2), rng.uniform(1.5, 2.5), L_RV)
    return out


def annotate(label: np.ndarray, spacing, p: dict, sd_mm: tuple) -> np.ndarray:
    """The reference as an annotator traces it: label boundaries wander from the image's by a smooth random
    displacement (sd drawn from sd_mm, correlated over ~12 mm), applied around the heart (nearest neighbour)."""
    rng = np.random.default_rng([p["detail_seed"], 1])
    sd = rng.uniform(*sd_mm)
    boxes = [b for b in ndimage.find_objects(label) if b is not None]
    if not boxes or sd <= 0:
        return label
    pad = [int(np.ceil(6.0 / s)) for s in spacing]
    box = tuple(slice(max(0, min(b[k].start for b in boxes) - pad[k]),
                      min(label.shape[k], max(b[k].stop for b in boxes) + pad[k])) for k in range(3))
    shape = tuple(b.stop - b.start for b in box)
    knots = [max(2, int(np.ceil(n * s / 12.0)) + 1) for n, s in zip(shape, spacing)]  # a knot every ~12 mm
    coords = np.indices(shape, np.float32)
    for k in range(3):  # displacement in voxels along axis k, linear between the knots
        coarse = rng.normal(0.0, sd / spacing[k], knots).astype(np.float32)
        coords[k] += ndimage.zoom(coarse, [n / c for n, c in zip(shape, knots)], order=1, grid_mode=True,
                                  mode="nearest")[: shape[0], : shape[1], : shape[2]]
    out = label.copy()
    out[box] = ndimage.map_coordinates(label[box], coords, order=0, mode="nearest")
    return out
