"""Top-k sampling over the k candidates against over the whole vocabulary: SmolLM2 (49,152 tokens), one thread.

`alignrepro.evaluate.sample` with `top_k` draws each next token among the k most likely only. Before, it set the
other logits to -inf and drew over the whole vocabulary: a random number per vocabulary entry and row. Both draw from
the same distribution. This prints, measured in one run:
- the honesty knowledge pass's samples (SmolLM2, bf16, m samples of each training question, top-k 20, 16 tokens):
  time of the whole-vocabulary draw / the candidates' draw;
- one token choice on the logits of 320 rows: the same ratio;
- on one row's logits, the total variation distance between the two draws' token frequencies (near 0: the same
  distribution; its sampling noise alone is about sqrt(k / draws)).

    python benchmarks/bench_topk_sampling.py --prompts 32 --m 10
"""
import argparse

import pandas as pd
import torch
from bench_honesty_precision import timed

import alignrepro.evaluate as evaluate
from alignrepro.data import fact_questions
from alignrepro.evaluate import _next_tokens, _nucleus, shared_prefix_sample
from alignrepro.honesty import chat_prompt, real_question_table, sampling_copy
from alignrepro.study import ModelSpec, load


def _whole_vocabulary(logits, temperature, top_k, top_p, generator):
    "The token choice before: top-k as -inf over the vocabulary, one draw over all of it."
    if temperature == 0:
        return logits.argmax(-1)
    kth = logits.topk(top_k, dim=-1).values[:, -1:]
    probs = _nucleus(logits.masked_fill(logits < kth, float("-inf")) / temperature, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def main(prompts: int, m: int, top_k: int = 20) -> None:
    torch.set_num_threads(1)
    model, tokenizer = load(ModelSpec("smollm2"))
    table = real_question_table(fact_questions(["capital"]), ["capital"], chat_prompt(tokenizer), subset=prompts, seed=0)
    asked = table[table.split == "train"].prompt.tolist()[:prompts]
    half = sampling_copy(model, "bfloat16")
    draw = lambda: shared_prefix_sample(half, tokenizer, asked, n=m, temperature=1.0, top_k=top_k, max_new_tokens=16,
                                        batch_size=32, seed=0)
    candidates, _ = timed(draw)
    evaluate._next_tokens = _whole_vocabulary  # `_sample_batch` looks the choice up at each step
    try:
        whole, _ = timed(draw)
    finally:
        evaluate._next_tokens = _next_tokens
    logits = torch.randn(320, model.config.vocab_size) * 3
    step = {name: timed(lambda: [fn(logits, 1.0, top_k, 1.0, torch.Generator().manual_seed(0)) for _ in range(5)])[0]
            for name, fn in (("whole", _whole_vocabulary), ("candidates", _next_tokens))}
    one = logits[:1].repeat(4000, 1)
    counts = [torch.bincount(fn(one, 1.0, top_k, 1.0, torch.Generator().manual_seed(1)), minlength=logits.shape[1])
              for fn in (_whole_vocabulary, _next_tokens)]
    distance = float((counts[0] - counts[1]).abs().sum() / 2 / len(one))
    print(pd.Series({
        f"{len(asked)} questions x {m} samples: whole vocabulary / candidates": round(whole / candidates, 2),
        "one token choice, 320 rows: whole vocabulary / candidates": round(step["whole"] / step["candidates"], 2),
        f"token frequencies over {len(one)} draws, total variation distance": round(distance, 3),
        "  its sampling noise alone, about": round((top_k / len(one)) ** 0.5, 3)}).to_string())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="training questions sampled")
    parser.add_argument("--m", type=int, default=10, help="samples per question")
    main(**vars(parser.parse_args()))
