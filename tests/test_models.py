"""Tests of alignrepro.models: tokenizer, ladder, pre-training (quality, determinism, cache), loading."""
import time
from collections import Counter

import pytest
import torch

import alignrepro.models as models
from alignrepro.core import ParameterError, RunStore
from alignrepro.models import LADDER, load_model, pretrain, smollm2, toy_model, toy_tokenizer
from alignrepro.evaluate import sample
from alignrepro.world import BEHAVIOURS, ToyWorld, WorldConfig

WORLD = WorldConfig()


@pytest.fixture(scope="module")
def world():
    return ToyWorld(WORLD)


@pytest.fixture(scope="module")
def tokenizer(world):
    return toy_tokenizer(world.vocab)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return RunStore(tmp_path_factory.mktemp("models_store"))


@pytest.fixture(scope="module")
def toy(store):
    "The xs rung pre-trained on 60k tokens, with the untrained and half-budget checkpoints kept."
    return pretrain(WORLD, "xs", 60_000, seed=0, checkpoints=(0.0, 0.5, 1.0), store=store)


def _padded(tokenizer, texts):
    return models._document_batches(tokenizer, texts, 64, 128, seed=0)


def _cross_entropy(model, batches) -> float:
    "Mean next-token cross-entropy (nats) over the real tokens of padded batches."
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            mask = batch != 0
            logits = model(input_ids=batch, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
            targets = batch[:, 1:]  # (B, T-1)
            logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total -= logp[mask[:, 1:]].sum().item()
            count += int(mask[:, 1:].sum())
    return total / count


def test_tokenizer_round_trips_world_text(world, tokenizer):
    texts = world.pretraining_dataset(5_000, seed=3)["text"]
    assert len(texts) > 10
    for text in texts:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids[1:]) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("zzzunknownword").input_ids) == ["<bos>", "<unk>"]
    assert [tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token] == \
        ["<pad>", "<bos>", "<eos>", "<unk>"]


def test_ladder_sizes_increase_and_span_the_range(tokenizer):
    assert len(LADDER) >= 5
    for arch in ("llama", "mistral"):
        with torch.device("meta"):
            counts = [toy_model(size, len(tokenizer), arch).num_parameters() for size in LADDER]
        assert counts == sorted(counts) and len(set(counts)) == len(counts)
        assert 0.02e6 < counts[0] < 0.1e6 and 5e6 < counts[-1] < 15e6
    with torch.device("meta"):
        assert toy_model("xs", len(tokenizer), "mistral").config.sliding_window is not None


def test_toy_model_init_depends_only_on_arguments(tokenizer):
    a, b, c = (toy_model("xxs", len(tokenizer), seed=s) for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_bad_parameters_name_the_allowed_values(tokenizer):
    with pytest.raises(ParameterError, match="size.*'xs'"):
        toy_model("huge", len(tokenizer))
    with pytest.raises(ParameterError, match="arch"):
        toy_model("xs", len(tokenizer), arch="gpt2")
    with pytest.raises(ParameterError, match="checkpoints"):
        pretrain(WORLD, "xs", 1_000, checkpoints=(1.5,))


def test_pretrained_model_beats_unigram_on_heldout_text(toy, world, tokenizer):
    train = torch.cat([b[b != 0] for b in _padded(tokenizer, world.pretraining_dataset(60_000, seed=0)["text"])])
    counts = torch.bincount(train, minlength=len(tokenizer)).double() + 1.0
    heldout = _padded(tokenizer, world.pretraining_dataset(10_000, seed=123)["text"])
    targets = torch.cat([b[:, 1:][b[:, 1:] != 0] for b in heldout])
    unigram = -(counts / counts.sum()).log()[targets].mean().item()
    trained = _cross_entropy(toy.load(1.0, device="cpu")[0], heldout)
    half = _cross_entropy(toy.load(0.5, device="cpu")[0], heldout)
    untrained = _cross_entropy(toy.load(0.0, device="cpu")[0], heldout)
    assert trained < half < untrained
    assert trained < unigram - 0.5, (trained, unigram)
    assert set(toy.log.columns) >= {"step", "tokens", "loss", "tokens_per_s"}
    assert toy.log.tokens.iloc[-1] >= 60_000 and (toy.log.tokens_per_s > 0).all()


def test_pretrain_is_cached(toy, store, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("pretrain retrained a cached model")
    monkeypatch.setattr(models, "train_loop", no_training)
    started = time.perf_counter()
    again = pretrain(WORLD, "xs", 60_000, seed=0, checkpoints=(1.0, 0.5, 0.0), store=store)
    assert time.perf_counter() - started < 5
    assert again.root == toy.root and again.log.equals(toy.log)
    with pytest.raises(AssertionError, match="retrained"):  # another seed is another model
        pretrain(WORLD, "xs", 60_000, seed=1, checkpoints=(1.0,), store=store)
    with pytest.raises(KeyError, match="saved"):
        toy.path(0.25)


def test_packed_rows_join_whole_documents(tokenizer, world, tmp_path):
    "pack=True: several whole documents per row, one <bos> each, a model whose context is the row length."
    texts = world.pretraining_dataset(4_000, seed=1)["text"]
    single, packed = (models._document_batches(tokenizer, texts, 4, 256, seed=0, pack=pack) for pack in (False, True))
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    real = lambda batches: torch.cat([row[row != pad] for batch in batches for row in batch])
    assert (real(packed) == bos).sum() == sum(len(batch) for batch in packed) and len(packed) < len(single)
    assert (real(packed) == tokenizer.eos_token_id).sum() == len(texts) and all(b.shape[1] <= 256 for b in packed)
    assert real(packed)[real(packed) != bos].tolist() == real(single)[real(single) != bos].tolist()  # same order
    run = pretrain(WORLD, "xxs", 4_000, seed=0, max_len=384, pack=True, store=RunStore(tmp_path))
    assert run.load(device="cpu")[0].config.max_position_embeddings == 384
    default = pretrain(WORLD, "xxs", 4_000, seed=0, store=RunStore(tmp_path))  # unpacked: a 128-token context
    assert default.root != run.root and default.load(device="cpu")[0].config.max_position_embeddings == 128


def test_pretrain_is_deterministic(tmp_path):
    runs = [pretrain(WORLD, "xxs", 8_000, seed=2, arch="mistral", store=RunStore(tmp_path / name)) for name in "ab"]
    assert runs[0].root != runs[1].root
    assert runs[0].log.loss.tolist() == runs[1].log.loss.tolist()
    (first, _), (second, _) = runs[0].load(device="cpu"), runs[1].load(device="cpu")
    assert type(first).__name__ == "MistralForCausalLM"
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), second.state_dict().values()))


