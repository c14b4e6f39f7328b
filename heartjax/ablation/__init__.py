"""The ablation layer: `study` (a study as data, and its runs), `runner` (run, record, aggregate), `records` (one
small JSON per run), `stats` (the study's statistics from the records alone) and `report` (ablation.json, .md,
.png, the HParams folder). This module only gathers the public names:

    from heartjax import ablation
    study = ablation.Study("norm", "batch vs instance vs group norm", kinds=("2d", "3d"),
                           variants={"instance": (), "batch": ("model.norm=batch",), "group": ("model.norm=group",)})
    ablation.run_study(study, preset="smoke", seeds=2, workdir="runs/ablation", records="docs/studies/norm")
"""

from heartjax.ablation.records import origins, origins_text
from heartjax.ablation.runner import REUSE, aggregate_study, progress_line, run_folder, run_one, run_study
from heartjax.ablation.study import RunSpec, Study, expand

__all__ = ["REUSE", "aggregate_study", "origins", "origins_text", "progress_line", "run_folder", "run_one",
           "run_study", "RunSpec", "Study", "expand"]
