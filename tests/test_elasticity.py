"""Tests of alignrepro.elasticity: the curve measures on hand-made curves, the verdicts on made-up runs whose answer
is known, parameters and plan at every scale, the toy specs' pre-training keys, and the chapter through papermill."""

import numpy as np
import pandas as pd
import pytest

from alignrepro.core import CLAIM_COLUMNS, VERDICTS, ParameterError
from alignrepro.elasticity import (ELASTICITY, PRETRAINED_PAIR, crossing_point, curve_summary, elasticity_claims, fit_knee,
                                   initial_slope, logit, preference_pairs, resistance_gaps, resolve_plan, reversed_data)


def _params(**changes):
    return ELASTICITY.parameters(**{"out_dir": "_out/x", **changes})



def test_crossing_point_interpolates_and_reports_never():
    x = [0, 10, 20, 30]
    assert abs(crossing_point(x, [4.0, 2.0, 0.0, -2.0], 1.0) - 15) < 1e-9
    assert np.isnan(crossing_point(x, [4.0, 3.0, 2.5, 2.0], 1.0))
    assert crossing_point(x, [0.5, 0.4, 0.3, 0.2], 1.0) == 0


def test_fit_knee_finds_the_break_and_the_slowdown():
    x = np.arange(0, 120, 8.0)
    for knee_at, ratio in [(40, 10), (72, 4)]:
        y = np.where(x < knee_at, -0.2 * x, -0.2 * knee_at - 0.2 / ratio * (x - knee_at))
        fit = fit_knee(x, y)
        assert abs(fit["knee"] - knee_at) < 2 and abs(fit["slowdown"] - ratio) < 0.2
    assert fit_knee(x, 3 - 0.1 * x)["slowdown"] < 1.01
    assert abs(initial_slope(x, 3 - 0.1 * x) + 0.1) < 1e-9
    with pytest.raises(ValueError):
        fit_knee([0, 1, 2], [0, 1, 2])


def _curve(seed, n_pos, experiment="main", model="m", params=1000, tokens=1e4, fall=0.2, base=0.5, floor=0.02,
           start=0.99):
    x = np.array([0, 8, 16, 24, 32, 48, 64])
    share = 1 / (1 + np.exp(-(logit(start) - fall * np.minimum(x, 32) - 0.005 * np.maximum(x - 32, 0))))
    return pd.DataFrame(dict(experiment=experiment, model=model, seed=seed, n_pos=n_pos, n_neg=x, share=share,
                             base_share=base, kl=0.3 * np.exp(-x / (20 + n_pos / 10)) + floor,
                             bpt_pre=5 + 0.001 * x, bpt_align=2 + 0.001 * x * (tokens / (n_pos * 10)),
                             params=params, pretrain_tokens=tokens, align_tokens=n_pos * 10))


def test_curve_summary_reads_crossing_knee_and_theory_ratio():
    summary = curve_summary(_curve(0, 100), kl_threshold=0.1)
    row = summary.iloc[0]
    expected_crossing = (logit(0.99) - logit(0.5)) / 0.2
    assert abs(row.crossing - expected_crossing) < 1.0 and row.slowdown > 5 and abs(row.knee - 32) < 3
    assert abs(row.k - 10) < 1e-9 and abs(row.slope_ratio - row.k) < 1e-6  # constructed: ratio == k
    assert 0 < row.kl_crossing < 64


def _noisy_curve(seed, n_pos, experiment="main", fall=0.2, **kwargs):
    "`_curve` with a seeded, seed-dependent jitter of the fall, so that seeds differ (a zero-width interval decides nothing)."
    jitter = 1 + 0.03 * np.random.default_rng([seed, n_pos, len(experiment)]).standard_normal()
    return _curve(seed, n_pos, experiment, fall=fall * jitter, **kwargs)


