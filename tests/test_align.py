"""Tests for alignrepro.align: SFT and DPO over trl, LoRA / QLoRA adapters, presets."""
import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from alignrepro.align import (PRESETS, LoraSpec, Preset, dpo, dpo_trainer, preset, quantize_4bit, sft,
                              sft_config, sft_trainer)
from alignrepro.core import ParameterError
from alignrepro.evaluate import completion_logprobs
from alignrepro.models import toy_model, toy_tokenizer

PROMPT = "<user> write a review of the lamp . <assistant> the lamp is"


def logprob(model, tokenizer, prompt, completion):
    return completion_logprobs(model, tokenizer, [prompt], [completion])[0]


def margin(model, tokenizer):
    return logprob(model, tokenizer, PROMPT, " great .") - logprob(model, tokenizer, PROMPT, " bad .")


@pytest.fixture(scope="module")
def tiny():
    "The ladder's smallest rung with two layers ('xs': hidden 64) over a dozen words."
    tokenizer = toy_tokenizer("write a review of the lamp chair is great bad fine .".split())
    return toy_model("xs", len(tokenizer)).eval(), tokenizer


@pytest.fixture(scope="module")
def sft_data():
    return Dataset.from_list([{"prompt": PROMPT, "completion": " great ."}] * 8)


@pytest.fixture(scope="module")
def dpo_data():
    return Dataset.from_list([{"prompt": PROMPT, "chosen": " great .", "rejected": " bad ."}] * 8)


def quick(name, **overrides):
    return preset(name, **{"max_steps": 6, "disable_tqdm": True, **overrides})


