"""Scanner models of the synthetic phantom: tissue classes -> CT (HU) or MRI (bSSFP-like, cine) images.

Level 0 (`heartjax.data.phantom.levels`) renders exactly as the first generator did; higher levels add
arterial-to-venous contrast timing, stronger inflow mixing, streaks from dense contrast, heart motion blur and more
noise (CT), a stronger bias field and more noise (MRI). The cine mode averages thin slices into thick ones and
shifts each slice in-plane, as breath-holds between the slices of a cine stack do.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from heartjax.data.phantom import geometry as shp
from heartjax.data.phantom.levels import Level


def ct_values(rng: np.random.Generator, lv: Level) -> np.ndarray:
    """Per-patient Hounsfield units of each tissue class; left and right heart enhance differently."""
    left = rng.uniform(*lv.blood_left)
    right = float(np.clip(left + rng.uniform(*lv.right_minus_left), *lv.right_clip))
    v = np.zeros(len(shp.TISSUES), np.float32)
    v[shp.AIR], v[shp.FAT], v[shp.MUSCLE] = -1000.0, rng.uniform(*lv.fat_hu), rng.uniform(35, 60)
    v[shp.LUNG], v[shp.CORTEX], v[shp.MARROW] = rng.uniform(*lv.lung_hu), rng.uniform(*lv.cortex_hu), rng.uniform(
        200, 320)
    v[shp.RIB], v[shp.CSF], v[shp.LIVER] = rng.uniform(350, 650), rng.uniform(5, 20), rng.uniform(60, 110)
    v[shp.ABDOMEN], v[shp.MYO], v[shp.WALL] = rng.uniform(30, 50), rng.uniform(*lv.myo), rng.uniform(40, 70)
    v[shp.BLOOD_L], v[shp.BLOOD_R] = left, right
    v[shp.IVC], v[shp.SVC] = rng.uniform(80, 160), right + rng.uniform(0, 400)  # unmixed IVC, dense SVC inflow
    return v


def mri_values(rng: np.random.Generator, lv: Level) -> np.ndarray:
    """Per-patient bSSFP-like relative signal of each tissue class (bright blood and fat, dark myocardium)."""
    v = np.zeros(len(shp.TISSUES), np.float32)
    v[shp.FAT], v[shp.MUSCLE], v[shp.LUNG] = rng.uniform(0.7, 0.9), rng.uniform(0.15, 0.25), rng.uniform(0.03, 0.08)
    v[shp.CORTEX], v[shp.MARROW], v[shp.RIB] = 0.04, rng.uniform(0.45, 0.6), rng.uniform(0.25, 0.4)
    v[shp.CSF], v[shp.LIVER], v[shp.ABDOMEN] = rng.uniform(0.8, 0.95), rng.uniform(0.25, 0.35), rng.uniform(0.3, 0.45)
    v[shp.MYO], v[shp.WALL] = rng.uniform(*lv.mri_myo), rng.uniform(*lv.mri_myo)
    v[shp.BLOOD_L], v[shp.BLOOD_R] = rng.uniform(0.85, 1.0), rng.uniform(*lv.mri_right)
    v[shp.IVC], v[shp.SVC] = rng.uniform(0.75, 0.95), rng.uniform(0.75, 0.95)
    return v


def _inflow_mixing(img, label, grid, rng, amplitude) -> None:
    """RA and RV blood is a swirl of dense SVC contrast and unopacified IVC blood: add a smooth zero-mean field."""
    boxes = ndimage.find_objects(label)
    right = [boxes[i - 1] for i in (shp.L_RA, shp.L_RV) if i <= len(boxes) and boxes[i - 1] is not None]
    if not right:
        return
    box = tuple(slice(min(b[k].start for b in right), max(b[k].stop for b in right)) for k in range(3))
    x, y, z = grid.coords(box)
    field = np.zeros(img[box].shape, np.float32)
    for _ in range(3):  # a few random plane waves with 40-90 mm wavelength
        k = shp.unit(rng.normal(size=3)) * (2 * np.pi / rng.uniform(40, 90))
        field += np.cos((np.float32(k[0]) * x + np.float32(k[1]) * y) + np.float32(k[2]) * z
                        + np.float32(rng.uniform(0, 2 * np.pi)))
    inside = (label[box] == shp.L_RA) | (label[box] == shp.L_RV)
    np.add(img[box], field * np.float32(rng.uniform(*amplitude)), out=img[box], where=inside)


def _streaks(img, tissue, grid, rng, amplitude) -> None:
    """Beam-hardening streaks in each axial slice: alternating bright and dark lines through the centre of the
    densest material there (SVC contrast, else bone), fading with distance."""
    x, y, _ = grid.coords(tuple(slice(0, n) for n in grid.shape))
    x, y = x[:, :, 0], y[:, :, 0]
    angles = rng.uniform(0, np.pi, 6)
    signs = np.where(np.arange(6) % 2 == 0, 1.0, -1.0) * rng.uniform(0.6, 1.0, 6)
    amp = np.float32(rng.uniform(*amplitude))
    for k in range(grid.shape[2]):
        dense = tissue[:, :, k] == shp.SVC
        if not dense.any():
            continue
        ix, iy = np.nonzero(dense)
        cx, cy = x[ix, 0].mean(), y[0, iy].mean()
        r = np.hypot(x - cx, y - cy)
        field = np.zeros_like(r)
        for a, sg in zip(angles, signs):
            d = (x - cx) * np.sin(a) - (y - cy) * np.cos(a)  # distance to the line through the source
            field += sg * np.exp(-(d * d) / 2.0)
        img[:, :, k] += (amp * field * np.exp(-r / 80.0) * (r > 8.0)).astype(np.float32)


def _motion_blur(img, label, grid, rng, sigma_mm) -> np.ndarray:
    """Blur the heart (and only the heart, feathered) along one axis: cardiac motion during the acquisition."""
    axis = int(rng.integers(0, 3))
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = rng.uniform(*sigma_mm) / grid.spacing[axis]
    blurred = ndimage.gaussian_filter(img, sigma, truncate=3.0)
    weight = ndimage.gaussian_filter((label > 0).astype(np.float32), [4.0 / s for s in grid.spacing])
    return img + np.clip(2.0 * weight, 0, 1) * (blurred - img)


def render_ct(tissue, label, grid, p, rng, lv: Level) -> np.ndarray:
    """Hounsfield units: tissue values, inflow mixing, gravity-dependent lung density, ~1 mm blur, noise; from
    level 1 also streaks and heart motion blur."""
    img = ct_values(rng, lv)[tissue]
    _inflow_mixing(img, label, grid, rng, lv.mixing)
    y = grid.axis(1)
    dependent = (45.0 * np.clip((p["front_y"] - y) / 180.0, 0, 1)).astype(np.float32)[None, :, None]
    np.add(img, dependent, out=img, where=tissue == shp.LUNG)
    if lv.detail:
        _streaks(img, tissue, grid, rng, lv.streaks)
    img = ndimage.gaussian_filter(img, [rng.uniform(0.8, 1.2) / s for s in grid.spacing], truncate=3.0)
    if lv.detail:
        img = _motion_blur(img, label, grid, rng, lv.motion)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(*lv.noise))
    return np.clip(np.rint(img), -1024, 3071).astype(np.float32)


def thick_slices(img: np.ndarray, label: np.ndarray, sub: int, shifts_vox: np.ndarray):
    """Average each run of `sub` thin slices into one thick slice (partial volume across the slice), take the label
    of its centre, and shift slice k in-plane by shifts_vox[k] (voxels; image linear, label nearest)."""
    n = img.shape[2] // sub
    thick = img[:, :, : n * sub].reshape(img.shape[0], img.shape[1], n, sub).mean(3)
    lab = label[:, :, sub // 2: n * sub: sub]
    out_img, out_lab = np.empty_like(thick), np.empty_like(lab)
    for k in range(n):
        out_img[:, :, k] = ndimage.shift(thick[:, :, k], shifts_vox[k], order=1, mode="nearest")
        out_lab[:, :, k] = ndimage.shift(lab[:, :, k], shifts_vox[k], order=0, mode="nearest")
    return out_img, out_lab


def render_mri(tissue, label, grid, p, rng, lv: Level, cine_sub: int = 0):
    """bSSFP-like signal: blur, smooth multiplicative bias field, Rician noise, arbitrary scale.

    With cine_sub > 0 the grid's slices are thin sub-slices: each run of cine_sub becomes one thick slice, shifted
    in-plane by a breath-hold offset (sd 2 mm, at most 5 mm). Returns (image, label) on the output grid.
    """
    img = mri_values(rng, lv)[tissue]
    if cine_sub:
        img = ndimage.gaussian_filter(img, [1.2 / grid.spacing[0], 1.2 / grid.spacing[1], 0.0], truncate=3.0)
        n = grid.shape[2] // cine_sub
        shifts = np.clip(rng.normal(0.0, 2.0, (n, 2)), -5.0, 5.0) / np.array(grid.spacing[:2])
        img, label = thick_slices(img, label, cine_sub, shifts)
    else:
        img = ndimage.gaussian_filter(img, [1.2 / s for s in grid.spacing], truncate=3.0)
    u = [np.linspace(-1, 1, n, dtype=np.float32) for n in img.shape]
    c = rng.normal(0, lv.mri_bias, 6).astype(np.float32)
    log_xy = c[0] * u[0][:, None] + c[1] * u[1][None, :] + c[3] * u[0][:, None] ** 2 + c[4] * u[0][:, None] * u[1]
    img *= np.exp(log_xy[:, :, None] + (c[2] * u[2] + c[5] * u[2] ** 2)[None, None, :])
    sd = np.float32(rng.uniform(*lv.mri_noise))
    real = img + rng.standard_normal(img.shape, dtype=np.float32) * sd
    imag = rng.standard_normal(img.shape, dtype=np.float32) * sd
    return (np.sqrt(real * real + imag * imag) * np.float32(rng.uniform(100, 3000))).astype(np.float32), label