def _resistance_runs(seeds, loss_gap=0.1, kl_gap=-0.05, drop_gap=0.0):
    "Made-up resistance rows: forward minus inverse mean loss `loss_gap`, KL `kl_gap`; inverse minus forward loss drop `drop_gap`."
    rng = np.random.default_rng(0)
    noisy = lambda gap, scale, d: (gap + scale * rng.standard_normal()) if d == "forward" else 0
    return pd.DataFrame([dict(seed=s, pair=p, direction=d, mean_loss=1.0 + noisy(loss_gap, 0.02, d), excess=0.1, start_loss=1,
                              loss_drop=0.1 - noisy(drop_gap, 0.01, d), kl_to_target=0.1 + noisy(kl_gap, 0.01, d))
                         for s in seeds for p in ("a", "b", "c", PRETRAINED_PAIR) for d in ("forward", "inverse")])


def test_claims_follow_the_runs():
    curves = []
    for seed in range(5):
        curves += [_noisy_curve(seed, n) for n in (10, 100, 1000)]
        curves += [_noisy_curve(seed, 100, "size", model=f"s{p}", params=p, fall=0.15 + 0.05 * i) for i, p in enumerate([10, 100, 1000])]
        curves += [_noisy_curve(seed, 100, "tokens", model=f"t{t}", tokens=t, fall=0.2 / (i + 1)) for i, t in enumerate([1e3, 1e4, 1e5])]
        curves += [_curve(seed, 10, "k_sweep", model=f"k{t}", tokens=t) for t in [1e3, 1e4, 1e5]]  # ratio == k exactly
    summary = curve_summary(pd.concat(curves), kl_threshold=0.1)
    table = elasticity_claims(summary, resistance_gaps(_resistance_runs(range(5))))
    assert list(table.columns) == CLAIM_COLUMNS and set(table.verdict) <= set(VERDICTS) and (table.n <= 5).all()
    claims = table.set_index("claim_id")
    assert claims.loc["resistance", "verdict"] == "reproduced"
    assert claims.loc["resistance_controlled", "verdict"] == "not reproduced"  # the KL gap is negative by construction
    assert claims.loc["resistance_pretrained", "verdict"] == "reproduced" and claims.loc["resistance_drop", "verdict"] != "reproduced"
    assert claims.loc["size_faster", "verdict"] == "reproduced"  # steeper falls for bigger models: earlier crossing
    assert claims.loc["data_faster", "verdict"] == "not reproduced"  # shallower falls with more tokens: later crossing
    assert claims.loc["theory_k", "verdict"] == "inconclusive" and claims.loc["theory_k", "n"] == 5  # ratio == k exactly,
    assert "zero-width" in claims.loc["theory_k", "note"] and "2 decades" in claims.loc["theory_k", "note"]  # slope 1 in every seed
    assert claims.loc["rebound_dpo", "verdict"] == "inconclusive" and claims.loc["rebound_dpo", "n"] == 0  # no DPO runs given
    assert claims.loc["knee_tracks_share", "verdict"] == "inconclusive"  # no control runs given
    assert "not applicable" in claims.loc["knee_tracks_share", "note"] and claims.loc["knee_tracks_share", "n"] == 0
    assert claims.loc["rebound", "verdict"] == "inconclusive"  # its controls are missing: a knee alone decides nothing
    assert claims.loc["size_faster_matched", "verdict"] == "reproduced"  # same start, so matched agrees with raw
    three = elasticity_claims(summary[summary.seed < 3], resistance_gaps(_resistance_runs(range(3))))
    assert set(three.verdict) == {"inconclusive"}  # 3 seeds decide nothing


