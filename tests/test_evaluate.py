"""Tests of alignrepro.evaluate: batching equals one-at-a-time, probabilities, KL, sampling, trends and curve shapes."""
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alignrepro.evaluate import (compare_forms, completion_logprobs, fit_polynomial, fit_saturating, kl_divergence,
                                 next_token_probs, sample, spearman_by_group, vader_sentiment)
from alignrepro.models import toy_model, toy_tokenizer

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "<user>", "<assistant>"] + (
    "write a review of the lamp chair is was good great bad awful . and very quite yes no").split()
PROMPTS = ["<user> write a review of the lamp . <assistant> the lamp is",
           "<user> review the chair <assistant> very",
           "<user> write a review of the chair . <assistant> the chair was very quite"]
COMPLETIONS = ["good .", "bad . and awful . <eos>", "great"]


def _tokenizer() -> PreTrainedTokenizerFast:
    return toy_tokenizer(WORDS)


def _model(seed: int) -> LlamaForCausalLM:
    return toy_model("xs", len(WORDS), seed=seed).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


@pytest.fixture(scope="module")
def model():
    return _model(0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_batched_logprobs_equal_unbatched(model, side, reduction):
    tokenizer = _tokenizer()
    tokenizer.padding_side = side
    batched = completion_logprobs(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=3, reduction=reduction)
    single = [completion_logprobs(model, tokenizer, [p], [c], reduction=reduction)[0]
              for p, c in zip(PROMPTS, COMPLETIONS)]
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_scores_use_eval_mode_and_restore_it(model, tokenizer):
    noisy = LlamaForCausalLM(LlamaConfig(**{**model.config.to_dict(), "attention_dropout": 0.5}))
    noisy.load_state_dict(model.state_dict())
    noisy.train()
    noisy.model.layers[0].eval()  # a mixed state, restored as it was
    expected = completion_logprobs(model, tokenizer, PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(completion_logprobs(noisy, tokenizer, PROMPTS, COMPLETIONS), expected, atol=1e-5)
    assert kl_divergence(noisy, model, tokenizer, PROMPTS) == pytest.approx(0.0, abs=1e-7)
    assert noisy.training and noisy.model.layers[1].training and not noisy.model.layers[0].training


def test_logprobs_match_manual_sum(model, tokenizer):
    prompt, completion = PROMPTS[0], COMPLETIONS[0]
    ids = tokenizer(prompt + " " + completion, return_tensors="pt").input_ids
    n_prompt = len(tokenizer(prompt).input_ids)
    logp = torch.log_softmax(model(ids).logits[0], -1)
    manual = sum(logp[t - 1, ids[0, t]].item() for t in range(n_prompt, ids.shape[1]))
    got = completion_logprobs(model, tokenizer, [prompt], [completion])[0]
    assert got == pytest.approx(manual, abs=1e-5)
    assert completion_logprobs(model, tokenizer, [prompt], [completion], reduction="mean")[0] == \
        pytest.approx(manual / 2, abs=1e-5)


def test_logprobs_details_greedy_and_shared_inputs(model, tokenizer):
    "One-token completions of one prompt share a forward pass; `greedy` says whether greedy decoding gives each."
    with torch.no_grad():
        top = tokenizer.convert_ids_to_tokens(int(model(**tokenizer(PROMPTS[0], return_tensors="pt")).logits[0, -1].argmax()))
    others = [w for w in ("good", "bad", "great") if w != top][:2]
    completions = [top, *others, f"{top} .", "good . and"]
    scored = completion_logprobs(model, tokenizer, [PROMPTS[0]] * 5, completions, batch_size=2, details=True)
    assert scored.n_tokens.tolist() == [1, 1, 1, 2, 3] and scored.greedy.tolist()[:3] == [True, False, False]
    single = [completion_logprobs(model, tokenizer, [PROMPTS[0]], [c])[0] for c in completions]
    np.testing.assert_allclose(scored.logprob, single, atol=1e-5)
    np.testing.assert_array_equal(completion_logprobs(model, tokenizer, [PROMPTS[0]] * 5, completions, batch_size=2),
                                  scored.logprob)


def test_logprobs_reject_bad_reduction(model, tokenizer):
    with pytest.raises(ValueError, match="reduction"):
        completion_logprobs(model, tokenizer, PROMPTS, COMPLETIONS, reduction="max")


def test_next_token_probs_match_manual_softmax(model, tokenizer):
    words = ["good", "great", "bad", "awful", "."]
    probs = next_token_probs(model, tokenizer, PROMPTS, words, batch_size=2)
    assert probs.shape == (3, 5) and (probs > 0).all() and (probs.sum(1) <= 1 + 1e-6).all()
    word_ids = [WORDS.index(w) for w in words]
    for row, prompt in zip(probs, PROMPTS):
        manual = torch.softmax(model(tokenizer(prompt, return_tensors="pt").input_ids).logits[0, -1], -1)
        np.testing.assert_allclose(row, manual[word_ids].detach().numpy(), atol=1e-6)
    all_probs = next_token_probs(model, tokenizer, PROMPTS, WORDS[1:])
    assert np.allclose(all_probs.sum(1) + next_token_probs(model, tokenizer, PROMPTS, ["<pad>"])[:, 0], 1, atol=1e-5)


def test_next_token_probs_reject_multi_token_word(model, tokenizer):
    with pytest.raises(ValueError, match="single"):
        next_token_probs(model, tokenizer, PROMPTS, ["good great"])


def test_kl_zero_for_same_model_positive_otherwise(model, tokenizer):
    texts = PROMPTS + [p + " " + c for p, c in zip(PROMPTS, COMPLETIONS)]
    assert kl_divergence(model, model, tokenizer, texts, batch_size=4) == pytest.approx(0.0, abs=1e-7)
    other = _model(1)
    kl = kl_divergence(model, other, tokenizer, texts, batch_size=4)
    assert kl > 0.01
    unbatched = [kl_divergence(model, other, tokenizer, [t]) for t in texts]
    lengths = [len(tokenizer(t).input_ids) for t in texts]
    assert kl == pytest.approx(np.average(unbatched, weights=lengths), rel=1e-5)


def test_sampling_is_seeded(model, tokenizer):
    first = sample(model, tokenizer, PROMPTS, n=3, max_new_tokens=8, seed=0, batch_size=2)
    assert len(first) == 3 and all(len(s) == 3 for s in first)
    assert first == sample(model, tokenizer, PROMPTS, n=3, max_new_tokens=8, seed=0, batch_size=2)
    assert first != sample(model, tokenizer, PROMPTS, n=3, max_new_tokens=8, seed=1, batch_size=2)
    assert all(w in WORDS for samples in first for text in samples for w in text.split())


def test_greedy_equals_argmax_decoding(model, tokenizer):
    greedy = sample(model, tokenizer, PROMPTS, n=2, temperature=0, max_new_tokens=7)
    for prompt, texts in zip(PROMPTS, greedy):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        start = ids.shape[1]
        for _ in range(7):
            token = model(ids).logits[0, -1].argmax().view(1, 1)
            if token.item() == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, token], 1)
        assert texts == [tokenizer.decode(ids[0, start:], skip_special_tokens=True)] * 2


