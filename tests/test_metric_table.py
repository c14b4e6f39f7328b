"""The metric table drives scoring and every output; NSD at 1 mm against hand-computed values."""

import math

import numpy as np
import pytest

from heartjax.ablation.records import make_record  # noqa: F401 (the records read the table too)
from heartjax.eval import evaluate, scoring
from heartjax.eval.metric_table import METRICS, surface_dice
from heartjax.eval.results import ModelResult, StructureScores
from heartjax.eval.surface import surface_metrics


def bars(pred_len: int = 6):
    """Truth: a 1-voxel bar at x=0, y=0..3; prediction: a bar at x=1, y=0..pred_len-1 (every voxel a surface voxel)."""
    truth = np.zeros((3, 8), np.int32)
    pred = np.zeros((3, 8), np.int32)
    truth[0, 0:4] = 1
    pred[1, 0:pred_len] = 1
    return pred, truth


def test_nsd_hand_computed():
    # spacing 1 x 1 mm. d(P->G): (1,0..3) -> 1.0 mm (within: the tolerance is inclusive), (1,4) -> sqrt(2),
    # (1,5) -> sqrt(5): 4 of 6. d(G->P): every truth voxel 1.0 mm from the bar: 4 of 4. NSD = 8 / 10.
    pred, truth = bars()
    assert surface_metrics(pred, truth, (1.0, 1.0), 2)["nsd"][0] == pytest.approx(0.8, abs=1e-12)
    # 1.5 mm across: nothing is within 1 mm.
    assert surface_metrics(pred, truth, (1.5, 1.0), 2)["nsd"][0] == 0.0
    # 0.5 mm across: (1,4) is sqrt(0.25 + 1) = 1.118 mm away, still outside; 8 / 10 again. At 2 mm tolerance 9 / 10.
    assert surface_metrics(pred, truth, (0.5, 1.0), 2)["nsd"][0] == pytest.approx(0.8, abs=1e-12)
    d_pt = np.array([0.5, 0.5, 0.5, 0.5, math.sqrt(1.25), math.sqrt(4.25)])
    assert surface_dice(2.0)(d_pt, np.full(4, 0.5)) == pytest.approx(0.9, abs=1e-12)


def test_nsd_worst_and_absent():
    pred, truth = bars()
    missed = surface_metrics(np.zeros_like(pred), truth, (1.0, 1.0), 2)
    assert missed["nsd"][0] == 0.0 and missed["hd95"][0] == pytest.approx(math.hypot(3.0, 8.0))
    both_absent = surface_metrics(np.zeros_like(pred), np.zeros_like(truth), (1.0, 1.0), 2)
    assert np.isnan(both_absent["nsd"][0])
    assert surface_metrics(truth, truth, (1.0, 1.0), 2)["nsd"][0] == 1.0


def test_the_table_drives_every_output():
    pred, truth = bars()
    case = scoring.score_case(pred, truth, (1.0, 1.0), ["BAR"], "c1")
    assert [m.name for m in METRICS if m.name not in case] == []
    assert case["nsd"]["BAR"] == pytest.approx(0.8)
    block = scoring.model_results([case], ["BAR"])
    assert set(block["per_structure"]["BAR"]) == {k for m in METRICS for k in m.keys()}
    assert block["per_structure"]["BAR"]["nsd_mean"] == pytest.approx(0.8)
    result = ModelResult.from_json("2d", block)
    assert isinstance(result.per_structure["BAR"], StructureScores)
    assert result.per_structure["BAR"].nsd_mean == pytest.approx(0.8)
    table = scoring.structure_table({"2d": block}, ["BAR"])
    assert "2d NSD 1 mm" in table[0] and table[1].count("---") == 1 + len(METRICS)
    rows = evaluate.csv_rows({"names": ["BAR"], "summary": block})
    assert rows[0][1:1 + len(METRICS)] == [f"BAR_{m.name}" for m in METRICS]
    assert float(rows[1][rows[0].index("BAR_nsd")]) == pytest.approx(0.8)


def test_old_results_read_without_the_new_metric():
    """A results.json written before NSD existed reads back, its NSD None."""
    old = {"per_structure": {"LV": {"dice_mean": 0.9, "dice_sd": 0.01, "dice_median": 0.9, "iou_mean": 0.8,
                                    "iou_sd": 0.02, "hd95_mean": 3.0, "hd95_sd": 1.0, "assd_mean": 1.0,
                                    "assd_sd": 0.1}}, "per_case": []}
    scores = ModelResult.from_json("3d", old).per_structure["LV"]
    assert scores.dice_mean == 0.9 and scores.nsd_mean is None