def _made_up_summary(effect: float, n_seeds: int = 5) -> pd.DataFrame:
    """`curve_summary`-like rows in which every claim's effect is `effect` (1: as the paper says, 0: none, -1: reversed)
    plus seeded noise, so each rule can be fed a true, a null and a reversed effect."""
    rng, rows = np.random.default_rng(0), []
    noise = lambda scale=0.1: scale * rng.standard_normal()
    for seed in range(n_seeds):
        common = dict(seed=seed, n_neg_max=1000.0, matched_start=0.0, pos_share=0.7, post_score=0.99, initial_slope=-0.1)
        slow = {}
        for n_pos in (10, 100, 1000):
            slow[n_pos] = 10 ** (1 + effect + noise())
            rows.append(dict(common, experiment="main", model="m", n_pos=n_pos, params=1e4, pretrain_tokens=1e5,
                             base_score=0.5, end_score=float(1 / (1 + np.exp(effect * 2 + noise()))), knee_logit=noise(),
                             slowdown=slow[n_pos], kl_crossing=300 - effect * 20 * np.log2(n_pos) + noise(5),
                             crossing=3 * n_pos * 10 ** (-0.65 - 0.65 * (1 - effect) + noise(0.05)), k=1.0, slope_ratio=1.0))
        for experiment in ("reversed", "dpo", "safety"):  # shaped like the main runs
            rows.append(dict(common, experiment=experiment, model="m", n_pos=100, params=1e4, pretrain_tokens=1e5,
                             base_score=0.5, end_score=float(1 / (1 + np.exp(effect * 2 + noise()))), knee_logit=noise(),
                             slowdown=10 ** (effect + noise()), kl_crossing=300.0, crossing=300.0, k=1.0, slope_ratio=1.0))
        for tokens in (1e3, 1e4, 1e5):  # k from 10 to 1000
            rows.append(dict(common, experiment="k_sweep", model=f"k{tokens}", n_pos=10, params=1e4, pretrain_tokens=tokens,
                             base_score=0.5, end_score=0.1, knee_logit=0.0, slowdown=10.0, kl_crossing=300.0, crossing=300.0,
                             k=tokens / 100, slope_ratio=(tokens / 100) ** effect * np.exp(noise())))
        rows.append(dict(common, experiment="control_share", model="c", n_pos=100, params=1e4, pretrain_tokens=1e5,
                         base_score=0.3, end_score=0.1, knee_logit=effect * float(logit(0.3)) + noise(), slowdown=10.0,
                         kl_crossing=300.0, crossing=300.0, k=1.0, slope_ratio=1.0))
        rows.append(dict(common, experiment="never", model="n", n_pos=1000, params=1e4, pretrain_tokens=0.0, base_score=0.5,
                         end_score=0.1, knee_logit=0.0, slowdown=slow[1000] / 10 ** (effect + noise()), kl_crossing=300.0,
                         crossing=300.0, k=1.0, slope_ratio=1.0))
        for experiment, column in (("size", "params"), ("tokens", "pretrain_tokens")):
            for i, value in enumerate([1e3, 1e4, 1e5]):
                rows.append(dict(common, experiment=experiment, model=f"{experiment}{i}", n_pos=100,
                                 **{"params": 1e4, "pretrain_tokens": 1e5, column: value}, base_score=0.5, end_score=0.1,
                                 knee_logit=0.0, slowdown=10.0, kl_crossing=300.0,
                                 crossing=300 - effect * 20 * np.log2(value / 1e3) + noise(5), k=1.0, slope_ratio=1.0))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("effect", [1.0, 0.0, -1.0])
def test_every_rule_can_fail(effect):
    "A true effect reproduces every claim; a null effect reproduces none; a reversed effect is 'not reproduced'."
    runs = _resistance_runs(range(5), loss_gap=0.1 * effect, kl_gap=0.05 * effect, drop_gap=0.05 * effect)
    summary = _made_up_summary(effect)
    cell = summary[summary.experiment.isin(["main", "control_share", "never"])]
    strength = pd.concat([cell.assign(lr=1e-4, epochs=1),  # the gentle cell carries the effect; the strong one does not
                          cell.assign(lr=5e-4, epochs=3, knee_logit=0.0)])
    claims = elasticity_claims(summary, resistance_gaps(runs), unit="seeds (pre-training re-drawn)", strength=strength)
    assert "gentlest cell" in claims.set_index("claim_id").loc["knee_tracks_share", "note"]
    verdicts = claims.set_index("claim_id").verdict
    assert (claims.n == 5).all() and (claims.unit == "seeds (pre-training re-drawn)").all(), claims[["claim_id", "n"]]
    if effect > 0:
        assert set(verdicts) == {"reproduced"}, verdicts.to_dict()
    elif effect == 0:
        assert "reproduced" not in set(verdicts), verdicts.to_dict()
    else:
        assert set(verdicts) == {"not reproduced"}, verdicts.to_dict()


