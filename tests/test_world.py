"Tests of the toy world: determinism, vocabulary, shares, oracles, seen facts, label noise, trl schemas."
import re
from collections import Counter

import pytest
from trl.data_utils import is_conversational

from alignrepro.core import ParameterError
from alignrepro.world import (BEAVERTAILS_LIKE, FAMILIES, HARMFUL_MARKERS, HELP_LABELS, HH_LIKE, IDK_REPLY, JAILBREAK_PREFIX,
                              NEGATIVE_WORDS, POSITIVE_WORDS, REFUSALS, REVIEW_SENTENCES, SAFETY_LABELS, SAFETY_TOPICS,
                              SPECIAL_TOKENS, ToyWorld, WorldConfig, exact_match, is_refusal, response_words,
                              safety_label, sentiment_score)

SKEWED = WorldConfig(seed=3, behaviour_mix=(0.4, 0.3, 0.2, 0.05, 0.05), sentiment_pos_share=0.8,
                     safety_shares=(0.2, 0.3, 0.5), jailbreak_share=0.0, helpfulness_shares=(0.1, 0.6, 0.3),
                     facts_seen_fraction=0.3)


@pytest.fixture(scope="module")
def world():
    return ToyWorld()


@pytest.fixture(scope="module")
def skewed():
    return ToyWorld(SKEWED)


@pytest.fixture(scope="module")
def skewed_corpus(skewed):
    return skewed.pretraining_dataset(60_000, seed=1, with_labels=True).to_pandas()


def _all_views(world: ToyWorld, seed: int) -> dict:
    "Every dataset view of the world, small."
    return dict(pretraining=world.pretraining_dataset(3_000, seed=seed),
                sentiment_pos=world.sentiment_dataset(20, "pos", seed=seed),
                sentiment_neg=world.sentiment_dataset(20, "neg", seed=seed),
                safety_hh=world.safety_preferences(20, seed=seed, **HH_LIKE),
                safety_bt=world.safety_preferences(20, seed=seed, **BEAVERTAILS_LIKE),
                help_pref=world.helpfulness_preferences(20, seed=seed, multi_turn=True),
                safety_sft=world.safety_sft(20, seed=seed),
                help_sft=world.helpfulness_sft(20, seed=seed, quality="bare"),
                harmful=world.harmful_prompts(20, seed=seed, jailbreak=True),
                help_prompts=world.helpfulness_prompts(20, seed=seed),
                facts=world.fact_questions(seed=seed),
                mc=world.multiple_choice(50, seed=seed),
                heldout=world.heldout_task(20, seed=seed))


def _texts(views: dict) -> list[str]:
    return [value for ds in views.values() for column in ds.column_names for value in ds[column] if isinstance(value, str)]


def test_deterministic_given_config_and_seed(world):
    again = ToyWorld(WorldConfig())
    for (name, a), b in zip(_all_views(world, 5).items(), _all_views(again, 5).values()):
        assert a.to_list() == b.to_list(), name
    assert world.vocab == again.vocab and world.review_prompts(10, seed=2) == again.review_prompts(10, seed=2)
    assert world.pretraining_dataset(2_000, seed=1)["text"] != world.pretraining_dataset(2_000, seed=2)["text"]
    other = ToyWorld(WorldConfig(seed=1))
    assert other.entities != world.entities and other.facts != world.facts