def test_load_model_from_a_saved_folder(tmp_path, tokenizer, world):
    model = toy_model("xxs", len(tokenizer), seed=9)
    model.save_pretrained(tmp_path / "toy")
    tokenizer.save_pretrained(tmp_path / "toy")
    assert list((tmp_path / "toy").glob("*.safetensors"))
    loaded, loaded_tokenizer = load_model(tmp_path / "toy", device="cpu")
    text = world.pretraining_dataset(500, seed=0)["text"][0]
    assert loaded_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert not loaded.training


def test_missing_model_error_names_every_place_tried(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_model("no-such-org/no-such-model")
    message = str(error.value)
    assert "no-such-org/no-such-model" in message and "no such folder" in message
    assert "models--no-such-org--no-such-model" in message and "offline" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="could not be loaded"):
        load_model(empty)


@pytest.mark.slow
def test_smollm2_answers_capital_of_france():
    model, tokenizer = smollm2(device="cpu")
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(chat, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)


SHARES_WORLD = WorldConfig(sentiment_pos_share=0.7, safety_shares=(0.2, 0.3, 0.5))  # shares unlike the defaults
# With small batches, Adam turns each batch's share of positive reviews into a wandering bias: at batch 32 the
# probability of a positive word was 0.64-0.77 across checkpoints (target 0.7). Batches of 128 average it away.
SHARES_SIZE, SHARES_TOKENS, SHARES_BATCH = "xs", 1_500_000, 128  # about 47 s on 2 cores; all shares within 3 points
SHARES_SAMPLES = 1_000  # standard error at most 0.016 per share
SHARES_TOLERANCE = 0.05  # "within a few points": about 3 standard errors


def _behaviour(world, text: str) -> str:
    "The behaviour of a sampled document, by the world's oracles and words (exact on real documents)."
    if "<user>" not in text:
        return "facts" if set(world.entities) & set(text.split()) else "filler"
    if world.safety_label(text) != "other":
        return "safety"
    return "reviews" if set(world.items) & set(text.split("<assistant>", 1)[0].split()) else "help"


def test_behaviour_classifier_is_exact_on_pretraining_documents():
    world = ToyWorld(SHARES_WORLD)
    documents = world.pretraining_dataset(20_000, seed=4, with_labels=True)
    assert [_behaviour(world, t) for t in documents["text"]] == list(documents["behaviour"])


@pytest.mark.slow
def test_samples_follow_pretraining_shares():
    "Sampled at temperature 1, a pre-trained toy model reproduces the world's shares within a few points."
    world, n = ToyWorld(SHARES_WORLD), SHARES_SAMPLES
    toy = pretrain(SHARES_WORLD, SHARES_SIZE, SHARES_TOKENS, seed=0, batch_size=SHARES_BATCH)
    model, tokenizer = toy.load(device="cpu")
    documents = sample(model, tokenizer, [""], n=n, max_new_tokens=64, seed=0)[0]
    mix = Counter(_behaviour(world, text) for text in documents)
    measured = {behaviour: mix[behaviour] / n for behaviour in BEHAVIOURS}
    assert all(abs(measured[b] - share) < SHARES_TOLERANCE for b, share in zip(BEHAVIOURS, SHARES_WORLD.behaviour_mix)), measured
    reviews = [texts[0] for texts in sample(model, tokenizer, world.review_prompts(n, seed=1), max_new_tokens=4, seed=0)]
    polarity = [world.sentiment_score(f"<assistant> {text}") for text in reviews]
    assert abs(sum(p > 0 for p in polarity) / n - SHARES_WORLD.sentiment_pos_share) < SHARES_TOLERANCE
    answers = sample(model, tokenizer, world.harmful_prompts(n, seed=1)["prompt"], max_new_tokens=32, seed=0)
    labels = Counter(world.safety_label(texts[0]) for texts in answers)
    for label, share in zip(("refusal", "safe", "harmful"), SHARES_WORLD.safety_shares):
        assert abs(labels[label] / n - share) < SHARES_TOLERANCE, labels
