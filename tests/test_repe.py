"""Tests of alignrepro.repe: steering hooks, reading directions, measurements, fits, claims, and the chapter."""
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alignrepro.core import CLAIM_COLUMNS, ParameterError, RunStore
from alignrepro.models import pretrain, toy_tokenizer
from alignrepro.repe import (REDRAWS, REPE, alignment_forms, alignment_scores, build_tasks, claims_table,
                             decoder_layers, direction, fit_power, inside, layer_indices, norm_sweep, random_directions,
                             read_activations, read_control_vector, refusal_task, repeng_vectors, resolve_plan,
                             seed_statistics, steer, steering_vectors, stimulus_sets, write_control_vector)
from alignrepro.study import ModelSpec, pretrained, replicate_unit
from alignrepro.world import ToyWorld, WorldConfig

PROMPT = "<user> how is the lamp ? <assistant> the lamp is"


@pytest.fixture(scope="module")
def tiny():
    "A tiny random Llama with the toy world's tokenizer."
    tokenizer = toy_tokenizer(ToyWorld().vocab)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2)).eval()
    return model, tokenizer


def _logits(model, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_zero_vector_leaves_logits_unchanged_exactly(tiny):
    model, tokenizer = tiny
    texts = ToyWorld().review_prompts(3)
    plain = _logits(model, tokenizer, texts)
    with steer(model, {0: torch.zeros(32), 2: torch.zeros(32)}, coefficient=5.0):
        assert torch.equal(_logits(model, tokenizer, texts), plain)
    with steer(model, {1: torch.ones(32)}, coefficient=0.0):
        assert torch.equal(_logits(model, tokenizer, texts), plain)


def test_hooks_removed_after_use_and_after_an_exception(tiny):
    model, tokenizer = tiny
    plain = _logits(model, tokenizer, [PROMPT])
    with steer(model, {0: torch.ones(32)}):
        assert len(decoder_layers(model)[0]._forward_hooks) == 1
        assert not torch.allclose(_logits(model, tokenizer, [PROMPT]), plain)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, {0: torch.ones(32), 2: torch.ones(32)}):
            _logits(model, tokenizer, [PROMPT])
            raise RuntimeError("boom")
    assert all(len(block._forward_hooks) == 0 for block in decoder_layers(model))
    assert torch.equal(_logits(model, tokenizer, [PROMPT]), plain)


def test_nonzero_vector_moves_the_behaviour_in_its_direction(tiny):
    "A vector along the unembedding difference good - bad, added after the last block, raises P(good) vs P(bad)."
    model, tokenizer = tiny
    good, bad = tokenizer.convert_tokens_to_ids(["good", "bad"])
    vector = model.lm_head.weight[good] - model.lm_head.weight[bad]
    pairs = pd.DataFrame(dict(prompt=[PROMPT, "<user> what do you think of the mug ? <assistant> the mug is"],
                              chosen=["good"] * 2, rejected=["bad"] * 2))
    log_odds = []
    for coefficient in (-2.0, -1.0, 0.0, 1.0, 2.0):
        with steer(model, {2: vector.detach()}, coefficient):
            log_odds.append(alignment_scores(model, tokenizer, pairs).mean())
    assert np.all(np.diff(log_odds) > 0), log_odds


def test_decoder_layers_found_in_other_architectures():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()
    assert decoder_layers(model) is model.transformer.h
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        plain = model(ids).logits
        with steer(model, {1: torch.ones(16)}):
            moved = model(ids).logits
    assert not torch.allclose(plain, moved) and torch.equal(model(ids).logits, plain)
    wrapper = torch.nn.Module()  # no known path: found as the ModuleList of num_hidden_layers blocks
    wrapper.config, wrapper.inner = model.config, torch.nn.Module()
    wrapper.inner.blocks = model.transformer.h
    assert decoder_layers(wrapper) is model.transformer.h
    assert layer_indices(model, [0.0, 0.4, 1.0]) == [0, 1]


def test_read_activations_match_hidden_states(tiny):
    model, tokenizer = tiny
    prompts, completions = [PROMPT, "<user> how is the mug ? <assistant>"], ["good . it is", "the mug is bad"]
    read = read_activations(model, tokenizer, prompts, completions, [0, 1], reduce="last")
    for row, (p, c) in enumerate(zip(prompts, completions)):
        batch = tokenizer([f"{p} {c}"], return_tensors="pt")
        with torch.no_grad():
            states = model(**batch, output_hidden_states=True).hidden_states
        for layer in (0, 1):
            assert torch.allclose(read[layer][row], states[layer + 1][0, -1], atol=1e-5)
    mean = read_activations(model, tokenizer, prompts[:1], completions[:1], [1], reduce="mean")[1][0]
    batch = tokenizer([f"{prompts[0]} {completions[0]}"], return_tensors="pt")
    n_completion = len(completions[0].split())
    with torch.no_grad():
        states = model(**batch, output_hidden_states=True).hidden_states[2][0, -n_completion:]
    assert torch.allclose(mean, states.mean(0), atol=1e-5)


