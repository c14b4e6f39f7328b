"""Host-side sampling of 3D patches and 2D slices (numpy), and prefetching batches to the device.

A batch depends only on (seed, step), never on what was drawn before, so a resumed run from step N draws
exactly the batches an uninterrupted run would have drawn, and the `Prefetcher`'s worker threads (each drawing
whole batches of its own steps) give the same batches, in the same order, whatever their number.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Sequence

import jax
import numpy as np

from heartjax.common.errors import HeartjaxError


class PatchSampler:
    """Draws training batches of 3D patches (spatial_dims=3) or 2D slices (spatial_dims=2).

    cases: heartjax.data.preprocess.Preprocessed with labels. 2D slices are cut along `slice_axis` (the plan's
    coarsest axis) and cropped/padded in-plane to `patch`; with `context` K > 1 (odd, 2D only) the K slices
    centred on the drawn one are the channels (edge slices replicated) and the label is the centre slice's.
    A share `fg_fraction` of each batch (the last samples, as nnU-Net does) is centred on a voxel of a random
    structure present in the case.
    `batch(step)` returns (images float32 [B, *patch, C], labels uint8 [B, *patch]), C = context (1 in 3D).
    """

    def __init__(self, cases: Sequence, patch: Sequence[int], batch_size: int, seed: int, spatial_dims: int = 3,
                 slice_axis: int = 2, fg_fraction: float = 0.33, context: int = 1):
        if not cases:
            raise HeartjaxError("no training cases to sample from: check the split (train list is empty)")
        if len(patch) != spatial_dims:
            raise HeartjaxError(f"patch {tuple(patch)} must have {spatial_dims} sizes for a {spatial_dims}D sampler")
        if not 0.0 <= fg_fraction <= 1.0:
            raise HeartjaxError(f"sampling.fg_fraction must be in [0, 1], got {fg_fraction}")
        if context < 1 or context % 2 == 0 or (context > 1 and spatial_dims != 2):
            raise HeartjaxError(f"context={context} slices must be odd and positive, and > 1 only for 2D samplers")
        self.context = int(context)
        self.patch, self.batch_size, self.seed = tuple(int(p) for p in patch), int(batch_size), int(seed)
        self.spatial_dims, self.slice_axis = spatial_dims, slice_axis
        self.n_random = int(round(batch_size * (1.0 - fg_fraction)))
        self.images, self.labels, self.fg, self.lows = [], [], [], []
        for c in cases:
            img, lbl = c.image, c.label
            if spatial_dims == 2:  # move the slice axis first: [S, u, v]
                img, lbl = np.moveaxis(img, slice_axis, 0), np.moveaxis(lbl, slice_axis, 0)
            self.images.append(np.ascontiguousarray(img, np.float32))
            self.labels.append(np.ascontiguousarray(lbl, np.uint8))
            # the padding value, the minimum of what a sample is cut from: the volume (3D), each slice (2D)
            im = self.images[-1]
            self.lows.append(im.min() if spatial_dims == 3 else im.reshape(len(im), -1).min(axis=1))
            flat = lbl.ravel()
            self.fg.append({int(k): np.flatnonzero(flat == k).astype(np.int64) for k in np.unique(flat) if k})

    def _corner(self, shape, center, rng) -> list[int]:
        """The patch's low corner in `shape`: around `center`, or at a random place when None."""
        lo = []
        for a, (n, p) in enumerate(zip(shape, self.patch)):
            if center is None:
                lo.append(int(rng.integers(min(0, n - p), max(0, n - p) + 1)))
            else:
                lo.append(int(np.clip(center[a] - p // 2, min(0, n - p), max(0, n - p))))
        return lo

    def _cut(self, k: int, s: int | None, lo: list[int], out_img: np.ndarray, out_lbl: np.ndarray) -> None:
        """Write the sample of case k (slice s in 2D) at corner lo into out_img [*patch, C] and out_lbl [*patch],
        padding volumes smaller than the patch with the minimum of the volume (3D) or of the context slices (2D)."""
        img, lbl = self.images[k], self.labels[k]
        if s is not None:
            half = self.context // 2
            slices = np.clip(np.arange(s - half, s + half + 1), 0, img.shape[0] - 1)
            low, lbl, planes = self.lows[k][slices].min(), lbl[s], [img[j] for j in slices]
        else:
            low, planes = self.lows[k], [img]
        src = tuple(slice(max(0, l), min(n, l + p)) for l, n, p in zip(lo, lbl.shape, self.patch))
        dst = tuple(slice(q.start - l, q.stop - l) for q, l in zip(src, lo))
        if any(q.stop - q.start < p for q, p in zip(src, self.patch)):  # pad only what the volume does not cover
            out_img[...] = low
            out_lbl[...] = 0
        for c, plane in enumerate(planes):
            out_img[dst + (c,)] = plane[src]
        out_lbl[dst] = lbl[src]

    def batch(self, step: int, part: tuple[int, int] | None = None):
        """The batch of one optimiser step: (images [B, *patch, C] float32, labels [B, *patch] uint8).

        part=(lo, hi) cuts only samples lo..hi-1 of the step's batch (one process's share of a global batch):
        every sample is drawn from the one stream of (seed, step), so the samples never depend on how the batch
        is split between processes or devices.
        """
        rng = np.random.default_rng((self.seed, int(step)))
        lo_i, hi_i = part or (0, self.batch_size)
        imgs = np.empty((hi_i - lo_i, *self.patch, self.context), np.float32)
        lbls = np.empty((hi_i - lo_i, *self.patch), np.uint8)
        for i in range(self.batch_size):
            k = int(rng.integers(len(self.images)))
            lbl, fg = self.labels[k], self.fg[k]
            center, s = None, None
            if i >= self.n_random and fg:
                cls = list(fg)[int(rng.integers(len(fg)))]
                flat = int(fg[cls][int(rng.integers(len(fg[cls])))])
                center = np.unravel_index(flat, lbl.shape)
            shape = lbl.shape
            if self.spatial_dims == 2:
                s = int(center[0]) if center is not None else int(rng.integers(lbl.shape[0]))
                center, shape = (None if center is None else center[1:]), lbl.shape[1:]
            corner = self._corner(shape, center, rng)
            if lo_i <= i < hi_i:
                self._cut(k, s, corner, imgs[i - lo_i], lbls[i - lo_i])
        return imgs, lbls


def default_workers() -> int:
    """Prefetch worker threads by default: min(4, the cores this process may use)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


class Prefetcher:
    """Iterates batches for steps [start, stop) drawn on background threads, already transferred to the device.

    The host draws and transfers the next steps while the device runs step N. `place(array) -> device array` puts
    each array of a batch on the devices (e.g. this process's rows of a global batch sharded along a mesh axis:
    heartjax.train.parallel.Feed); None uses the default device. `workers` threads (default `default_workers()`)
    draw whole batches: worker w the steps start + w, start + w + workers, ..., each `depth` batches ahead at most,
    and the batches are yielded in step order; `sampler.batch(step)` must be a pure function of the step (numpy
    releases the GIL while it copies, so the threads cut samples in parallel).
    """

    def __init__(self, sampler, start: int, stop: int, depth: int = 2, place=None, workers: int | None = None):
        self.sampler, self.start, self.stop = sampler, start, stop
        self.place = place or jax.device_put
        self.workers = max(1, min(int(workers or default_workers()), max(1, stop - start)))
        self._qs = [queue.Queue(maxsize=max(1, depth)) for _ in range(self.workers)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(self.workers)]
        for t in self._threads:
            t.start()

    def _put(self, q: queue.Queue, item):
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self, w: int):
        q = self._qs[w]
        try:
            for step in range(self.start + w, self.stop, self.workers):
                if self._stop.is_set():
                    return
                img, lbl = self.sampler.batch(step)
                self._put(q, (step, (self.place(img), self.place(lbl)), None))
        except Exception as e:  # surfaced in the consumer thread
            self._put(q, (None, None, e))

    def __iter__(self):
        for i in range(self.stop - self.start):
            step, batch, err = self._qs[i % self.workers].get()
            if err is not None:
                raise err
            yield step, batch

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
