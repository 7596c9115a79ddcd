"""LoRA SFT on SmolLM2 with trl: its fused LM head on the labelled positions only, against every position.

The honesty chapter's small scale trains LoRA on SmolLM2-135M-Instruct's top 8 layers, on prompts in the chat
template (about two thirds of each row) and short answers. trl's fused LM head scores every position off Triton
devices; `alignrepro.align` has it score the labelled ones only (`_scored_positions_only`). Both runs train the same
adapter on the same rows with the same seed, one thread; they alternate, the best of `--repeats` of each is kept.
Prints both times, their ratio (labelled only / every position) and the two final losses (equal up to rounding).

    python benchmarks/bench_lora_head.py --steps 4
"""
import argparse
import time

import torch
from datasets import Dataset

from alignrepro.align import _scored_positions_only, preset, sft_trainer
from alignrepro.honesty import help_questions
from alignrepro.peft_grid import SMALL_LORA_TARGETS  # SmolLM2's top 8 layers, as both small scales train
from alignrepro.study import ModelSpec, load


def _rows(tokenizer, n: int) -> Dataset:
    "Help questions in SmolLM2's chat template with their short answers (the honesty training rows' shape)."
    questions = help_questions().head(n)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in questions.question]
    return Dataset.from_dict(dict(prompt=prompts, completion=[f"{a}." for a in questions.answer]))


def _run(model, tokenizer, data: Dataset, steps: int, compact: bool) -> tuple[float, float]:
    "(seconds of trainer.train(), final loss) of one LoRA run; every position scored unless `compact`."
    config = preset("cpu_sft", max_steps=steps, learning_rate=1e-3, per_device_train_batch_size=16, logging_steps=steps,
                    disable_tqdm=True, target_modules=SMALL_LORA_TARGETS)
    trainer = sft_trainer(model, tokenizer, data, config, peft="lora")
    started = time.perf_counter()
    if compact:
        with _scored_positions_only():
            trainer.train()
    else:
        trainer.train()
    return time.perf_counter() - started, trainer.state.log_history[-2]["loss"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load(ModelSpec("smollm2"))
    data = _rows(tokenizer, 64)
    best = {}
    for _ in range(args.repeats):
        for compact in (False, True):
            seconds, loss = _run(model, tokenizer, data, args.steps, compact)
            if seconds < best.get(compact, (float("inf"),))[0]:
                best[compact] = (seconds, loss)
    (every, every_loss), (labelled, labelled_loss) = best[False], best[True]
    print(f"every position   {every:7.1f} s  final loss {every_loss:.5f}")
    print(f"labelled only    {labelled:7.1f} s  final loss {labelled_loss:.5f}")
    print(f"ratio (labelled / every): {labelled / every:.2f}")
