"""The world-fixed chest of the synthetic phantom: body wall, fat, muscle, lungs, diaphragm, ribs, sternum, spine,
and the unlabelled lung vessels.

Painted into a tissue map before the heart (`heartjax.data.phantom.shapes.heart_parts`), which paints over it.
Coordinates are world mm on the phantom's RAS grid; `p` is a patient from `shapes.sample_patient`.
"""

from __future__ import annotations

import numpy as np

from heartjax.data.phantom.geometry import (ABDOMEN, BLOOD_L, BLOOD_R, CORTEX, CSF, FAT, LIVER, LUNG, MARROW,
                                            MUSCLE, RIB, Capsule, Grid, Part, Pose, unit)


def paint_chest(tissue: np.ndarray, grid: Grid, p: dict) -> None:
    """Paint the world-fixed chest into a tissue map: body, fat, muscle, lungs, diaphragm, ribs, sternum, spine."""
    x, y, _ = grid.coords(tuple(slice(0, n) for n in grid.shape))
    x, y, z = x[:, :, 0], y[:, :, 0], grid.axis(2)
    xm, ys, yf, fat, mus = p["midline"], p["spine_y"], p["front_y"], p["fat"], p["muscle"]
    y_back, y_front = ys - 56.0 - fat, yf + 10.0 + mus + fat
    cy, half_ap, half_lr = (y_back + y_front) / 2, (y_front - y_back) / 2, p["half_width"] + 0.5 * fat

    def ellipse(cx, cy_, ax, ay):
        return ((x - cx) / ax) ** 2 + ((y - cy_) / ay) ** 2 < 1

    def inset(t):
        return ellipse(xm, cy, half_lr - t, half_ap - t)

    wall_in, cavity = inset(fat + mus), inset(fat + mus + 11.0)
    spine_block = ((x - xm) ** 2 + (y - ys) ** 2 < 25.0 ** 2) | ((np.abs(x - xm) < 30) & (y < ys))
    tissue[inset(0.0)] = FAT
    tissue[inset(fat)] = MUSCLE
    tissue[cavity & ~spine_block] = LUNG
    tissue[cavity & ellipse(xm - 5, (ys + yf) / 2, 24.0, (yf - ys) / 2)] = FAT  # mediastinum
    # diaphragm: liver under the (higher) right dome, stomach and spleen under the left
    heights = []
    for cx, top in ((xm + 45.0, p["dome"]), (xm - 55.0, p["dome"] - p["dome_left"])):
        r2 = ((x - cx) / 115.0) ** 2 + ((y - cy - 15.0) / 110.0) ** 2
        heights.append(np.where(r2 < 1, top - 85.0 + 85.0 * np.sqrt(np.clip(1 - r2, 0, 1)), -np.inf))
    height = np.maximum(*heights)
    below = wall_in[:, :, None] & (z[None, None, :] < height[:, :, None])
    np.copyto(tissue, np.where(heights[0] >= heights[1], LIVER, ABDOMEN).astype(tissue.dtype)[:, :, None],
              where=below)
    # ribs: a band of the chest wall, sloping down anteriorly, every 27 mm; cartilage (muscle) near the sternum
    band = wall_in & ~cavity & (np.abs(x - xm) >= 30)
    ix, iy = np.nonzero(band)
    theta = np.arctan2(np.abs(x[ix, 0] - xm) / half_lr, (cy - y[0, iy]) / half_ap) / np.pi  # 0 back, 1 front
    phase = np.mod(z[None, :] + (p["rib_drop"] * theta)[:, None] - p["rib_phase"], 27.0)
    cols = tissue[ix, iy, :]
    cols[phase < 9.0] = RIB
    tissue[ix, iy, :] = cols
    for ax, ay, value in ((15.0, 6.5, CORTEX), (11.0, 3.5, MARROW)):
        tissue[ellipse(xm, yf + 6.0, ax, ay)] = value  # sternum
    # vertebra: body (cortex, marrow, discs), canal, arch, spinous and transverse processes
    disc = np.mod(z - p["rib_phase"] + 4.0, 27.0) < 6.0
    r_body = np.hypot(x - xm, y - ys)
    canal_y = ys - 27.0
    r_canal = np.hypot(x - xm, y - canal_y)
    arch = ((r_canal < 14) & (y < canal_y + 5)) | ((np.abs(x - xm) < 4) & (y < canal_y) & (y > canal_y - 30))
    tissue[arch] = CORTEX
    tissue[r_canal < 8] = CSF
    transverse = ((np.abs(y - canal_y) < 5) & (np.abs(x - xm) < 36) & (np.abs(x - xm) >= 14))[:, :, None]
    np.copyto(tissue, np.uint8(CORTEX), where=transverse & (np.mod(z - p["rib_phase"], 27.0) < 10.0)[None, None, :])
    body3d = (r_body < 17)[:, :, None]
    np.copyto(tissue, np.uint8(CORTEX), where=body3d & ~disc[None, None, :])
    np.copyto(tissue, np.uint8(MARROW), where=(r_body < 15)[:, :, None] & ~disc[None, None, :])
    np.copyto(tissue, np.uint8(MUSCLE), where=body3d & disc[None, None, :])


def lung_vessels(p: dict, rng: np.random.Generator, starts: np.ndarray) -> list[Part]:
    """Unlabelled arteries and veins (to be painted over lung only): trees from the hila, plus short peripheral
    segments from `starts` (world points [N, 3] in the lungs) pointing away from the nearest hilum."""
    ps, out = Pose(p), []
    hila = (((62, -24, 50), 1, BLOOD_R), ((-58, -28, 58), -1, BLOOD_R), ((55, -38, 14), 1, BLOOD_L),
            ((-50, -37, 14), -1, BLOOD_L))
    levels = ((35.0, 55.0, 4.0, 2.8), (25.0, 40.0, 2.6, 1.8), (18.0, 30.0, 1.6, 1.0))  # length range, radii

    def grow(start, direction, level):
        lo, hi, ra, rb = levels[level]
        end = start + direction * rng.uniform(lo, hi)
        out.append(Part(Capsule(start, end, ra, rb), tissue))
        if level + 1 < len(levels):
            for _ in range(2):
                grow(end, unit(direction + rng.normal(0, 0.6, 3)), level + 1)

    for root, side, tissue in hila:
        for _ in range(4):
            grow(ps.pt(root), unit(np.array([0.5 * side, -0.2, 0.0]) + rng.normal(0, 0.8, 3)), 0)
    roots = np.array([ps.pt(h[0]) for h in hila])
    for start in starts:
        k = int(np.argmin(((roots - start) ** 2).sum(1)))
        direction = unit(unit(start - roots[k]) + rng.normal(0, 0.4, 3))
        tissue = hila[k][2] if rng.random() < 0.5 else BLOOD_R + BLOOD_L - hila[k][2]
        r = rng.uniform(0.8, 2.2)
        out.append(Part(Capsule(start, start + direction * rng.uniform(15, 35), r, 0.7 * r), tissue))
    return out