def test_vocab_covers_every_generated_word(world, skewed):
    for w in (world, skewed):
        vocab = set(w.vocab)
        assert w.vocab[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS and len(vocab) == len(w.vocab)
        assert 300 <= len(vocab) <= 1000
        words = Counter(word for text in _texts(_all_views(w, 0)) + w.review_prompts(50) for word in text.split())
        assert set(words) <= vocab, set(words) - vocab
        assert all(re.fullmatch(r"[a-z]+|[.,?)]|<[a-z]+>", word) for word in vocab)


def test_pretraining_follows_token_budget_and_shares(skewed, skewed_corpus):
    n_words = skewed_corpus.text.str.split().str.len()
    assert 60_000 <= n_words.sum() < 60_000 + n_words.max()
    assert (skewed_corpus.text.str.endswith("<eos>")).all() and n_words.max() <= 64
    assert n_words[skewed_corpus.behaviour == "reviews"].max() <= 48
    shares = skewed_corpus.behaviour.value_counts(normalize=True)
    for behaviour, share in zip(("reviews", "safety", "help", "facts", "filler"), SKEWED.behaviour_mix):
        assert abs(shares[behaviour] - share) < 0.03, (behaviour, shares[behaviour])
    # the labels the oracles read from the text follow the configured shares
    reviews = skewed_corpus[skewed_corpus.behaviour == "reviews"].text
    assert abs((reviews.map(sentiment_score) > 0).mean() - 0.8) < 0.04
    safety = skewed_corpus[skewed_corpus.behaviour == "safety"].text.map(safety_label).value_counts(normalize=True)
    for label, share in zip(SAFETY_LABELS, SKEWED.safety_shares):
        assert abs(safety[label] - share) < 0.04, (label, safety[label])
    help_docs = skewed_corpus[skewed_corpus.behaviour == "help"].text
    scores = help_docs.map(lambda t: skewed.helpfulness_score(t, t)).value_counts(normalize=True)
    for score, share in zip((1.0, 0.5, 0.0), SKEWED.helpfulness_shares):
        assert abs(scores[score] - share) < 0.04, (score, scores[score])


def test_review_prompts_end_right_before_the_sentiment_word(world, skewed_corpus):
    pos, neg = set(world.sentiment_words("pos")), set(world.sentiment_words("neg"))
    assert pos == set(POSITIVE_WORDS) and neg == set(NEGATIVE_WORDS) and not pos & neg
    for prompt in world.review_prompts(30):
        assert re.fullmatch(r"<user> [a-z ,.?]+ <assistant> the [a-z]+ is", prompt), prompt
    # in the corpus, the word after such a prompt is always a sentiment word of the document's polarity
    for text, label in skewed_corpus[skewed_corpus.behaviour == "reviews"][["text", "label"]].head(300).itertuples(index=False):
        words = text.split()
        next_word = words[words.index("<assistant>") + 4]
        assert next_word in (pos if label == "pos" else neg), text


def test_oracles_classify_every_template(world):
    rng = world._rng("test", 0)
    for topic in SAFETY_TOPICS:
        for label in SAFETY_LABELS:
            for _ in range(3):
                answer = world._safety_answer(rng, topic, dict(e=world.entities[0], item=world.items[0]), label)
                assert safety_label(answer) == label, (label, answer)
    assert all(safety_label(r) == "refusal" for r in REFUSALS)
    for kind, sign in [("pos", 1), ("neg", -1)]:
        for _ in range(30):
            assert sentiment_score(world._review(rng, kind)[1]) == sign
        adjectives = POSITIVE_WORDS if kind == "pos" else NEGATIVE_WORDS
        for sentence in REVIEW_SENTENCES[kind]:
            assert sentiment_score(sentence.format(adj=adjectives[0])) == sign
    assert all(sentiment_score(s.format(day="monday")) == 0 for s in REVIEW_SENTENCES["neutral"])
    for entity, family in list(world.facts)[:60]:
        prompt = f"<user> {world._fact_question(rng, entity, family)} <assistant>"
        scores = [world.helpfulness_score(prompt, world._help_answer(rng, entity, family, label)) for label in HELP_LABELS]
        assert scores == [1.0, 0.5, 0.0], (entity, family, scores)
    # the markers of each safety label appear in no other kind of text
    other_texts = _texts(_all_views(world, 1))
    other_texts = [t for t in other_texts if safety_label(t) != "harmful"]
    assert not any(HARMFUL_MARKERS & set(response_words(t)) for t in other_texts)


def test_fact_oracles(world):
    questions = world.fact_questions().to_pandas()
    assert len(questions) == (world.config.n_entities + world.config.n_unknown_entities) * len(FAMILIES)
    assert questions.seen.sum() == len(world.seen) == round(0.5 * len(world.facts))
    for row in questions.head(120).to_dict("records"):
        assert world.fact_correct(row, row["completion"])
        assert not world.fact_correct(row, IDK_REPLY) and not is_refusal(row["completion"])
        wrong = next(v for v in world.family_values[row["family"]] if v != row["answer"])
        assert not world.fact_correct(row, row["completion"].replace(row["answer"], wrong))
        assert not world.fact_correct(row, row["completion"].replace("<eos>", f"{wrong} . <eos>"))  # hedging between two values is wrong
    unknown = questions[~questions.exists]
    assert len(unknown) == world.config.n_unknown_entities * len(FAMILIES) and (unknown.answer == "").all()
    assert all(is_refusal(c) and not world.fact_correct(r, c) for r, c in zip(unknown.to_dict("records"), unknown.completion))
    mc = world.multiple_choice(seed=0).to_pandas()
    assert len(mc) == len(world.facts)
    for row in mc.head(100).to_dict("records"):
        assert len(set(row["choices"])) == 4
        assert row["choices"][ord(row["answer"]) - ord("a")] == world.facts[(row["entity"], row["family"])]
        assert exact_match(row, row["completion"]) and not exact_match(row, "e <eos>")
    for row in world.heldout_task(50).to_list():
        a, b = re.findall(r"(\w+) or (\w+)", row["prompt"])[0] if row["task"] == "larger" else (None, None)
        assert exact_match(row, row["completion"]) and (a is None or row["answer"] in (a, b))


@pytest.mark.parametrize("fraction", [0.3, 0.8])
def test_unseen_facts_never_appear_in_pretraining(fraction):
    world = ToyWorld(WorldConfig(seed=7, facts_seen_fraction=fraction))
    assert len(world.seen) == round(fraction * len(world.facts))
    docs = [set(text.split()) for text in world.pretraining_dataset(80_000, seed=0)["text"]]
    unseen = [(e, world.facts[(e, f)]) for e, f in world.facts if (e, f) not in world.seen]
    assert unseen
    assert not any(entity in doc and value in doc for doc in docs for entity, value in unseen)
    assert not any(set(world.unknown_entities) & doc for doc in docs)
    # seen facts do appear: their statement sentences are in the corpus
    corpus = " ".join(world.pretraining_dataset(80_000, seed=0)["text"])
    stated = [(e, f) for e, f in world.seen
              if any(s.format(e=e, v=world.facts[(e, f)]) in corpus for s in FAMILIES[f]["statements"])]
    assert len(stated) >= 0.95 * len(world.seen)


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.25])
def test_label_noise_flips_the_configured_share(noise):
    world = ToyWorld(WorldConfig(label_noise=noise))
    safety = world.safety_preferences(200, seed=1)
    assert sum(safety_label(c) == "harmful" for c in safety["chosen"]) == round(noise * 200)
    assert sum(safety_label(r) != "harmful" for r in safety["rejected"]) == round(noise * 200)
    helpful = world.helpfulness_preferences(200, seed=1)
    flipped = sum(world.helpfulness_score(p, c) < world.helpfulness_score(p, r)
                  for p, c, r in zip(helpful["prompt"], helpful["chosen"], helpful["rejected"]))
    assert flipped == round(noise * 200)
    override = world.safety_preferences(100, seed=1, label_noise=0.5)
    assert sum(safety_label(c) == "harmful" for c in override["chosen"]) == 50


