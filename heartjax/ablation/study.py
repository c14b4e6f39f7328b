"""Ablation studies as data: a baseline and named variants, each a list of config overrides, run over training
seeds; `expand` turns a study into its runs (`heartjax.ablation.runner` runs them).

    from heartjax import ablation
    study = ablation.Study("norm", "batch vs instance vs group norm", kinds=("2d", "3d"),
                           variants={"instance": (), "batch": ("model.norm=batch",), "group": ("model.norm=group",)})
    ablation.run_study(study, preset="smoke", seeds=2, workdir="runs/ablation", records="docs/studies/norm")

Every variant x training seed (`seed=S`; the patients, split and preprocessing stay fixed by `data.seed`) is one
`heartjax.experiment.run` into WORKDIR/STUDY/VARIANT/seedS. Its numbers are kept as a small JSON record
(RECORDS/VARIANT-seedS.json: overrides, seed, kinds, steps, seconds, per-case Dice and HD95 per structure), and a
run with a record is never redone; a run folder with a config but no results continues from its checkpoints. The
study's results (`heartjax.ablation.stats.aggregate`) are computed from the records alone, so a study can be run in
parts on several machines and re-aggregated anywhere; `heartjax.ablation.report` writes ablation.json,
ablation.md, ablation.png and the TensorBoard HParams folder WORKDIR/STUDY/hparams.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from heartjax import experiment
from heartjax.config import Config
from heartjax.config.presets import DEFAULT_KINDS
from heartjax.common.errors import HeartjaxError


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Study:
    """A study: `variants` {NAME: overrides} on top of `baseline` overrides, trained for `kinds`.

    reference: the variant the others are compared with, patient by patient (default: the first variant);
    compare: {VARIANT: REFERENCE} where a variant is compared with another variant instead; x: a config key whose
    value is the x axis of a curve (e.g. "train.steps"); presets: the presets the study is meant for; seeds: the
    default number of training seeds; phantom_only: the study needs the built-in phantom (no --data).
    """

    name: str
    description: str
    variants: Mapping[str, Sequence[str]]
    baseline: Sequence[str] = ()
    kinds: Sequence[str] = DEFAULT_KINDS
    reference: str | None = None
    compare: Mapping[str, str] = dataclasses.field(default_factory=dict)
    x: str | None = None
    presets: Sequence[str] = ("smoke", "default", "acdc", "full")
    seeds: int = 3
    phantom_only: bool = False

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise HeartjaxError(f"study name {self.name!r} must be letters, digits, '_', '.' or '-'")
        if not self.variants:
            raise HeartjaxError(f"study {self.name}: define at least one variant")
        for v, overrides in self.variants.items():
            if not _NAME.match(v):
                raise HeartjaxError(f"study {self.name}: variant name {v!r} must be letters, digits, '_', '.' or '-'")
            if isinstance(overrides, str):
                raise HeartjaxError(f"study {self.name}: variant {v!r} must be a list of overrides, not one string")
        for v, ref in {**self.compare, "": self.reference_name}.items():
            if (v and v not in self.variants) or ref not in self.variants:
                raise HeartjaxError(f"study {self.name}: reference {v or 'reference'}={ref!r} names no variant; "
                                    f"variants: {list(self.variants)}")
        if not (isinstance(self.seeds, int) and self.seeds >= 1):
            raise HeartjaxError(f"study {self.name}: seeds={self.seeds!r} must be a positive integer")

    @property
    def reference_name(self) -> str:
        """The variant every other one is compared with unless `compare` says otherwise."""
        return self.reference if self.reference is not None else next(iter(self.variants))

    def reference_of(self, variant: str) -> str | None:
        """The variant `variant` is compared with (None for the study's reference itself)."""
        ref = self.compare.get(variant, self.reference_name)
        return None if ref == variant else ref

    def only(self, names: Sequence[str]) -> "Study":
        """The same study restricted to the variants `names` (`--variants`), in the study's order, under the same
        name, baseline and overrides, so that its runs and records are the full study's. The reference stays when
        it is chosen; otherwise the first chosen variant is the reference. A `compare` entry stays when both of its
        variants are chosen."""
        names = list(names)
        unknown = [n for n in names if n not in self.variants]
        if unknown or not names:
            raise HeartjaxError(f"--variants {','.join(names) or '(none)'}: study {self.name} has no variant "
                                f"{', '.join(map(repr, unknown)) or '(none named)'}; its variants: "
                                f"{','.join(self.variants)}")
        chosen = {v: o for v, o in self.variants.items() if v in names}
        reference = self.reference_name if self.reference_name in chosen else next(iter(chosen))
        compare = {v: r for v, r in self.compare.items() if v in chosen and r in chosen}
        return dataclasses.replace(self, variants=chosen, reference=reference, compare=compare)

    def varied_keys(self) -> list[str]:
        """Every config key a variant sets, in first-seen order."""
        return list(dict.fromkeys(o.split("=", 1)[0].strip() for ov in self.variants.values() for o in ov))


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study: a variant at one training seed, with its full override list and validated config."""

    study: str
    variant: str
    seed: int
    preset: str
    data: str | None
    overrides: tuple[str, ...]  # applied on the preset, in order
    variant_overrides: tuple[str, ...]
    cfg: Config

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.cfg.train.models)


def seed_list(seeds: int | Sequence[int] | None, default: int) -> list[int]:
    """The training seeds: a count N (seeds 0..N-1, `--num-seeds`), a list (`--seeds 0,1,2`), or None (the
    study's default count)."""
    seeds = default if seeds is None else seeds
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise HeartjaxError(f"--num-seeds={seeds!r} must be a positive integer")
        return list(range(seeds))
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or any(
            not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise HeartjaxError(f"--seeds={seeds!r} must be distinct non-negative integers, e.g. 0,1,2")
    return seeds


def expand(study: Study, preset: str = "default", data: str | None = None,
           seeds: int | Sequence[int] | None = None,
           extra: Sequence[str] = ()) -> list[RunSpec]:
    """The runs of a study, seed by seed (every variant of seed 0 first), each config validated.

    Overrides apply in this order: `train.models=KINDS`, the study's baseline, `extra` (e.g. from the command
    line), the variant's own, `seed=S`; so a variant always sets the keys it varies.
    """
    if study.phantom_only and data is not None:
        raise HeartjaxError(f"study {study.name} runs on the built-in phantom only; drop --data")
    runs = []
    for seed in seed_list(seeds, study.seeds):
        for variant, own in study.variants.items():
            overrides = (f"train.models={list(study.kinds)!r}", *study.baseline, *extra, *own, f"seed={seed}")
            try:
                cfg = experiment.config(preset, data, overrides)
            except HeartjaxError as e:
                raise HeartjaxError(f"study {study.name}, variant {variant}: {e}") from None
            runs.append(RunSpec(study.name, variant, seed, preset, data, overrides, tuple(own), cfg))
    return runs