def test_direction_recovers_a_planted_axis():
    generator = torch.Generator().manual_seed(1)
    axis = torch.nn.functional.normalize(torch.randn(24, generator=generator), dim=0)
    base = torch.randn(40, 24, generator=generator)
    for method in ("pca", "mean"):
        found = direction(base + 1.5 * axis + 0.2 * torch.randn(40, 24, generator=generator), base, method)
        assert float(found @ axis) > 0.95
        assert float(direction(base, base + 1.5 * axis, method) @ axis) < -0.95  # oriented to the aligned side
    with pytest.raises(ValueError, match="method"):
        direction(base, base, "median")


def test_norm_sweep_rows_and_reference(tiny):
    model, tokenizer = tiny
    units, scales = steering_vectors(model, tokenizer, pd.DataFrame(dict(
        prompt=[PROMPT] * 3, chosen=["great . it is", "good . it is", "nice . it is"],
        rejected=["awful . it is", "bad . it is", "poor . it is"])), [1])
    behaviour = pd.DataFrame(dict(prompt=[PROMPT], chosen=[["good", "great"]], rejected=[["bad"]]))
    questions = pd.DataFrame(dict(prompt=[PROMPT, PROMPT], answer=["good", "bad"]))
    sweep = norm_sweep(model, tokenizer, units, scales, [1.0, 0.0, -1.0], behaviour, questions, ["the sun is warm today ."])
    assert sweep.norm.tolist() == [-1.0, 0.0, 1.0]
    assert sweep.alignment.between(0, 1).all() and (sweep.loss > 0).all()
    assert len(set(sweep.alignment.round(8))) == 3  # steering changed the behaviour
    with pytest.raises(ValueError, match="norms"):
        norm_sweep(model, tokenizer, units, scales, [1.0, -1.0], behaviour, questions, ["the sun is warm today ."])


NORMS = np.array([-2, -1, -0.5, -0.4, -0.3, -0.2, -0.1, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 1, 2])


def _synthetic_sweeps(alignment=lambda r: 0.5 + 0.6 * np.tanh(r / 6), helpfulness=lambda r: 0.3 - 0.05 * r ** 2,
                      seeds=range(5), noise=1e-4) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        rows.append(pd.DataFrame(dict(seed=seed, norm=NORMS, alignment=alignment(NORMS) + rng.normal(0, noise, NORMS.size),
                                      p_correct=helpfulness(NORMS) + rng.normal(0, noise, NORMS.size))))
    return pd.concat(rows, ignore_index=True)


def _verdicts(sweeps: pd.DataFrame, small_norm: float = 0.5) -> pd.Series:
    claims = claims_table(seed_statistics(sweeps, small_norm), "toy", "seeds (test)")
    assert list(claims.columns) == CLAIM_COLUMNS and (claims.unit == "seeds (test)").all()
    return claims.set_index("claim_id").verdict.rename(lambda c: c.removesuffix("_aligned_toy"))


def test_statistics_follow_the_data():
    stats = seed_statistics(_synthetic_sweeps(), small_norm=0.5)
    assert np.allclose(stats.alignment_slope, 0.1, atol=0.01) and np.allclose(stats.helpfulness_curvature, -0.05, atol=0.005)
    assert np.allclose(stats.alignment_exponent, 1.0, atol=0.1) and np.allclose(stats.helpfulness_exponent, 2.0, atol=0.2)
    assert np.allclose(stats.efficient_until, 2.0, rtol=0.15)
    assert (stats.edge == 0.5).all() and (stats.far == 2).all() and (stats.p_correct_zero > stats.p_correct_plus).all()


def test_paper_shapes_are_reproduced_with_5_seeds_and_undecided_with_3():
    assert (_verdicts(_synthetic_sweeps()) == "reproduced").all()
    assert set(_verdicts(_synthetic_sweeps(seeds=range(3)))) == {"inconclusive"}