def test_sampling_stops_at_eos_and_stop_strings(model):
    tokenizer = _tokenizer()
    first_word = sample(model, tokenizer, PROMPTS[:1], temperature=0, max_new_tokens=1)[0][0]
    tokenizer.eos_token = first_word  # greedy's first word is now the end of sequence
    texts = sample(model, tokenizer, PROMPTS, temperature=0, max_new_tokens=6)
    assert texts[0] == [""] and all(first_word not in row[0].split() for row in texts)
    cut = sample(model, _tokenizer(), PROMPTS, n=4, max_new_tokens=10, stop=["good", "bad"], seed=3)
    assert all("good" not in t and "bad" not in t for row in cut for t in row)


def test_vader_orders_obvious_sentences():
    scores = vader_sentiment(["I love this wonderful lamp, it is great!", "This is a chair.",
                              "Horrible, awful chair. I hate it."])
    assert scores[0] > scores[1] > scores[2] and (np.abs(scores) <= 1).all()






def test_spearman_by_group():
    frame = pd.DataFrame({"seed": [0] * 3 + [1] * 3, "x": [1, 2, 3] * 2, "y": [1, 2, 3, 3, 2, 1]})
    assert spearman_by_group(frame, "x", "y")["rho"].tolist() == [1.0, -1.0]


def test_fit_polynomial_recovers_shape():
    x = np.linspace(-1, 1, 15)
    y = 1 + 2 * x - 3 * x ** 2 + np.random.default_rng(0).normal(0, 0.01, x.size)
    fit = fit_polynomial(x, y, 2)
    np.testing.assert_allclose(fit["coef"], [1, 2, -3], atol=0.05)
    assert fit["r2"] > 0.99 and fit["powers"] == [0, 1, 2]
    table = compare_forms(x, y, {"linear": 1, "quadratic": 2, "pure": (0, 2)})
    assert table["delta_aic"].idxmin() == "quadratic" and table.loc["linear", "r2"] < 0.9
    exact = fit_polynomial([0, 1, 2, 3], [1, 3, 5, 7], 1)
    assert exact["loo_mse"] == pytest.approx(0, abs=1e-20) and exact["r2"] == pytest.approx(1)


def test_forms_recognise_known_shapes():
    x = np.linspace(-2, 2, 25)
    noise = np.random.default_rng(3).normal(0, 0.003, x.size)
    saturating = fit_saturating(x, 0.4 + 0.25 * np.tanh(1.2 * (x + 0.5)) + noise)
    assert np.allclose(saturating["coef"], [0.4, 0.25, 1.2, -0.5], atol=0.05) and saturating["r2"] > 0.99
    assert compare_forms(x, 0.4 + 0.25 * np.tanh(1.2 * (x + 0.5)) + noise).delta_aic.idxmin() == "saturating"
    assert compare_forms(x, 0.3 - 0.04 * x ** 2 + noise).delta_aic.idxmin() == "quadratic"
    linear = compare_forms(x, 0.5 + 0.05 * x + noise)
    assert linear.loc["linear", "delta_aic"] < 2.5 and linear.loc["linear", "r2"] > 0.99
    with pytest.raises(ValueError):
        fit_saturating(x[:5], x[:5])
    assert list(compare_forms(x[:5], x[:5] ** 2).index) == ["linear", "quadratic"]  # too few points for a sigmoid
    assert list(compare_forms(x[:4], x[:4] ** 2, {"pure": (0, 2), "cubic": 3}).index) == ["pure"]

