"""Tests of alignrepro.elasticity: the curve measures on hand-made curves, the verdicts on made-up runs whose answer
is known, parameters and plan at every scale, the toy specs' pre-training keys, and the chapter through papermill."""

import numpy as np
import pandas as pd
import pytest

from alignrepro.core import CLAIM_COLUMNS, VERDICTS, ParameterError
from alignrepro.elasticity import (ELASTICITY, crossing_point, curve_summary, elasticity_claims, fit_knee,
                                   initial_slope, logit, resistance_gaps, resolve_plan)


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


def test_claims_follow_the_runs():
    curves = []
    for seed in range(3):
        curves += [_curve(seed, n, fall=0.2 + 0.0001 * seed) for n in (10, 100, 1000)]
        curves += [_curve(seed, 100, "size", f"s{p}", params=p, fall=0.15 + 0.05 * i) for i, p in enumerate([10, 100, 1000])]
        curves += [_curve(seed, 100, "tokens", f"t{t}", tokens=t, fall=0.2 / (i + 1)) for i, t in enumerate([1e3, 1e4, 1e5])]
    summary = curve_summary(pd.concat(curves), kl_threshold=0.1)
    runs = pd.DataFrame([dict(seed=s, pair=p, direction=d, mean_loss=1.0 + (0.1 if d == "forward" else 0),
                              excess=0.1 if d == "forward" else 0.2, start_loss=1, loss_drop=0.1, kl_to_target=0.1)
                         for s in range(3) for p in ("a", "b", "c") for d in ("forward", "inverse")])
    table = elasticity_claims(summary, resistance_gaps(runs))
    assert list(table.columns) == CLAIM_COLUMNS and set(table.verdict) <= set(VERDICTS)
    claims = table.set_index("claim_id")
    assert claims.loc["resistance", "verdict"] == "reproduced"
    assert claims.loc["resistance_controlled", "verdict"] == "not reproduced"  # excess gap is negative by construction
    assert claims.loc["size_faster", "verdict"] == "reproduced"  # steeper falls for bigger models: earlier crossing
    assert claims.loc["data_faster", "verdict"] == "not reproduced"  # shallower falls with more tokens: later crossing
    assert claims.loc["theory_k", "verdict"] == "reproduced"
    assert claims.loc["knee_tracks_share", "verdict"] == "inconclusive"  # no control runs given
    assert claims.loc["size_faster_matched", "verdict"] == "reproduced"  # same start, so matched agrees with raw


def test_matched_crossing_discounts_a_higher_post_alignment_score():
    "Bigger models start higher and fall faster: raw crossings tie, counted from a matched score the bigger cross first."
    curves = []
    for seed in range(3):
        for i, params in enumerate([10, 100, 1000]):  # log-odds start 2, 4, 6 falling 0.1, 0.2, 0.3 per negative
            curves.append(_curve(seed, 100, "size", f"s{params}", params=params, fall=0.1 * (i + 1),
                                 start=1 / (1 + np.exp(-2.0 * (i + 1)))))
    summary = curve_summary(pd.concat(curves), kl_threshold=0.1)
    assert np.allclose(summary.crossing, 20, atol=0.01)  # 2/0.1 = 4/0.2 = 6/0.3
    assert np.allclose(summary.groupby("model", sort=False).matched_start.mean(), [0, 2 / 0.2, 4 / 0.3], atol=0.1)
    claims = elasticity_claims(summary, pd.DataFrame()).set_index("claim_id")
    assert claims.loc["size_faster_matched", "verdict"] == "reproduced"


def test_resolve_plan_at_every_scale():
    toy = resolve_plan(_params())
    assert len(toy["models"]["size"]) >= 4 and toy["models"]["never"]["fraction"] == 0.0 and toy["lr"] == 5e-4
    assert [s["fraction"] for s in toy["models"]["tokens"]] == [0.25, 0.5, 1.0]
    small = resolve_plan(_params(scale="small"))
    assert small["peft"] == "lora" and small["models"]["main"]["kind"] == "smollm2" and small["models"]["never"] is None
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
    plan = resolve_plan(_params(sizes=["xxs", "xs"], main_size="xxs", pretrain_tokens=1000, token_fractions=[0.5, 1.0]))
    assert pretrained(ModelSpec(**plan["models"]["control_share"]).for_seed(4), store).root == before.root


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
