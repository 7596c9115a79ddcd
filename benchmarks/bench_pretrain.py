"""Pre-training throughput: alignrepro.models' loop against a bare PyTorch loop, same model and batches.

Both loops train a fresh copy of the same toy model (same seed) on the same padded batches of world
documents, one pass, on the same device. Throughput is real (non-pad) tokens per second around the
whole loop (the library's includes its learning-rate schedule, gradient clipping, per-step log and
progress bar), per second of wall-clock time and per second of this process's CPU time (steadier when
other jobs share the machine). The runs alternate and the best of `--repeats` of each is kept. Prints
both loops and their ratio (library / bare; aim >= 0.8).

    python benchmarks/bench_pretrain.py --size xs --n-tokens 100000
"""
import argparse
import time

import torch

from alignrepro.core import get_device
from alignrepro.models import LADDER, _document_batches, _documents, toy_model, toy_tokenizer, train_loop
from alignrepro.world import ToyWorld, WorldConfig


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(tokens: int, started: tuple[float, float]) -> tuple[float, float]:
    "Tokens per wall-clock second and per CPU second since `started`."
    wall, cpu = _clocks()
    return tokens / (wall - started[0]), tokens / (cpu - started[1])


def bare_loop(model: torch.nn.Module, batches: list[torch.Tensor], pad_id: int, lr: float,
              device: torch.device) -> tuple[float, float]:
    "Tokens per wall and CPU second of the plainest loop: forward, backward, AdamW step."
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    tokens, started = 0, _clocks()
    for batch in batches:
        input_ids = batch.to(device)  # (B, T)
        mask = input_ids != pad_id  # (B, T)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(~mask, -100)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        tokens += int(mask.sum())
    return _rates(tokens, started)


def library_loop(model: torch.nn.Module, batches: list[torch.Tensor], pad_id: int, lr: float,
                 device: torch.device) -> tuple[float, float]:
    "Tokens per wall and CPU second of alignrepro.models' pre-training loop (no checkpoints saved)."
    started = _clocks()
    log = train_loop(model, [_documents(batch, pad_id) for batch in batches], lr, "cosine", warmup=True,
                     weight_decay=0.1, betas=(0.9, 0.95), max_grad_norm=1.0, device=device)
    return _rates(int(log.tokens.iloc[-1]), started)


def world_batches(n_tokens: int, batch_size: int) -> tuple:
    "(tokenizer, padded batches of world documents, about `n_tokens` in all): the benchmarks' fixed pre-training data."
    world = ToyWorld(WorldConfig())
    tokenizer = toy_tokenizer(world.vocab)
    return tokenizer, _document_batches(tokenizer, world.pretraining_dataset(n_tokens, seed=0)["text"], batch_size, 128, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="xs", choices=list(LADDER), help="ladder rung")
    parser.add_argument("--arch", default="llama", choices=["llama", "mistral"], help="architecture")
    parser.add_argument("--n-tokens", type=int, default=100_000, help="tokens per run")
    parser.add_argument("--batch-size", type=int, default=64, help="documents per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each loop; the best is kept")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    args = parser.parse_args()

    device = get_device(args.device)
    tokenizer, batches = world_batches(args.n_tokens, args.batch_size)
    warmup = toy_model(args.size, len(tokenizer), args.arch, seed=0)
    bare_loop(warmup, batches[:3], tokenizer.pad_token_id, args.lr, device)  # first-call allocations
    bare, library = [], []
    for _ in range(args.repeats):
        for results, loop in ((bare, bare_loop), (library, library_loop)):
            model = toy_model(args.size, len(tokenizer), args.arch, seed=0)
            results.append(loop(model, batches, tokenizer.pad_token_id, args.lr, device))
    print(f"device {device}, {args.size}/{args.arch} ({warmup.num_parameters() / 1e6:.2f}M parameters), "
          f"{len(batches)} batches of {args.batch_size} documents, torch threads {torch.get_num_threads()}")
    for clock, i in (("wall-clock", 0), ("CPU", 1)):
        best_bare, best_library = max(r[i] for r in bare), max(r[i] for r in library)
        print(f"per {clock} second: bare PyTorch loop {best_bare:,.0f} tokens/s, alignrepro loop "
              f"{best_library:,.0f} tokens/s, ratio library / bare {best_library / best_bare:.2f}")


if __name__ == "__main__":
    main()