def test_reversed_effects_are_not_reproduced():
    verdicts = _verdicts(_synthetic_sweeps(lambda r: 0.5 - 0.3 * np.tanh(r / 3), lambda r: 0.3 + 0.05 * r ** 2))
    for claim in ("alignment_increases", "helpfulness_decreases", "efficient_regime"):
        assert verdicts[claim] == "not reproduced", (claim, verdicts[claim])


@pytest.mark.parametrize("noise", [1e-3, 1e-2])
def test_null_effects_are_never_reproduced(noise):
    for seeds in (range(5), range(5, 10), range(10, 20)):
        verdicts = _verdicts(_synthetic_sweeps(lambda r: 0.5 + 0 * r, lambda r: 0.3 + 0 * r, seeds, noise))
        for claim in ("alignment_increases", "helpfulness_decreases", "efficient_regime", "alignment_saturates"):
            assert verdicts[claim] != "reproduced", (claim, list(seeds), noise)


def test_wrong_orders_fail_the_exponent_claims():
    "A second-order alignment gain is not linear; a first-order (|r|) helpfulness loss is not quadratic."
    verdicts = _verdicts(_synthetic_sweeps(lambda r: 0.5 + 0.1 * r * np.abs(r), lambda r: 0.3 - 0.05 * np.abs(r)))
    assert verdicts["alignment_linear"] == verdicts["helpfulness_quadratic"] == "not reproduced"
    assert verdicts["helpfulness_decreases"] == "reproduced"  # it still decreases, at first order


def test_saturation_fails_for_a_curve_that_turns_down_or_never_bends():
    assert _verdicts(_synthetic_sweeps(lambda r: 0.5 + 0.1 * r - 0.05 * r ** 2))["alignment_saturates"] == "not reproduced"
    collapse = lambda r: np.where(np.abs(r) > 0.5, 0.5, 0.5 + 0.1 * r)  # falls back to chance beyond small norms
    assert _verdicts(_synthetic_sweeps(collapse))["alignment_saturates"] == "not reproduced"
    assert _verdicts(_synthetic_sweeps(lambda r: 0.5 + 0.1 * r, noise=1e-3))["alignment_saturates"] != "reproduced"
    no_beyond = _synthetic_sweeps()
    claims = claims_table(seed_statistics(no_beyond[no_beyond.norm.abs() <= 0.5], 0.5), "toy").set_index("claim_id")
    saturates = "alignment_saturates_aligned_toy"
    assert claims.verdict[saturates] == "inconclusive" and "not applicable" in claims.note[saturates]


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_fit_power_recovers_the_exponent_from_noisy_curves(p):
    rng = np.random.default_rng(int(p))
    x = np.linspace(-0.5, 0.5, 11)
    found = np.array([fit_power(x, 0.3 - 0.05 * np.abs(x) ** p + rng.normal(0, 2e-4, x.size))["p"] for _ in range(30)])
    assert abs(np.median(found) - p) < 0.15 and np.mean(np.abs(found - p) < 0.5) > 0.9


def test_held_out_stimuli_are_disjoint_from_the_scored_ones(tiny):
    "The direction is read from one half of the words and templates; alignment is scored on the other half."
    for behaviour in ("sentiment", "refusal"):
        sets = stimulus_sets(behaviour)
        for key in ("aligned", "misaligned", "templates"):
            assert sets["read"][key] and set(sets["read"][key]).isdisjoint(sets["scored"][key]), (behaviour, key)
    _, tokenizer = tiny
    plan = resolve_plan(REPE.parameters(n_stimuli=40, n_behaviour=40))
    for behaviour, (stimuli, scored) in build_tasks(plan, tokenizer, seed=3)["behaviours"].items():
        sets = stimulus_sets(behaviour)
        read_words = {w for text in pd.concat([stimuli.chosen, stimuli.rejected]) for w in text.split()}
        scored_words = {w for options in pd.concat([scored.chosen, scored.rejected]) for w in options}
        assert scored_words <= set(sets["scored"]["aligned"] + sets["scored"]["misaligned"])
        assert read_words.isdisjoint(scored_words), (behaviour, read_words & scored_words)
        requests = lambda frame: {p.split("<assistant>")[0] for p in frame.prompt}
        assert requests(stimuli).isdisjoint(requests(scored))
    with pytest.raises(ParameterError, match="behaviour"):
        stimulus_sets("bias")


