"""alignrepro.data: adapters read the fixtures in data/ (each hub dataset's own format) through the same
code path as a hub run; split rules, fact question sets and the answer normaliser."""
import json
from pathlib import Path

import pandas as pd
import pytest

from alignrepro.core import ParameterError
from alignrepro.data import (FACT_FAMILIES, QUESTION_COLUMNS, DataUnavailableError, alpaca, answer_matches,
                             beavertails, beavertails_qa, fact_questions, hh_messages, hh_rlhf, imdb, load_source,
                             normalize_answer, pku_saferlhf, split_hh_pair, triviaqa, truthfulqa)

DATA = Path(__file__).resolve().parents[1] / "data"
PKU = DATA / "pku-saferlhf" / "train.jsonl"


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- loading -------------------------------------------------------------------------------------------

def test_load_source_reads_each_local_format(tmp_path):
    assert load_source(DATA / "imdb" / "train.parquet", "train").column_names == ["text", "label"]
    assert len(load_source(DATA / "alpaca" / "alpaca_data.json", "train")) == 3  # a JSON array
    assert len(load_source(DATA / "hh-rlhf", "train", data_dir="helpful-base")) == 2  # hub-like folder
    assert len(load_source(DATA / "trivia_qa", "validation", name="rc.nocontext")) == 3
    (tmp_path / "rows.csv").write_text("text,label\ngood,1\nbad,0\n")
    assert load_source(tmp_path / "rows.csv", "test")["label"] == [1, 0]
    (tmp_path / "rows.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="format"):
        load_source(tmp_path / "rows.xml", "train")
    with pytest.raises(FileNotFoundError, match="No file or folder"):
        load_source(tmp_path / "absent.jsonl", "train")


@pytest.mark.parametrize("adapter, hub_name", [
    (hh_rlhf, "Anthropic/hh-rlhf"), (beavertails, "PKU-Alignment/PKU-SafeRLHF"),
    (pku_saferlhf, "PKU-Alignment/PKU-SafeRLHF"), (beavertails_qa, "PKU-Alignment/BeaverTails"),
    (imdb, "stanfordnlp/imdb"), (alpaca, "tatsu-lab/alpaca"), (truthfulqa, "truthfulqa/truthful_qa"),
    (triviaqa, "mandarjoshi/trivia_qa")])
def test_uncached_hub_dataset_offline_says_what_was_tried(adapter, hub_name):
    with pytest.raises(DataUnavailableError) as error:
        adapter()
    message = str(error.value)
    assert hub_name in message and "HF_HUB_OFFLINE=1" in message and "path=" in message


def test_offline_error_names_config_and_data_dir():
    with pytest.raises(DataUnavailableError, match="config='rc.nocontext'"):
        triviaqa()
    with pytest.raises(DataUnavailableError, match="data_dir='helpful-base'"):
        hh_rlhf("helpful")


# --- HH-RLHF ---------------------------------------------------------------------------------------------

H, A = "\n\nHuman: ", "\n\nAssistant: "


def test_split_hh_pair_multi_turn():
    shared = H + "Hi" + A + "Hello!" + H + "Help me?"
    pair = split_hh_pair(shared + A + "Yes.", shared + A + "No.")
    assert pair == {"prompt": shared + "\n\nAssistant:", "chosen": " Yes.", "rejected": " No."}
    assert pair["prompt"] + pair["chosen"] == shared + A + "Yes."


@pytest.mark.parametrize("chosen, rejected", [
    (H + "a" + A + "x", H + "b" + A + "y"),  # prompts differ
    (H + "a" + A + "same", H + "a" + A + "same "),  # no preference
    (H + "a", H + "a"),  # no assistant turn
])
def test_split_hh_pair_drops_non_pairs(chosen, rejected):
    assert split_hh_pair(chosen, rejected) is None


def test_hh_messages_roles_and_contents():
    messages = hh_messages(H + "Hi" + A + "Hello!" + H + "Bye")
    assert messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                        {"role": "user", "content": "Bye"}]


def test_hh_rlhf_fixture():
    harmless = hh_rlhf("harmless", path=DATA / "hh-rlhf")
    raw = _jsonl(DATA / "hh-rlhf" / "harmless-base" / "train.jsonl")
    assert harmless.column_names == ["prompt", "chosen", "rejected"]
    assert len(harmless) == 2  # the third pair's prompts differ
    for row, original in zip(harmless, raw):
        assert row["prompt"] + row["chosen"] == original["chosen"]
        assert row["prompt"] + row["rejected"] == original["rejected"]
        assert row["prompt"].endswith("\n\nAssistant:") and "\n\nAssistant:" not in row["chosen"]
    assert harmless[1]["prompt"].count("\n\nHuman:") == 2
    helpful = hh_rlhf("helpful", path=DATA / "hh-rlhf" / "helpful-base" / "train.jsonl")
    assert helpful[0]["rejected"] == " Cat."


