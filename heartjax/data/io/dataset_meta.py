"""The metadata files that come with dataset layouts: nnU-Net / MSD dataset.json and ACDC Info.cfg."""

from __future__ import annotations

import json
from pathlib import Path

from heartjax.data import labels as labels_lib
from heartjax.common.errors import HeartjaxError

_MRI_WORDS = ("mri", "mr", "t1", "t2", "cine", "bssfp", "ssfp", "flair", "adc", "dwi", "lge", "de")


def read_dataset_json(path: Path) -> tuple[labels_lib.LabelScheme | None, str | None]:
    """Scheme (from "labels") and modality (from "channel_names" or "modality") of an nnU-Net/MSD dataset.json.

    (None, None) when the file is absent.
    """
    if not path.is_file():
        return None, None
    try:
        info = json.loads(path.read_text())
        raw = info.get("labels")
        channels = info.get("channel_names") or info.get("modality") or {}
    except (OSError, ValueError, AttributeError) as err:
        raise HeartjaxError(f"{path} is not a readable dataset.json ({err}); fix or remove it.") from err
    scheme = None
    if raw:
        try:
            if all(str(k).isdigit() for k in raw):  # MSD style {"0": "background", "1": "LV"}
                pairs = {str(name): int(code) for code, name in raw.items()}
            else:  # nnU-Net v2 style {"background": 0, "LV": 1}
                pairs = {str(name): int(code) for name, code in raw.items()}
        except (TypeError, ValueError) as err:
            raise HeartjaxError(
                f"{path}: labels {raw} are not name -> integer code pairs (region-based labels are not supported); "
                f"give each structure one code."
            ) from err
        structures = sorted(((c, n) for n, c in pairs.items() if c != 0))
        codes, names = tuple(c for c, _ in structures), tuple(n for _, n in structures)
        scheme = labels_lib.LabelScheme("dataset.json", codes, names, names) if codes else None
        for builtin in (labels_lib.MMWHS, labels_lib.ACDC):
            if {n.upper(): c for c, n in structures} == dict(zip(builtin.names, builtin.codes)):
                scheme = builtin
    words = {str(v).lower() for v in channels.values()} if isinstance(channels, dict) else set()
    modality = "ct" if words == {"ct"} else "mri" if words and all(w in _MRI_WORDS for w in words) else None
    return scheme, modality


def read_info_cfg(path: Path) -> dict[int, str]:
    """Frame number -> 'ED' / 'ES' from an ACDC Info.cfg (empty when the file is absent)."""
    if not path.is_file():
        return {}
    frames = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("ED", "ES") and value.strip().isdigit():
            frames[int(value.strip())] = key.strip()
    return frames
