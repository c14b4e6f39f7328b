"""The shipped ablation studies, one short module each defining `STUDY` (a `heartjax.ablation.Study`).

`load(name)` returns a shipped study by name, or the `STUDY` of a Python file given by path (your own study);
`NAMES` lists the shipped ones in the order `python -m experiments.ablate --list` prints them.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from heartjax.ablation import Study
from heartjax.common.errors import HeartjaxError

NAMES = ("budget", "patients", "predecessor", "augmentation", "norm", "loss", "transfer", "cine")

# heartjax.config.augment.AugmentConfig's application probabilities, by what the transform changes.
SPATIAL_P = ("rotation_p", "scale_p", "elastic_p", "mirror_p")
INTENSITY_P = ("noise_p", "blur_p", "brightness_p", "contrast_p", "lowres_p", "gamma_inverted_p", "gamma_p")


def off(*probabilities: str) -> tuple[str, ...]:
    """Overrides that switch augmentation transforms off: off(*SPATIAL_P) -> ("augment.rotation_p=0.0", ...)."""
    return tuple(f"augment.{p}=0.0" for p in probabilities)


def load(name: str) -> Study:
    """A shipped study by name, or the STUDY defined in a .py file; HeartjaxError names the choices otherwise."""
    if name in NAMES:
        return importlib.import_module(f"{__name__}.{name}").STUDY
    path = Path(name)
    if path.suffix == ".py" and path.is_file():
        spec = importlib.util.spec_from_file_location(f"heartjax_study_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        study = getattr(module, "STUDY", None)
        if not isinstance(study, Study):
            raise HeartjaxError(f"study file {path} must define STUDY = heartjax.ablation.Study(...)")
        return study
    raise HeartjaxError(f"unknown study {name!r}; shipped studies: {', '.join(NAMES)} (see --list), "
                        f"or the path of a .py file defining STUDY")


def shipped() -> list[Study]:
    """Every shipped study, in NAMES order."""
    return [load(n) for n in NAMES]