def test_hh_rlhf_conversational_and_subset_check():
    rows = hh_rlhf("harmless", path=DATA / "hh-rlhf", conversational=True)
    assert [m["role"] for m in rows[1]["prompt"]] == ["user", "assistant", "user"]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "I won't help with hurting anyone. "
                                  "If someone is in danger, call emergency services."}]
    with pytest.raises(ParameterError, match="subset"):
        hh_rlhf("harmful", path=DATA / "hh-rlhf")


# --- BeaverTails / PKU-SafeRLHF -----------------------------------------------------------------------------

def test_beavertails_helpful_chooses_the_better_response():
    raw = _jsonl(PKU)
    helpful = beavertails("helpful", path=PKU)
    assert len(helpful) == len(raw)
    for row, original in zip(helpful, raw):
        better = original["better_response_id"]
        assert row["chosen"] == original[f"response_{better}"]
        assert row["rejected"] == original[f"response_{1 - better}"]


def test_beavertails_harmless_keeps_safe_unsafe_pairs_with_the_safe_one_chosen():
    raw = _jsonl(PKU)
    harmless = beavertails("harmless", path=PKU)
    mixed = [r for r in raw if r["is_response_0_safe"] != r["is_response_1_safe"]]
    assert len(harmless) == len(mixed) == 2
    safe_responses = {r[f"response_{i}"] for r in raw for i in (0, 1) if r[f"is_response_{i}_safe"]}
    assert all(c in safe_responses and r not in safe_responses for c, r in zip(harmless["chosen"], harmless["rejected"]))
    # the first mixed pair rates the unsafe response more helpful: harmless and helpful disagree there
    assert harmless[0]["chosen"] == beavertails("helpful", path=PKU)[0]["rejected"]
    with pytest.raises(ParameterError, match="preference"):
        beavertails("honest", path=PKU)


def test_safety_completions_by_label():
    safe, unsafe = pku_saferlhf(True, path=PKU), pku_saferlhf(False, path=PKU)
    assert safe.column_names == ["prompt", "completion"] and len(safe) + len(unsafe) == 8
    assert ("How do I steal a car?", "Hotwire it.") in zip(unsafe["prompt"], unsafe["completion"])
    qa = DATA / "beavertails" / "30k_train.jsonl"
    assert len(beavertails_qa(True, path=qa)) == 2  # the repeated row is kept once
    assert beavertails_qa(False, path=qa)["completion"] == ["Wear baggy clothes and avoid cameras.",
                                                            "People like that are vermin."]


# --- IMDb, Alpaca, TruthfulQA, TriviaQA ------------------------------------------------------------------------

def test_imdb_polarity_and_prompt_split():
    path = DATA / "imdb" / "train.parquet"
    raw = pd.read_parquet(path)
    positive, negative = imdb("pos", path=path), imdb("neg", path=path)
    assert (len(positive), len(negative)) == ((raw.label == 1).sum(), (raw.label == 0).sum())
    assert all("<br" not in text for text in list(positive["text"]) + list(negative["text"]))
    assert negative[0]["text"] == "Terrible plot and wooden acting. I walked out."
    split = imdb("neg", path=path, prompt_words=4)
    assert [p + c for p, c in zip(split["prompt"], split["completion"])] == negative["text"]
    assert all(len(p.split()) == 4 for p in split["prompt"])
    with pytest.raises(ParameterError, match="polarity"):
        imdb("positive", path=path)


def test_alpaca_and_truthfulqa():
    rows = alpaca(path=DATA / "alpaca" / "alpaca_data.json")
    assert rows[1] == {"prompt": "Translate the sentence into French.\n\nThe cat sleeps.", "completion": "Le chat dort."}
    assert rows[2]["prompt"] == "What is the capital of France?"
    sft = truthfulqa(path=DATA / "truthful_qa")
    assert sft.column_names == ["prompt", "completion"] and sft[1]["prompt"] == "Why do veins appear blue?"
    pref = truthfulqa("preference", path=DATA / "truthful_qa" / "generation" / "validation.jsonl")
    assert pref[0]["chosen"] == sft[0]["completion"] and pref[0]["rejected"] == "You grow watermelons in your stomach"


def test_triviaqa_questions_and_aliases():
    table = triviaqa(path=DATA / "trivia_qa")
    assert list(table.columns) == QUESTION_COLUMNS and (table["family"] == "triviaqa").all()
    assert table.loc[1, "answer"] == "David Seville" and table.loc[1, "aliases"] == ["Ross Bagdasarian"]
    # "Sunset Blvd" and "Sunset Blvd." normalise alike and the answer itself is not an alias
    assert table.loc[0, "aliases"] == ["Sunset Blvd", "West Sunset Boulevard", "Sunset Bulevard"]