def state(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_sft_raises_the_target_completion_and_leaves_the_input_model_alone(tiny, sft_data):
    model, tokenizer = tiny
    before_weights = state(model)
    before = logprob(model, tokenizer, PROMPT, " great .")
    tuned, log = sft(model, tokenizer, sft_data, quick("cpu_sft"))
    after = logprob(tuned, tokenizer, PROMPT, " great .")
    assert after > before + 1
    assert logprob(copy.deepcopy(tuned), tokenizer, PROMPT, " great .") == after  # trl's forward patch is removed
    assert list(log.step) == list(range(1, 7))
    assert {"step", "loss", "learning_rate", "grad_norm"} <= set(log.columns)
    assert log.loss.iloc[-1] < log.loss.iloc[0]
    assert all(torch.equal(before_weights[k], v) for k, v in model.state_dict().items())


def test_sft_loss_covers_completion_tokens_only(tiny, sft_data):
    model, tokenizer = tiny
    trainer = sft_trainer(model, tokenizer, sft_data, quick("cpu_sft"))
    labels = trainer.train_dataset[0]["labels"]
    n_prompt = len(tokenizer(PROMPT)["input_ids"])
    assert set(labels[:n_prompt]) == {-100}
    assert labels[n_prompt:] == tokenizer(" great . <eos>", add_special_tokens=False)["input_ids"]
    # the first logged loss is the untrained model's mean NLL over the completion tokens (eos included)
    _, log = sft(model, tokenizer, sft_data, quick("cpu_sft", max_steps=1))
    completion_nll = -completion_logprobs(model, tokenizer, [PROMPT], [" great . <eos>"], reduction="mean")[0]
    assert log.loss.iloc[0] == pytest.approx(completion_nll, abs=1e-4)


def test_sft_on_text_data_trains_every_token(tiny):
    model, tokenizer = tiny
    text = Dataset.from_list([{"text": PROMPT + " great ."}] * 8)
    trainer = sft_trainer(model, tokenizer, text, quick("cpu_sft"))
    assert -100 not in trainer.train_dataset[0]["labels"]


def test_prompt_and_completion_are_not_merged_at_the_boundary(tiny):
    model, tokenizer = tiny
    glued = Dataset.from_list([{"prompt": PROMPT, "completion": "great ."}] * 8)  # "is" + "great" -> "isgreat"
    labels = sft_trainer(model, tokenizer, glued, quick("cpu_sft")).train_dataset[0]["labels"]
    assert tokenizer.unk_token_id not in labels
    assert [t for t in labels if t != -100] == tokenizer(" great . <eos>", add_special_tokens=False)["input_ids"]


def test_same_inputs_give_identical_losses(tiny, sft_data, dpo_data):
    model, tokenizer = tiny
    dpo_losses = [dpo(model, tokenizer, dpo_data, quick("cpu_dpo", max_steps=2))[1].loss.tolist() for _ in range(2)]
    assert dpo_losses[0] == dpo_losses[1]
    first = sft(model, tokenizer, sft_data, quick("cpu_sft", max_steps=3), peft="lora")[1]
    second = sft(model, tokenizer, sft_data, quick("cpu_sft", max_steps=3), peft="lora")[1]
    assert first.loss.tolist() == second.loss.tolist()
    other_seed = sft(model, tokenizer, sft_data, quick("cpu_sft", max_steps=3, seed=1), peft="lora")[1]
    assert other_seed.loss.tolist() != first.loss.tolist()


@pytest.mark.parametrize("peft", ["lora", "qlora"])
def test_adapters_move_the_behaviour_and_only_adapters_change(tiny, sft_data, peft):
    model, tokenizer = tiny
    before = logprob(model, tokenizer, PROMPT, " great .")
    start = quantize_4bit(model) if peft == "qlora" else model
    with torch.no_grad():  # an eval forward first: on AVX512-BF16 CPUs this used to break QLoRA's backward pass
        start(torch.tensor([tokenizer(PROMPT)["input_ids"]]))
    base = state(start)
    tuned, _ = sft(start, tokenizer, sft_data, quick("cpu_sft"), peft=peft)
    assert logprob(tuned, tokenizer, PROMPT, " great .") > before + 1
    trained = {name.replace("base_model.model.", "").replace(".base_layer", ""): tensor
               for name, tensor in tuned.state_dict().items() if "lora_" not in name}
    assert set(base) <= set(trained)
    assert all(torch.equal(base[name], trained[name]) for name in base)
    assert any("lora_" in name for name, p in tuned.named_parameters() if p.requires_grad)
    assert all("lora_" in name for name, p in tuned.named_parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in tuned.parameters() if p.requires_grad)  # trl casts QLoRA's to bf16


def test_lora_rank_and_targets_reach_peft(tiny, sft_data):
    model, tokenizer = tiny
    trainer = sft_trainer(model, tokenizer, sft_data, quick("cpu_sft", rank=2, alpha=6, target_modules=["q_proj"]),
                          peft="lora")
    lora = trainer.model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, set(lora.target_modules)) == (2, 6, {"q_proj"})
    wrapped = {name.split(".")[-1] for name, module in trainer.model.named_modules() if hasattr(module, "lora_A")}
    assert wrapped == {"q_proj"}


@pytest.mark.parametrize("peft", ["none", "lora", "qlora"])
def test_dpo_widens_the_chosen_minus_rejected_margin(tiny, dpo_data, peft):
    model, tokenizer = tiny
    start = margin(model, tokenizer)
    aligned, log = dpo(model, tokenizer, dpo_data, quick("cpu_dpo"), peft=peft)
    assert margin(aligned, tokenizer) > start + 1
    assert log["rewards/margins"].iloc[-1] > 0 and log.step.tolist() == list(range(1, 7))


def test_dpo_reference_is_the_starting_model(tiny, dpo_data):
    model, tokenizer = tiny
    full = dpo_trainer(model, tokenizer, dpo_data, quick("cpu_dpo"))
    assert full.ref_model is not None and full.ref_model is not full.model
    assert all(torch.equal(a, b) for a, b in zip(full.ref_model.state_dict().values(), model.state_dict().values()))
    adapter = dpo_trainer(model, tokenizer, dpo_data, quick("cpu_dpo"), peft="lora")
    assert adapter.ref_model is None  # trl scores the reference with the adapter disabled


