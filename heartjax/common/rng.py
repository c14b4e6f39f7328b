"""Named random streams: every consumer of randomness draws from its own stream, derived from one seed by name.

`key(seed, "init/3d")` is `fold_in(key(seed), crc32("init/3d"))`; `seed_for(seed, "split")` is the same idea for
NumPy consumers (a 32-bit integer from a SeedSequence of the seed and the name's hash). crc32 of a name is the
same in every process and Python version (Python's own `hash` of a str is salted per process).

Two seeds drive an experiment: `data.seed` for what defines the patients (phantom, split, fingerprint sample,
validation patches) and `seed` for training (initialisation, sampling, augmentation, dropout). A training-seed
study therefore keeps the patients, the split and the preprocessed data fixed.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np


def stream_id(name: str) -> int:
    """A stable 32-bit identifier of a stream name."""
    return zlib.crc32(name.encode("utf-8"))


def key(seed: int, name: str) -> jax.Array:
    """The typed PRNG key of stream `name` under `seed`."""
    return jax.random.fold_in(jax.random.key(int(seed)), stream_id(name))


def fold(key_: jax.Array, name: str) -> jax.Array:
    """A named sub-stream of a key (traceable: usable inside jit)."""
    return jax.random.fold_in(key_, stream_id(name))


def seed_for(seed: int, name: str) -> int:
    """A 32-bit integer seed of stream `name` under `seed`, for NumPy generators."""
    return int(np.random.SeedSequence((int(seed), stream_id(name))).generate_state(1)[0])
