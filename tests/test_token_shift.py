"""Chapter 07, token distribution shift: the measure on known cases, every claim rule with a reversed and a null
effect, and the tiny chapter run through papermill (claims.csv v2, nothing decided on 3 seeds)."""
import numpy as np
import pandas as pd
import torch

from alignrepro.core import CLAIM_COLUMNS
from alignrepro.evaluate import sample
from alignrepro.models import toy_model, toy_tokenizer
from alignrepro.token_shift import (
    alignment_data,
    changed_facts,
    claims_table,
    content_words,
    full_kl,
    opposite_data,
    preference_data,
    shared_words,
    shared_shifted,
    shift_category,
    synthetic_statistics,
    token_label,
    token_shift,
    top_k_kl,
)
from alignrepro.world import ToyWorld

TESTED = ["C1_unshifted_majority", "C2_few_shifted", "C3_style_shift", "C3_shifted_are_style", "C3_content_control",
          "C5_shift_falls", "C2_few_shifted_dpo", "C3_style_shift_dpo", "C8_urial_beats_zero_shot",
          "C9_more_examples_safer", "rebound_shifted_first", "C4_shared_shifted_tokens"]
NO_DIFFERENCE = ["C6_base_continues", "C7_urial_near_sft", "C7_urial_near_dpo", "C10_other_examples_same"]


def _verdicts(stats: pd.DataFrame) -> pd.Series:
    return claims_table(stats, "toy", "seeds").set_index("claim_id").verdict


def test_labels_split_the_world_vocabulary():
    world = ToyWorld()
    content = content_words(world)
    assert shared_words(world) == set()
    assert token_label(world.entities[3], content) == "content" and token_label("often", content) == "style"


def test_categories_and_kls():
    assert list(shift_category([1, 3, 4])) == ["unshifted", "marginal", "shifted"]
    p = torch.log_softmax(torch.tensor([[2.0, 0.0, -2.0, -4.0]]), -1)
    q = torch.log_softmax(torch.tensor([[-4.0, -2.0, 0.0, 2.0]]), -1)
    assert float(full_kl(p, q)) > 1 and float(top_k_kl(p, q, 2)) == 0  # the top-k overlap misses a complete swap


def test_a_model_against_itself_shifts_nothing_another_does():
    world = ToyWorld()
    tokenizer = toy_tokenizer(world.vocab)
    a, b = (toy_model("xxs", len(tokenizer), seed=s).eval() for s in (0, 1))
    prompts = list(world.helpfulness_sft(4)["prompt"])
    answers = [s[0] for s in sample(a, tokenizer, prompts, temperature=0, max_new_tokens=5)]
    same = token_shift(a, a, tokenizer, prompts, answers, [False] * 4, content=content_words(world))
    assert (same.category == "unshifted").all() and np.allclose(same.kl, 0, atol=1e-5)
    assert (token_shift(b, a, tokenizer, prompts, answers, [False] * 4).category != "unshifted").any()


def test_changed_facts_change_content_words_only():
    world = ToyWorld()
    data = alignment_data(world, 5, 2, seed=1)
    content = content_words(world)
    for before, after in zip(data["completion"], changed_facts(world, data)["completion"]):
        assert all(token_label(x, content) == "content" for x, y in zip(before.split(), after.split()) if x != y)


def test_preference_and_opposite_data_ask_the_alignment_prompts():
    world = ToyWorld()
    prompts = list(alignment_data(world, 5, 3, seed=2)["prompt"])
    assert list(preference_data(world, 5, 3, seed=2)["prompt"]) == prompts == list(opposite_data(world, 5, 3, 2)["prompt"])


def test_shared_shifted_tokens_beyond_chance():
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(50)])

    def rows(shifting):
        tokens = rng.choice(vocab, 500)
        return pd.DataFrame(dict(token=tokens, category=np.where(np.isin(tokens, shifting), "shifted", "unshifted")))
    same, chance = shared_shifted(rows(vocab[:8]), rows(vocab[:8]))
    assert same == 1.0 and chance < 0.3
    disjoint, chance = shared_shifted(rows(vocab[:8]), rows(vocab[20:28]))
    assert disjoint == 0.0 and chance > 0


def test_rules_reproduce_the_pattern():
    verdicts = _verdicts(synthetic_statistics())
    assert (verdicts[TESTED + NO_DIFFERENCE] == "reproduced").all(), verdicts


def test_rules_reject_a_reversed_effect():
    stats = synthetic_statistics(style_gap=-0.2, falls=-1.0, content_gap=-0.3, rank_late=9.0, urial_gap=-0.5,
                                 zero_shot_gap=-0.3, other_gap=0.5, return_gap=-0.3, shared_gap=-0.3,
                                 safety_gain=-0.2, help_loss=-0.2).assign(
        base_continues=lambda s: s.base_continues - 0.5, share_unshifted=lambda s: s.share_unshifted - 0.5,
        share_shifted=lambda s: s.share_shifted + 0.25)
    verdicts = _verdicts(stats)
    assert (verdicts[TESTED + NO_DIFFERENCE] == "not reproduced").all(), verdicts


def test_rules_never_reproduce_a_null_effect():
    stats = synthetic_statistics(style_gap=0, falls=0, content_gap=0, rank_late=5.0, zero_shot_gap=0, return_gap=0,
                                 shared_gap=0, safety_gain=0, help_loss=0, noise=0.02, seed=0).assign(
        share_unshifted=lambda s: 0.5 + s.share_marginal - 0.15, share_shifted=lambda s: 0.1 + s.share_marginal - 0.15)
    assert "reproduced" not in set(_verdicts(stats)[TESTED]), _verdicts(stats)


def test_three_seeds_decide_nothing():
    assert set(_verdicts(synthetic_statistics(n_seeds=3))) == {"inconclusive"}


def test_tiny_chapter_writes_claims(run_chapter):
    _, out_dir = run_chapter("07_token_shift", seeds=[0, 1, 2], toy_size="xxs", toy_tokens=3000, n_help=11, n_harm=11,
                             n_eval=3, sft_steps=2, dpo_steps=2, rebound_steps=2, max_new_tokens=8)
    claims = pd.read_csv(out_dir / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS and len(claims) == 16 and claims.claim_id.is_unique
    assert set(claims.verdict) == {"inconclusive"} and (claims.n <= 3).all()
    assert claims.paper.notna().all() and claims.unit.str.startswith("seeds").all()
    results = pd.read_parquet(out_dir / "results.parquet")
    assert {"token", "urial", "rebound"} <= set(results.record) and set(results.seed) == {0, 1, 2}
    assert {"aligned", "dpo", "changed_facts"} == set(results.variant)
    assert all((out_dir / name).exists() for name in ("shares.png", "positions.png", "urial.png"))
