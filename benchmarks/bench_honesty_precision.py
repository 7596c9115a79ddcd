"""The honesty chapter's small scale in bfloat16 against float32: answers and a LoRA run on SmolLM2, one thread.

`precision = "bfloat16"` (the small default) trains LoRA under bf16 autocast and samples from `sampling_copy`, a bf16
copy with the adapter merged. This prints, measured in one run on the same questions and rows:
- greedy answers of a LoRA-trained model: float32 / bfloat16 time, and how many answers are the same text;
- the same bf16 answers without `sampling_copy`'s contiguous head input / with it (the strided slow path);
- one LoRA run: bfloat16 / float32 time, and both final losses.

    python benchmarks/bench_honesty_precision.py --questions 64 --steps 4
"""
import argparse
import time

import pandas as pd
import torch

from alignrepro.data import fact_questions
from alignrepro.evaluate import shared_prefix_sample
from alignrepro.honesty import chat_prompt, real_question_table, resolve_plan, sampling_copy, train_method
from alignrepro.study import ModelSpec, load


def timed(fn):
    "(seconds, result) of calling `fn`."
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _answers(model, tokenizer, prompts: list[str]) -> list[str]:
    return [s[0] for s in shared_prefix_sample(model, tokenizer, prompts, n=1, temperature=0.0, max_new_tokens=48,
                                               batch_size=128, seed=0)]


def main(questions: int, steps: int) -> None:
    torch.set_num_threads(1)
    model, tokenizer = load(ModelSpec("smollm2"))
    table = real_question_table(fact_questions(["capital"]), ["capital"], chat_prompt(tokenizer), subset=questions, seed=0)
    train = table[table.split == "train"].assign(  # every training question known: ABSOLUTE's targets are answers
        greedy=lambda t: t.gold_reply, samples=lambda t: [[g] for g in t.gold_reply], greedy_correct=True,
        samples_correct=lambda t: [[True]] * len(t))
    prompts = table[table.split == "in_domain"].honest_prompt.tolist()
    times, losses, tuned = {}, {}, {}
    for precision in ("float32", "bfloat16"):
        plan = resolve_plan("small", steps=steps, precision=precision)
        times[precision], (tuned[precision], log) = timed(lambda: train_method(model, tokenizer, train, "absolute", plan, 0))
        losses[precision] = float(log.loss.iloc[-1])
    full = timed(lambda: _answers(tuned["float32"], tokenizer, prompts))
    half_model = sampling_copy(tuned["bfloat16"], "bfloat16")
    half = timed(lambda: _answers(half_model, tokenizer, prompts))
    half_model.get_output_embeddings()._forward_pre_hooks.clear()  # the strided head input, as before the fix
    strided = timed(lambda: _answers(half_model, tokenizer, prompts))
    same = sum(a == b for a, b in zip(full[1], half[1]))
    print(pd.Series({
        f"answers to {len(prompts)} questions: float32 / bfloat16": round(full[0] / half[0], 2),
        "answers: same text in both precisions": f"{same} of {len(prompts)}",
        "bf16 answers: strided head input / contiguous": round(strided[0] / half[0], 2),
        f"LoRA run of {steps} steps: bfloat16 / float32": round(times["bfloat16"] / times["float32"], 2),
        "final loss float32, bfloat16": f"{losses['float32']:.4f}, {losses['bfloat16']:.4f}"}).to_string())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64, help="questions per split")
    parser.add_argument("--steps", type=int, default=4, help="LoRA steps")
    main(**vars(parser.parse_args()))