def test_stages_chain(tiny, sft_data, dpo_data):
    model, tokenizer = tiny
    first, _ = sft(model, tokenizer, sft_data, quick("cpu_sft"), peft="lora")
    first_score = logprob(first, tokenizer, PROMPT, " great .")
    second, _ = dpo(first, tokenizer, dpo_data, quick("cpu_dpo"))  # keeps training the adapter, against a frozen copy
    assert margin(second, tokenizer) > margin(first, tokenizer) + 1
    third, _ = sft(first, tokenizer, sft_data, quick("cpu_sft", max_steps=1), peft="lora")  # merged, then a new adapter
    assert list(third.peft_config) == ["default"] and not any("base_layer.lora" in n for n, _ in third.named_modules())
    assert logprob(first, tokenizer, PROMPT, " great .") == first_score  # the input of each stage is untouched
    with pytest.raises(ParameterError, match="4-bit"):
        sft(sft(model, tokenizer, sft_data, quick("cpu_sft", max_steps=1), peft="qlora")[0], tokenizer, sft_data,
            quick("cpu_sft"), peft="lora")


def test_presets_hold_the_papers_numbers_and_overrides_make_fresh_copies():
    assert {"thakkar_sft", "thakkar_dpo", "ji_elasticity", "cpu_sft", "cpu_dpo"} <= set(PRESETS)
    thakkar_sft, thakkar_dpo = preset("thakkar_sft"), preset("thakkar_dpo")
    assert (thakkar_sft.config.learning_rate, thakkar_sft.config.max_grad_norm, thakkar_sft.config.weight_decay,
            thakkar_sft.config.per_device_train_batch_size, thakkar_sft.config.max_steps) == (2e-4, 0.3, 0.001, 16, 700)
    assert dataclasses.astuple(thakkar_sft.lora) == (64, 16, 0.1, ["q_proj", "v_proj"])
    assert (thakkar_dpo.config.learning_rate, thakkar_dpo.config.lr_scheduler_type.value,
            thakkar_dpo.config.beta) == (5e-5, "cosine", 0.1)
    assert (thakkar_dpo.lora.rank, thakkar_dpo.lora.alpha, thakkar_dpo.lora.dropout) == (16, 32, 0.05)
    assert preset("ji_elasticity").config.learning_rate == 1e-5
    changed = preset("thakkar_sft", learning_rate=1e-3, rank=32, target_modules="all-linear")
    assert (changed.config.learning_rate, changed.lora.rank, changed.lora.target_modules) == (1e-3, 32, "all-linear")
    assert changed.config.max_steps == 700 and changed.lora.alpha == 16
    assert PRESETS["thakkar_sft"].config.learning_rate == 2e-4 and PRESETS["thakkar_sft"].lora.rank == 64
    changed.lora.target_modules = ["k_proj"]
    assert preset("thakkar_sft").lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ParameterError, match="learning_rat"):
        preset("thakkar_sft", learning_rat=1e-3)
    with pytest.raises(ParameterError, match="thakkar_sft"):
        preset("no_such_preset")


def test_gradient_checkpointing_override_takes_effect():
    # transformers resolves gradient_checkpointing into activation_checkpointing once; a plain
    # dataclasses.replace(config, gradient_checkpointing=True) would be silently ignored
    assert preset("cpu_sft", gradient_checkpointing=True).config.activation_checkpointing is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without CUDA")
def test_paged_optimizer_falls_back_on_cpu(tiny, sft_data, caplog):
    model, tokenizer = tiny
    with caplog.at_level("WARNING", logger="alignrepro.align"):
        trainer = sft_trainer(model, tokenizer, sft_data, preset("thakkar_sft", max_steps=1))
    assert trainer.args.optim.value == "adamw_torch" and "paged_adamw_32bit" in caplog.text
    assert trainer.args.report_to == [] and trainer.args.save_strategy.value == "no"


def test_bare_trl_config_and_bad_peft(tiny, sft_data):
    model, tokenizer = tiny
    config = sft_config(max_steps=2, learning_rate=1e-3, disable_tqdm=True)
    _, log = sft(model, tokenizer, sft_data, config, peft="lora")
    assert len(log) == 2 and log.learning_rate.iloc[0] == pytest.approx(1e-3, rel=0.01)
    assert isinstance(preset("cpu_sft"), Preset) and LoraSpec().lora_config().lora_alpha == 8
    with pytest.raises(ParameterError, match="peft"):
        sft(model, tokenizer, sft_data, config, peft="dora")


