"""Label schemes as data: on-disk label codes <-> contiguous indices 0..K and structure names.

Index 0 is always background. A scheme maps the codes found in label files (MM-WHS uses 205, 420, ...) to
indices 1..K at load time and back to codes when a prediction is written.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping

import numpy as np

from heartjax.common.errors import HeartjaxError


@dataclasses.dataclass(frozen=True)
class LabelScheme:
    """A label scheme.

    Attributes:
      name: scheme name, e.g. "mmwhs".
      codes: on-disk code of each structure, in index order (index i + 1 has code codes[i]).
      names: short structure names in the same order.
      long_names: descriptive names in the same order.
      aliases: stray on-disk codes mapped to a canonical code (with a warning), e.g. MM-WHS 421 -> 420.
    """

    name: str
    codes: tuple[int, ...]
    names: tuple[str, ...]
    long_names: tuple[str, ...] = ()
    aliases: Mapping[int, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if len(self.codes) != len(self.names):
            raise HeartjaxError(f"label scheme {self.name!r}: {len(self.codes)} codes but {len(self.names)} names")
        if len(set(self.codes)) != len(self.codes) or 0 in self.codes:
            raise HeartjaxError(f"label scheme {self.name!r}: codes must be unique and non-zero, got {self.codes}")

    @property
    def num_classes(self) -> int:
        """Number of classes including background (K + 1)."""
        return len(self.codes) + 1

    def encode(self, codes: np.ndarray, source: str = "label map") -> np.ndarray:
        """Map an on-disk code array (any int or integral float dtype) to uint8 indices 0..K.

        Raises HeartjaxError naming `source`, the unknown codes found and the codes the scheme expects.
        """
        arr = np.asarray(codes)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise HeartjaxError(f"{source}: label map contains NaN or Inf values; labels must be integer codes")
            rounded = np.rint(arr)
            if not np.array_equal(rounded, arr):
                raise HeartjaxError(f"{source}: label map has non-integer values; is this an image rather than a label?")
            arr = rounded.astype(np.int64)
        present = np.unique(arr)
        unknown = self.unknown_codes(present)
        if unknown:
            raise HeartjaxError(
                f"{source}: unknown label codes {unknown} (codes found: {[int(c) for c in present]}); "
                f"scheme {self.name!r} expects 0 and {list(self.codes)}. Pick the right scheme (--scheme) "
                f"or fix the label file."
            )
        lut_codes = [0, *self.codes]
        out = np.zeros(arr.shape, np.uint8)
        for index, code in enumerate(lut_codes):
            if index:
                out[arr == code] = index
        for stray, canonical in self.aliases.items():
            hit = arr == stray
            if hit.any():
                warnings.warn(
                    f"{source}: {int(hit.sum())} voxels carry stray code {stray}; treated as "
                    f"{canonical} ({self.names[self.codes.index(canonical)]})",
                    stacklevel=2,
                )
                out[hit] = self.codes.index(canonical) + 1
        return out

    def unknown_codes(self, codes) -> list[int]:
        """The distinct values of `codes` that are neither 0 nor a code or alias of this scheme, sorted."""
        known = {0, *self.codes, *self.aliases}
        return sorted({int(c) for c in np.unique(codes)} - known)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Map indices 0..K back to on-disk codes (uint8 when all codes fit, else uint16)."""
        idx = np.asarray(indices)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_classes):
            raise HeartjaxError(
                f"label indices out of range 0..{self.num_classes - 1} for scheme {self.name!r}"
            )
        dtype = np.uint8 if max(self.codes) < 256 else np.uint16
        lut = np.array([0, *self.codes], dtype=dtype)
        return lut[idx.astype(np.int64)]

    def to_json(self) -> dict:
        """A JSON-ready description (kept in run folders so a model carries its own codes)."""
        return {
            "name": self.name,
            "codes": list(self.codes),
            "names": list(self.names),
            "long_names": list(self.long_names),
            "aliases": {str(k): v for k, v in self.aliases.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> "LabelScheme":
        """Inverse of `to_json`."""
        return cls(
            name=str(data["name"]),
            codes=tuple(int(c) for c in data["codes"]),
            names=tuple(data["names"]),
            long_names=tuple(data.get("long_names", ())),
            aliases={int(k): int(v) for k, v in data.get("aliases", {}).items()},
        )


MMWHS = LabelScheme(
    name="mmwhs",
    codes=(205, 420, 500, 550, 600, 820, 850),
    names=("MYO", "LA", "LV", "RA", "RV", "AO", "PA"),
    long_names=(
        "left ventricle myocardium",
        "left atrium blood cavity",
        "left ventricle blood cavity",
        "right atrium blood cavity",
        "right ventricle blood cavity",
        "ascending aorta",
        "pulmonary artery",
    ),
    aliases={421: 420},
)

ACDC = LabelScheme(
    name="acdc",
    codes=(1, 2, 3),
    names=("RV", "MYO", "LV"),
    long_names=("right ventricle blood cavity", "left ventricle myocardium", "left ventricle blood cavity"),
)

SCHEMES = {"mmwhs": MMWHS, "acdc": ACDC}


def generic(num_structures: int, names: tuple[str, ...] | None = None, codes: tuple[int, ...] | None = None) -> LabelScheme:
    """A scheme with codes 1..K (or the given codes) and names class1..classK (or the given names)."""
    if num_structures < 1:
        raise HeartjaxError(f"a label scheme needs at least one structure, got {num_structures}")
    codes = tuple(codes) if codes is not None else tuple(range(1, num_structures + 1))
    names = tuple(names) if names is not None else tuple(f"class{i}" for i in codes)
    return LabelScheme(name="generic", codes=codes, names=names, long_names=names)


def get_scheme(name: str) -> LabelScheme:
    """Look a scheme up by name: 'mmwhs', 'acdc' or 'genericK' (K structures coded 1..K)."""
    key = name.lower()
    if key in SCHEMES:
        return SCHEMES[key]
    if key.startswith("generic") and key[len("generic"):].isdigit():
        return generic(int(key[len("generic"):]))
    raise HeartjaxError(f"unknown label scheme {name!r}; choose one of {sorted(SCHEMES)} or 'genericK'")


def resolve_scheme(scheme) -> LabelScheme | None:
    """Accept a LabelScheme, a scheme name, or None."""
    return get_scheme(scheme) if isinstance(scheme, str) else scheme


def present_codes(codes) -> list[int]:
    """The distinct non-zero values of a label code array, sorted."""
    return sorted({int(c) for c in np.unique(codes)} - {0})


def scheme_from_codes(codes) -> LabelScheme:
    """MM-WHS when the non-zero codes are MM-WHS codes (or its stray aliases), else generic(largest code)."""
    present = present_codes(codes)
    if present and not MMWHS.unknown_codes(present):
        return MMWHS
    return generic(max(present) if present else 1)