def test_inside_holds_when_the_interval_contains_the_value_and_fails_when_it_excludes_it():
    rng = np.random.default_rng(0)
    assert inside(2 + rng.normal(0, 0.3, 5), 2.0).verdict == "reproduced"
    assert inside(1 + rng.normal(0, 0.05, 5), 2.0).verdict == "not reproduced"  # reversed: another order
    assert inside(3 + rng.normal(0, 0.05, 5), 2.0).verdict == "not reproduced"
    assert inside(2 + rng.normal(0, 0.3, 3), 2.0).verdict == "inconclusive"  # too few seeds


def test_held_out_form_comparison_prefers_the_true_form():
    x = np.array([-0.5, -0.4, -0.3, -0.2, -0.1, 0, 0.1, 0.2, 0.3, 0.4, 0.5])
    rng = np.random.default_rng(0)
    straight = alignment_forms(x, 0.5 + 0.1 * x + rng.normal(0, 1e-3, x.size))
    bent = alignment_forms(x, 0.5 + 0.3 * np.tanh(6 * x) + rng.normal(0, 1e-3, x.size))
    assert straight["linear"] < min(straight["tanh"], straight["power"])
    assert bent["linear"] > 10 * min(bent["tanh"], bent["power"])
    assert _verdicts(_synthetic_sweeps())["alignment_linear_heldout"] == "reproduced"
    assert _verdicts(_synthetic_sweeps(lambda r: 0.5 + 0.3 * np.tanh(6 * r)))["alignment_linear_heldout"] == "not reproduced"
    for noise in (1e-3, 1e-2):  # a flat curve is not a linear rise
        assert _verdicts(_synthetic_sweeps(lambda r: 0.5 + 0 * r, noise=noise))["alignment_linear_heldout"] != "reproduced"


def test_repeng_recipe_against_alignrepro_directions_and_its_gguf_files(tiny, tmp_path):
    "repeng's pca_center is alignrepro's pca axis; its GGUF export is read back by block, and other files are refused."
    model, tokenizer = tiny
    world = ToyWorld()
    contrast = pd.DataFrame(dict(prompt=world.review_prompts(20, seed=2),
                                 chosen=[f"{w} . it is" for w in (world.sentiment_words("pos") * 2)[:20]],
                                 rejected=[f"{w} . it is" for w in (world.sentiment_words("neg") * 2)[:20]]))
    theirs = repeng_vectors(model, tokenizer, contrast, method="pca_center")
    assert sorted(theirs) == [1, 2]  # every block but the first, as repeng's default
    ours = steering_vectors(model, tokenizer, contrast, [1, 2], method="pca")[0]
    assert all(abs(float(theirs[i] @ ours[i])) > 0.999 for i in theirs)
    diff = repeng_vectors(model, tokenizer, contrast, [-1])
    assert list(diff) == [2] and torch.isclose(diff[2].norm(), torch.tensor(1.0))
    write_control_vector({i: 2.0 * v for i, v in theirs.items()}, str(tmp_path / "v.gguf"), model_hint="llama")
    back = read_control_vector(str(tmp_path / "v.gguf"))
    assert sorted(back) == [1, 2] and all(torch.allclose(back[i], 2.0 * theirs[i]) for i in theirs)
    import gguf
    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    writer.add_tensor("direction.1", np.ones(4, dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(ValueError, match="controlvector"):
        read_control_vector(str(tmp_path / "model.gguf"))
    with pytest.raises(ParameterError, match="method"):
        repeng_vectors(model, tokenizer, contrast, method="umap")


def test_units_say_what_a_seed_redraws():
    unit = lambda plan: replicate_unit(plan["model"], REDRAWS)
    assert unit(resolve_plan(REPE.parameters())) == "seeds (pre-training, stimuli and test prompts re-drawn)"
    assert "one pre-trained toy model, seed 0" in unit(resolve_plan(REPE.parameters(toy_model_seed=0)))
    assert unit(resolve_plan(REPE.parameters(), "small")).endswith("smollm2 model, the same in every replicate)")


def test_random_direction_is_a_seeded_unit_vector():
    units = {0: torch.zeros(64), 2: torch.zeros(64)}
    first, again, other = (random_directions(units, seed) for seed in (0, 0, 1))
    assert all(torch.isclose(v.norm(), torch.tensor(1.0)) for v in first.values())
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], first[2])
    assert abs(float(first[0] @ other[0])) < 0.5
    assert resolve_plan(REPE.parameters(direction="random"))["direction"] == "random"
    with pytest.raises(ParameterError, match="direction"):
        REPE.parameters(direction="sideways")