def test_matched_crossing_discounts_a_higher_post_alignment_score():
    "Bigger models start higher and fall faster: raw crossings tie, counted from a matched score the bigger cross first."
    curves = []
    for seed in range(5):
        for i, params in enumerate([10, 100, 1000]):  # log-odds start 2, 4, 6 falling 0.1, 0.2, 0.3 per negative
            curves.append(_curve(seed, 100, "size", f"s{params}", params=params, fall=0.1 * (i + 1) * (1 + 0.01 * seed),
                                 start=1 / (1 + np.exp(-2.0 * (i + 1)))))
    summary = curve_summary(pd.concat(curves), kl_threshold=0.1)
    assert np.allclose(summary[summary.seed == 0].crossing, 20, atol=0.01)  # 2/0.1 = 4/0.2 = 6/0.3
    assert np.allclose(summary[summary.seed == 0].matched_start, [0, 2 / 0.2, 4 / 0.3], atol=0.1)
    claims = elasticity_claims(summary, pd.DataFrame()).set_index("claim_id")
    assert claims.loc["size_faster_matched", "verdict"] == "reproduced"
    assert claims.loc["resistance", "verdict"] == "inconclusive" and "not applicable" in claims.loc["resistance", "note"]


def test_reversed_data_and_preference_pairs():
    from datasets import Dataset
    from alignrepro.elasticity import SentimentData
    pos = Dataset.from_dict(dict(prompt=["how is the lamp ?"], completion=["the lamp is great . <eos>"]))
    neg = Dataset.from_dict(dict(prompt=["how is the desk ?"], completion=["the desk is awful . i hate it . <eos>"]))
    pairs = preference_pairs(pos, neg)
    assert pairs[0] == dict(prompt="how is the lamp ?", chosen="the lamp is great .", rejected="the lamp is awful . i hate it .")
    data = SentimentData(lambda n, s: pos, lambda n, s: neg, ["the lamp is"], ["great"], ["awful"], [], [], pos,
                         lambda texts: np.ones(len(texts)))
    flipped = reversed_data(data)
    assert flipped.positive(1, 0) is neg and flipped.pos_words == ["awful"] and flipped.text_scorer(["x"])[0] == -1


def test_resolve_plan_at_every_scale():
    toy = resolve_plan(_params())
    assert len(toy["models"]["size"]) >= 3 and toy["models"]["never"]["fraction"] == 0.0 and toy["lr"] == 5e-4
    assert [s["fraction"] for s in toy["models"]["tokens"]] == [0.25, 0.5, 1.0]
    k = [s["fraction"] * s["n_tokens"] for s in toy["models"]["k_sweep"]]
    assert k[-1] / k[0] >= 10 ** 1.5 and toy["k_n_pos"] == 2  # the k sweep spans more than 1.5 decades
    small = resolve_plan(_params(scale="small"))
    assert small["peft"] == "lora" and small["models"]["main"]["kind"] == "smollm2" and small["models"]["never"] is None
    assert small["models"]["k_sweep"] == []
    paper = resolve_plan(_params(scale="paper"))
    assert paper["lr"] == 1e-5 and paper["preset"] == "ji_elasticity" and paper["n_pos"] == [1000, 2000, 5000, 10000]
    assert paper["models"]["main"]["name"] == "meta-llama/Llama-2-7b-hf" and len(paper["models"]["tokens"]) == 3
    assert resolve_plan(_params(scale="paper", model_name="google/gemma-2b"))["models"]["main"]["name"] == "google/gemma-2b"