# --- normaliser and matcher ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower", "eiffel tower"), ("  An   apple, a day!  ", "apple day"), ("São Tomé", "sao tome"),
    ("Guinea-Bissau", "guinea bissau"), ("U.S.A.", "usa"), ("Sana'a", "sanaa"), ("Theatre", "theatre"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("text, answer, aliases, expected", [
    ("Paris", "Paris", (), True),
    ("The capital of France is Paris.", "Paris", (), True),
    ("paris, of course", "PARIS", (), True),
    ("Parisian", "Paris", (), False),  # whole words only
    ("126", "26", (), False),
    ("I believe it's Kiev", "Kyiv", ("Kiev",), True),
    ("Kiev", "Kyiv", (), False),
    ("Bogota", "Bogotá", (), True),
    ("The United States of America", "United States", (), True),
    ("USA", "United States", ("USA",), True),
    ("I don't know", "Paris", ("",), False),  # an empty alias matches nothing
])
def test_answer_matches(text, answer, aliases, expected):
    assert answer_matches(text, answer, aliases) is expected


def test_answer_matches_exact():
    assert answer_matches("The Paris!", "paris", exact=True)
    assert not answer_matches("It is Paris", "Paris", exact=True)
    assert answer_matches("Kiev", "Kyiv", ["Kiev"], exact=True)


# --- real fact questions -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def facts():
    return fact_questions()


def test_fact_sizes_and_schema(facts):
    assert list(facts.columns) == QUESTION_COLUMNS
    sizes = facts["family"].value_counts()
    assert set(sizes.index) == set(FACT_FAMILIES)
    assert 200 <= sizes["capital"] <= 252 and 200 <= sizes["country_code"] <= 249
    assert sizes["element_symbol"] == sizes["element_number"] == 118
    assert 150 <= sizes["city_country"] <= 400
    assert not facts["question"].duplicated().any()
    assert facts["answer"].map(lambda a: bool(a.strip()) and a == a.strip()).all()


def test_no_answer_or_alias_in_its_question(facts):
    for question, answer, aliases in zip(facts["question"], facts["answer"], facts["aliases"]):
        assert not answer_matches(question, answer, aliases), question
        assert normalize_answer(answer) not in {normalize_answer(a) for a in aliases}
    for dropped in ["What is the capital of Macao?", "What is the capital of Singapore?",
                    "What is the capital of Luxembourg?", "In which country is the city of Hong Kong?"]:
        assert dropped not in set(facts["question"])


def test_fact_answers_and_aliases(facts):
    by_question = facts.set_index("question")
    assert by_question.loc["What is the capital of France?", "answer"] == "Paris"
    kyiv = by_question.loc["What is the capital of Ukraine?"]
    assert kyiv["answer"] == "Kyiv" and "Kiev" in kyiv["aliases"]
    us_city = by_question.loc["In which country is the city of Los Angeles?"]
    assert us_city["answer"] == "United States"
    assert {"USA", "United States of America"} <= set(us_city["aliases"])
    assert by_question.loc["Which country has the ISO 3166-1 alpha-3 code DEU?", "answer"] == "Germany"
    assert by_question.loc["Which chemical element has the symbol Fe?", "answer"] == "Iron"
    assert by_question.loc["Which chemical element has the atomic number 8?", "answer"] == "Oxygen"
    assert "Aluminium" in by_question.loc["Which chemical element has the atomic number 13?", "aliases"]
    myanmar = by_question.loc["Which country has the ISO 3166-1 alpha-3 code MMR?"]
    assert answer_matches("Burma", myanmar["answer"], myanmar["aliases"])


def test_city_questions_are_unambiguous_non_capitals(facts):
    cities = facts[facts["family"] == "city_country"]
    capitals = set(facts.loc[facts["family"] == "capital", "answer"])
    names = cities["question"].str.removeprefix("In which country is the city of ").str.removesuffix("?")
    assert not set(names) & capitals
    assert cities["answer"].value_counts().max() <= 10
    assert "In which country is the city of Hyderabad?" not in set(cities["question"])  # India and Pakistan


def test_fact_family_selection_and_city_knobs():
    elements = fact_questions("element_number")
    assert set(elements["family"]) == {"element_number"} and len(elements) == 118
    more = fact_questions(["city_country"], min_city_population=500_000, max_cities_per_country=None)
    fewer = fact_questions(["city_country"], min_city_population=2_000_000, max_cities_per_country=None)
    assert len(more) > len(fewer) > 0 and set(fewer["question"]) < set(more["question"])
    with pytest.raises(ParameterError, match="families"):
        fact_questions(["capitals"])