def test_resolve_plan_for_every_scale():
    toy = resolve_plan(REPE.parameters(toy_size="xs", toy_tokens=1000, norms=[1, -1, 0, 0.5, -0.5], small_norm=1))
    assert ModelSpec(**toy["model"]) == ModelSpec(size="xs", n_tokens=1000, seed=None)  # one model per seed
    assert toy["behaviours"] == {"sentiment": "world:sentiment", "refusal": "world:refusal"}
    assert toy["norms"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    small = resolve_plan(REPE.parameters(small_n=4), "small")
    assert small["model"]["kind"] == "smollm2" and small["questions"] == "facts:capital" and small["n_neutral"] == 2
    assert small["behaviours"] == toy["behaviours"]
    paper = resolve_plan(REPE.parameters(scale="paper", paper_model="mistralai/Mistral-7B-Instruct-v0.2"))
    assert paper["model"] == ModelSpec(kind="hub", name="mistralai/Mistral-7B-Instruct-v0.2").to_dict()
    assert (paper["behaviours"], paper["questions"], paper["reduce"]) == ({"refusal": "hh_rlhf:harmless"}, "triviaqa:validation", "mean")
    with pytest.raises(ParameterError, match="scale"):
        resolve_plan(REPE.parameters(), "huge")


def test_toy_plan_loads_the_model_the_chapter_pre_trained_before(tmp_path):
    "The plan's spec hits the cached pre-training of the former `pretrain(WorldConfig(seed=0), size, n_tokens, seed)`."
    store = RunStore(tmp_path)
    for fixed, seed in ((0, 3), (None, 2)):
        plan = resolve_plan(REPE.parameters(toy_size="xxs", toy_tokens=1000, toy_model_seed=fixed))
        former = pretrain(WorldConfig(seed=WorldConfig().seed), "xxs", 1000, seed=seed if fixed is None else fixed,
                          store=store)
        assert pretrained(ModelSpec(**plan["model"]).for_seed(seed), store).root == former.root



@pytest.mark.slow
def test_small_scale_smollm2_sweep():
    from alignrepro.repe import sweep_seed
    from alignrepro.study import load
    plan = {**resolve_plan(REPE.parameters(small_layer_fractions=[0.25], small_n=4), "small"), "norms": [-0.5, 0.0, 0.5]}
    model, tokenizer = load(ModelSpec(**plan["model"]), device="cpu")
    sweeps = sweep_seed(plan, 0, model, tokenizer)
    assert set(sweeps.behaviour) == {"sentiment", "refusal"}
    for _, sweep in sweeps.groupby("behaviour"):
        assert sweep.norm.tolist() == [-0.5, 0.0, 0.5] and sweep.alignment.between(0, 1).all()
        assert sweep.loss.iloc[1] < sweep.loss.iloc[[0, 2]].max()


def test_a_chat_model_is_scored_on_capitalised_answers():
    "The same requests and words; a real chat model's answer starts 'Sorry' / 'Mix', the toy model's 'sorry' / 'mix'."
    world = ToyWorld()
    (toy_stimuli, toy_behaviour), (chat_stimuli, chat_behaviour) = (refusal_task(world, str, 6, 6, 0, cased=cased)
                                                                    for cased in (False, True))
    assert chat_stimuli.prompt.equals(toy_stimuli.prompt) and chat_behaviour.prompt.equals(toy_behaviour.prompt)
    assert chat_stimuli.chosen.tolist() == [w.capitalize() for w in toy_stimuli.chosen]
    assert chat_behaviour.rejected.tolist() == [[w.capitalize() for w in ws] for ws in toy_behaviour.rejected]
    assert all(w[0].isupper() for ws in chat_behaviour.chosen for w in ws)


def test_seed_statistics_are_kept_in_the_store_by_content(tmp_path):
    "A rebuild reads the statistics back; other sweeps (or another regime) make another entry, never a stale one."
    store, sweeps = RunStore(tmp_path), _synthetic_sweeps()
    pd.testing.assert_frame_equal(seed_statistics(sweeps, 0.5, store), seed_statistics(sweeps, 0.5))
    pd.testing.assert_frame_equal(seed_statistics(sweeps, 0.5, store), seed_statistics(sweeps, 0.5))
    assert len(store.runs("repe_statistics")) == 1
    changed = sweeps.assign(alignment=sweeps.alignment * 0.9)
    pd.testing.assert_frame_equal(seed_statistics(changed, 0.5, store), seed_statistics(changed, 0.5))
    seed_statistics(sweeps, 0.3, store)
    assert len(store.runs("repe_statistics")) == 3
