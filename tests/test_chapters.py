"""The chapter contract, for every study chapter from one table: the parameters cell says what the library's
defaults say; a tiny run of the `papermill` command on 3 seeds writes claims.csv v2, results.parquet and the
figures, and decides nothing (fewer than 5 units); other seeds move the numbers; with the mechanism removed (the
negative control, 5 seeds) the headline claim is not reproduced; a bad parameter stops the chapter before any
work, with an error naming it."""
import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from alignrepro.core import CLAIM_COLUMNS, ParameterError, RunStore


@dataclass
class Contract:
    chapter: str  # "module:Chapter instance"
    tiny: dict  # tiny parameters, seeds [0, 1, 2] (too few units: nothing may be decided)
    other_seeds: list  # a second run's seeds, given with -y: its numbers must differ
    n_claims: int  # rows of claims.csv
    figures: list  # files the chapter saves in out_dir
    bad: dict  # a chapter-specific bad value -> the parameter the error must name
    headline: str = ""  # the claim_id of the chapter's headline claim
    negative: dict = field(default_factory=dict)  # parameters laid over `tiny` that remove the mechanism (5 seeds)
    extra: callable = field(default=lambda out_dir: None)  # more checks on the tiny run's out_dir
    moved: callable = field(default=lambda out_dir, other_dir: _numbers_moved(out_dir, other_dir))


def _numbers_moved(out_dir: Path, other_dir: Path) -> bool:
    "Whether another run's claims report other numbers (in `statistic` or in `note`)."
    ours, theirs = (pd.read_csv(folder / "claims.csv")[["statistic", "note"]] for folder in (out_dir, other_dir))
    return bool((ours != theirs).any(axis=None))


def _honesty_tables(out_dir: Path) -> None:
    table = pd.read_csv(out_dir / "table5_layout.csv", index_col="method")
    assert list(table.index[:3]) == ["unaligned", "fine_tuned", "prompt"]
    assert table.loc["unaligned", "honesty (ours)"] == "50.0 ± 0.0"  # by construction


def _honesty_questions_moved(out_dir: Path, other_dir: Path) -> bool:
    "At tiny scale every honesty score is 0.5 whatever the seed; the seeds still draw other training questions."
    knowledge = RunStore().query("honesty").query("stage == 'knowledge' and split == 'train'")
    return set(knowledge[knowledge.seed == 0].question) != set(knowledge[knowledge.seed == 2].question)


CHAPTERS = {
    "03_elasticity": Contract(
        "alignrepro.elasticity:ELASTICITY",
        dict(seeds=[0, 1, 2], sizes=["xxs", "xs"], main_size="xxs", pretrain_tokens=2000, size_tokens=2000, token_fractions=[0.5, 1.0],
             k_fractions=[0.5, 1.0], k_n_pos=4, map_lrs=[5e-4], map_epochs=[1], n_pos=[4, 8], n_neg=[0, 4, 8, 12, 16],
             resist_n=8, resist_prompts=4, n_eval=4, theory_points=3),
        [1, 2, 3], 17, ["resistance.png", "rebound.png", "controls.png", "variants.png", "strength_map.png", "trends.png",
                        "theory.png", "size_trend.png"],
        dict(n_neg=[3, 1, 2]), "rebound", dict(pos_share=0.5)),
    "04_peft_grid": Contract(
        "alignrepro.peft_grid:PEFT_GRID",
        dict(seeds=[0, 1, 2], models=["llama-base", "llama-instruct"], size="xxs", pretrain_tokens=3000, instruct_steps=2,
             datasets=["beavertails"], preferences=["harmless", "helpful"], methods=["sft", "dpo"], pefts=["lora"],
             ranks=[2], merges=["dare_ties"], steps=2, batch_size=2, n_train=4, n_eval=2, checkpoints=[1.0],
             quality_block=False),
        [1], 24, ["scores_heatmap.png", "dpo_minus_sft.png", "quantity.png", "merges.png"], dict(pefts=["dora"]),
        "4", dict(shuffle_preferences=True)),
    "05_repe": Contract(
        "alignrepro.repe:REPE",
        dict(seeds=[0, 1, 2], toy_size="xxs", toy_tokens=3000, n_stimuli=6, n_behaviour=6, n_questions=6, n_neutral=3,
             norms=[-1.0, -0.25, -0.1, 0.0, 0.1, 0.25, 1.0]),
        [3, 4, 5], 14, ["tradeoff_sentiment_toy.png", "tradeoff_refusal_toy.png"], dict(method="median", small_norm=0.05),
        "alignment_increases_refusal_toy", dict(direction="random")),
    "06_honesty": Contract(
        "alignrepro.honesty:HONESTY",
        dict(seeds=[0, 1, 2], toy_size="xxs", toy_tokens=20_000, m=3, steps=2, batch_size=8, instruct_steps=2),
        [2, 3], 19, ["prudence_vs_overconservativeness.png", "calibration.png"], dict(scale="huge", tau=2.0),
        headline="multisample_gain", negative=dict(shuffle_known=True), extra=_honesty_tables,
        moved=_honesty_questions_moved),
    "07_token_shift": Contract(
        "alignrepro.token_shift:TOKEN_SHIFT",
        dict(seeds=[0, 1, 2], toy_size="xxs", toy_tokens=3000, n_help=11, n_harm=11, n_eval=3, sft_steps=2,
             dpo_steps=2, rebound_steps=2, max_new_tokens=8),
        [1, 2, 3], 16, ["shares.png", "positions.png", "urial.png"], dict(alignment="dpo"),
        "C3_style_shift", dict(alignment="base_samples")),
}
NBS = Path(__file__).resolve().parent.parent / "nbs"