@pytest.mark.parametrize("build", [sft_trainer, dpo_trainer])
def test_trainers_hide_dataset_preparation_bars_and_restore_the_setting(tiny, sft_data, dpo_data, capsys, build):
    import datasets
    model, tokenizer = tiny
    data = sft_data if build is sft_trainer else dpo_data
    assert datasets.is_progress_bar_enabled()
    build(model, tokenizer, data, quick("cpu_sft" if build is sft_trainer else "cpu_dpo"))
    assert "Tokenizing" not in capsys.readouterr().err
    assert datasets.is_progress_bar_enabled()


def test_vocabulary_wide_tiles_train_to_the_same_numbers(tiny, sft_data, dpo_data):
    "trl's fused head with one tile of the toy vocabulary's width gives exactly what its 32,768-wide tiles give."
    import trl.trainer.utils as trl_utils
    from alignrepro.align import _vocabulary_wide_tiles
    model, tokenizer = tiny
    with _vocabulary_wide_tiles(model):
        assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == len(tokenizer)
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == 32768  # restored
    for train, data in ((sft, sft_data), (dpo, dpo_data)):
        narrow = train(model, tokenizer, data, quick(f"cpu_{train.__name__}", max_steps=3), peft="lora")[1]
        trainer = (sft_trainer if train is sft else dpo_trainer)(model, tokenizer, data,
                                                                 quick(f"cpu_{train.__name__}", max_steps=3), peft="lora")
        trainer.train()  # trl's own tiles
        assert narrow.loss.tolist() == [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_scored_positions_only_trains_to_the_same_numbers(tiny, sft_data):
    "trl's fused head on the labelled positions only gives the losses of scoring every position."
    import trl.trainer.utils as trl_utils
    from alignrepro.align import _scored_positions_only, _vocabulary_wide_tiles
    model, tokenizer = tiny
    cpu = torch.device("cpu")
    with _scored_positions_only():
        assert trl_utils._use_triton(cpu)  # the compact layout on this CPU
    assert not trl_utils._use_triton(cpu)  # restored
    compact = sft(model, tokenizer, sft_data, quick("cpu_sft", max_steps=3), peft="lora")[1]
    trainer = sft_trainer(model, tokenizer, sft_data, quick("cpu_sft", max_steps=3), peft="lora")
    with _vocabulary_wide_tiles(model):
        trainer.train()  # every position scored
    every = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert compact.loss.tolist() == pytest.approx(every, rel=1e-5)

def test_a_run_leaves_no_temporary_output_folder(tiny, sft_data, tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes the run's output_dir
    model, tokenizer = tiny
    trainer = sft_trainer(model, tokenizer, sft_data, quick("cpu_sft", max_steps=1))
    assert Path(trainer.args.output_dir).parent == tmp_path  # the run was given a temporary folder...
    sft(model, tokenizer, sft_data, quick("cpu_sft", max_steps=1))
    assert [p.name for p in tmp_path.iterdir()] == [Path(trainer.args.output_dir).name]  # ...and sft removed its own


def test_mixed_precision_training_returns_a_plain_forward(tiny, sft_data):
    "bf16 autocast wraps the model's forward for training; the returned model computes its head on the last positions."
    from alignrepro.evaluate import _keeps_logits
    model, tokenizer = tiny
    tuned, _ = sft(model, tokenizer, sft_data, quick("cpu_sft", max_steps=2, bf16=True, use_cpu=True), peft="lora")
    assert not any("forward" in vars(module) for module in tuned.modules()) and _keeps_logits(tuned.get_base_model())
    ids = tokenizer([PROMPT], return_tensors="pt").input_ids
    with torch.no_grad():
        assert tuned(ids).logits.dtype == torch.float32 and tuned(ids, logits_to_keep=1).logits.shape[1] == 1