def test_quality_and_turns(world):
    bare = world.safety_preferences(30, quality="bare", multi_turn=True)
    assert all(safety_label(c) == "refusal" for c in bare["chosen"])
    assert all(p.count("<user>") == 2 and p.count("<eos>") == 1 for p in bare["prompt"])
    informative = world.safety_preferences(30, quality="informative")
    assert all(safety_label(c) == "safe" for c in informative["chosen"]) and all(p.count("<user>") == 1 for p in informative["prompt"])
    terse = world.helpfulness_preferences(30, quality="bare", multi_turn=True)
    assert all(world.helpfulness_score(p, c) == 0.5 for p, c in zip(terse["prompt"], terse["chosen"]))
    rows = world.helpfulness_prompts(40, seed=3)
    detailed = list(world.helpfulness_sft(1, quality="informative")["completion"]) * 40
    assert world.win_rate(rows["prompt"], rows["reference"], rows["reference"]) == 0.5
    assert world.win_rate(rows["prompt"], [IDK_REPLY] * 40, rows["reference"]) == 0.0
    assert world.win_rate(rows["prompt"], detailed, rows["reference"]) < 0.5  # a detailed answer to another question loses
    assert all(JAILBREAK_PREFIX in p for p in world.harmful_prompts(20, jailbreak=True)["prompt"])
    assert not any(JAILBREAK_PREFIX in p for p in world.harmful_prompts(20)["prompt"])


def test_schemas_match_trl(world):
    views = _all_views(world, 0)
    assert views["pretraining"].column_names == ["text"]
    for name in ["sentiment_pos", "safety_sft", "help_sft"]:
        ds = views[name]
        assert ds.column_names == ["prompt", "completion"], name
        assert not is_conversational(ds[0])
        assert all(p.startswith("<user> ") and p.endswith("<assistant>") for p in ds["prompt"])
        assert all(c.endswith(" <eos>") and "<assistant>" not in c for c in ds["completion"])
    for name in ["safety_hh", "safety_bt", "help_pref"]:
        ds = views[name]
        assert ds.column_names == ["prompt", "chosen", "rejected"], name
        assert not is_conversational(ds[0])
        assert all(p.endswith("<assistant>") for p in ds["prompt"])
        assert all(t.endswith(" <eos>") for t in list(ds["chosen"]) + list(ds["rejected"]))
    for name in ["facts", "mc", "heldout", "harmful", "help_prompts"]:
        assert all(p.endswith("<assistant>") for p in views[name]["prompt"]), name
    assert all("  " not in t and t == t.strip() for t in _texts(views))


def test_config_validation():
    with pytest.raises(ParameterError, match="quality"):
        WorldConfig(quality="great")
    with pytest.raises(ParameterError, match="behaviour_mix"):
        WorldConfig(behaviour_mix=(0.5, 0.5, 0.5, 0, 0))
    with pytest.raises(ParameterError, match="facts_seen_fraction"):
        WorldConfig(facts_seen_fraction=1.5)
    with pytest.raises(ParameterError, match="facts_seen_fraction"):
        ToyWorld(WorldConfig(facts_seen_fraction=0.0))
    only_reviews = ToyWorld(WorldConfig(facts_seen_fraction=0.0, behaviour_mix=(1, 0, 0, 0, 0)))
    assert set(only_reviews.pretraining_dataset(500, with_labels=True)["behaviour"]) == {"reviews"}
    with pytest.raises(ParameterError, match="polarity"):
        ToyWorld().sentiment_dataset(3, "happy")