def _chapter(contract: Contract):
    module, name = contract.chapter.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", CHAPTERS)
def test_parameters_cell_is_the_library_defaults(name):
    "What `papermill --help-notebook` shows (typed lines) is what the library's `Chapter` lays given values over."
    notebook = nbformat.read(NBS / f"{name}.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    body = [node for node in ast.parse(cell.source).body if not isinstance(node, ast.ImportFrom)]
    assert all(isinstance(node, ast.AnnAssign) for node in body), "every parameter carries a type annotation"
    assert all(line.count("=") <= 1 for line in cell.source.splitlines()), "papermill skips a line with two '='"
    assert {node.target.id: ast.literal_eval(node.value) for node in body} == _chapter(CHAPTERS[name]).defaults


@pytest.mark.parametrize("name", CHAPTERS)
def test_tiny_run_writes_claims_and_other_seeds_move_them(name, run_chapter):
    contract = CHAPTERS[name]
    _, out_dir = run_chapter(name, **contract.tiny)  # every parameter typed as -p NAME VALUE
    claims = pd.read_csv(out_dir / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS and len(claims) == contract.n_claims and claims.claim_id.is_unique
    assert claims.unit.notna().all() and (claims.n <= len(contract.tiny["seeds"])).all(), "every claim's units are seeds"
    assert set(claims.verdict) == {"inconclusive"}, "3 seeds are fewer than 5 units: nothing may be decided"
    assert len(pd.read_parquet(out_dir / "results.parquet")) > 0
    for figure in contract.figures:
        assert (out_dir / figure).stat().st_size > 10_000, figure
    contract.extra(out_dir)
    other_parameters = {**contract.tiny, "seeds": contract.other_seeds, "out_dir": str(out_dir.parent / "other")}
    _, other_dir = run_chapter(name, as_yaml=True, **other_parameters)  # all of them as one -y YAML document
    assert contract.moved(out_dir, other_dir), "other seeds gave the same numbers"


@pytest.mark.parametrize("name", CHAPTERS)
def test_negative_control_does_not_reproduce_the_headline(name, run_chapter):
    "The mechanism removed, on 5 seeds (enough units for a verdict): the headline claim must not come out reproduced."
    contract = CHAPTERS[name]
    _, out_dir = run_chapter(name, **{**contract.tiny, "seeds": [0, 1, 2, 3, 4], **contract.negative})
    headline = pd.read_csv(out_dir / "claims.csv", dtype={"claim_id": str}).set_index("claim_id").loc[contract.headline]
    assert headline.n == 5 and headline.verdict != "reproduced", headline.to_dict()


@pytest.mark.parametrize("name", CHAPTERS)
def test_bad_parameter_stops_the_chapter_naming_it(name, run_chapter):
    "Through the papermill command, the validation cell stops the chapter with an error naming the parameter."
    with pytest.raises(papermill.PapermillExecutionError) as error:
        run_chapter(name, **{**CHAPTERS[name].tiny, "seeds": "[0, 1.5]"})  # as typed after -p: text, not a list of ints
    assert error.value.ename == "ParameterError" and "parameter 'seeds'" in error.value.evalue


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_rules_name_each_bad_parameter(name):
    "The chapter's own rules, as its validation cell calls them (in this process: a kernel start each costs ~30 s)."
    contract = CHAPTERS[name]
    for parameter, value in contract.bad.items():
        with pytest.raises(ParameterError, match=f"parameter '{parameter}'"):
            _chapter(contract).parameters(**{**contract.tiny, parameter: value})