def test_toy_specs_load_the_models_pretrained_before_the_study_stage(tmp_path, monkeypatch):
    "A plan's toy spec keys the very artefact the chapter's old `pretrain(...)` call built: no retraining, same numbers."
    import alignrepro.models as models
    from alignrepro.core import RunStore
    from alignrepro.study import pretrained, ModelSpec
    from alignrepro.world import WorldConfig
    store = RunStore(tmp_path)
    rest = np.array(WorldConfig().behaviour_mix[1:])
    world = WorldConfig(sentiment_pos_share=0.3, behaviour_mix=(0.6, *(rest / rest.sum() * 0.4).tolist()))
    before = models.pretrain(world, "xxs", 1000, seed=0, checkpoints=(0.0, 0.5, 1.0), store=store, batch_size=16, lr=3e-3)
    monkeypatch.setattr(models, "train_loop", lambda *args, **kwargs: pytest.fail("retrained a cached model"))
    plan = resolve_plan(_params(sizes=["xxs", "xs"], main_size="xxs", pretrain_tokens=1000, token_fractions=[0.5, 1.0],
                                k_fractions=[0.5, 1.0]))
    assert plan["models"]["control_share"]["seed"] is None  # pre-trained per seed by default: seed 0 is the model above
    assert pretrained(ModelSpec(**plan["models"]["control_share"]).for_seed(0), store).root == before.root


@pytest.mark.parametrize("changes, name", [(dict(main_size="l", sizes=["xs", "s"]), "main_size"),
                                           (dict(control_pos_share=0.7), "control_pos_share"),
                                           (dict(n_neg=[5, 10, 20, 30, 40]), "n_neg"),
                                           (dict(scale="huge"), "scale")])
def test_bad_parameters_name_themselves(changes, name):
    with pytest.raises(ParameterError, match=name):
        _params(**changes)



@pytest.mark.slow
def test_small_scale_path_runs():
    "SmolLM2-135M-Instruct with LoRA: one short rebound run through the same code path, scored by the same probe."
    from alignrepro.elasticity import rebound_run, sentiment_data
    from alignrepro.study import ModelSpec, load
    plan = resolve_plan(_params(scale="small", n_pos=[4, 8], n_neg=[0, 2, 4, 6, 8], n_eval=4, batch_size=2, pos_epochs=1))
    model, tokenizer = load(ModelSpec(**plan["models"]["main"]))
    data = sentiment_data(plan, plan["models"]["main"])
    curve = rebound_run(model, tokenizer, data, 4, plan, seed=0)
    assert model.num_parameters() > 1e8 and list(curve.n_neg) == plan["n_neg"]
    assert curve.share.between(0, 1).all() and curve.kl.iloc[-1] > 0 and curve.share.nunique() > 1


APPLY_AT_SMALL = ["resistance", "resistance_drop", "resistance_controlled", "resistance_pretrained", "rebound",
                  "rebound_crossing", "rebound_reversed", "rebound_dpo", "rebound_more_positive"]


@pytest.mark.slow
def test_small_scale_is_scored(run_chapter):
    """`papermill nbs/03_elasticity.ipynb out.ipynb -p scale small` (SmolLM2-135M-Instruct, LoRA, 5 seeds; about 30 minutes
    on 2 cores): every claim that applies without models pre-trained from scratch is computed over the 5 seeds, the rest say why not."""
    _, out_dir = run_chapter("03_elasticity", scale="small")
    claims = pd.read_csv(out_dir / "claims.csv").set_index("claim_id")
    assert (claims.scale == "small").all() and list(claims.reset_index().columns) == CLAIM_COLUMNS
    assert (claims.loc[APPLY_AT_SMALL, "n"] == 5).all() and claims.loc[APPLY_AT_SMALL, "estimate"].notna().all()
    assert "toy scale only" in claims.loc["knee_tracks_share", "note"] and claims.loc["theory_k", "verdict"] == "inconclusive"
