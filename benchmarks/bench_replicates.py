"""Replicates in parallel: `run_grid`'s process pool against one process, same cells, same numbers.

Every chapter hands its seeds to `alignrepro.study.replicates`, which runs them through `run_grid`. This
benchmark runs the same replicate cells (a toy model pre-trained per seed, then scored) three ways, each
into an empty run store: one process with one torch thread (`local`, as a chapter did before), one
process with every core's threads, and the pool (`pool`: one worker per core, one torch thread each, the
chapters' default). It prints wall-clock time, CPU time over wall time (children included: the share of
the machine kept busy), the speed-up of the pool over each, peak memory, and whether the pool's numbers
are bit-identical to the one-thread run (they must be: the cell's key records its thread count).

    python benchmarks/bench_replicates.py --seeds 4 --size xs --n-tokens 40000
"""
import argparse
import os
import resource
import tempfile
import time

import pandas as pd
import torch

from alignrepro.core import RunStore
from alignrepro.grid import run_grid, stop_fork_server
from alignrepro.study import ModelSpec, pretrained


def replicate(cell: dict, store: RunStore) -> pd.DataFrame:
    "One seed's replicate: pre-train the toy model with the seed, then its final loss and a weight checksum."
    toy = pretrained(ModelSpec(size=cell["size"], n_tokens=cell["n_tokens"]).for_seed(cell["seed"]), store)
    model, _ = toy.load(device="cpu")
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    return pd.DataFrame([dict(final_loss=float(toy.log.loss.iloc[-1]), checksum=checksum)])


def _cpu_seconds() -> float:
    "CPU time of this process and of its finished children."
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(cells: list[dict], executor: str, threads: int) -> tuple[pd.DataFrame, float, float]:
    "(rows, wall seconds, CPU / wall) of the cells run with `executor` into a fresh store."
    torch.set_num_threads(threads)
    store = RunStore(tempfile.mkdtemp(prefix=f"bench-{executor}-"))
    started, cpu = time.perf_counter(), _cpu_seconds()
    rows = run_grid(cells, replicate, store=store, executor=executor, log=lambda line: None)
    stop_fork_server()  # the pool's workers are its children: they count once it has ended
    wall = time.perf_counter() - started
    return rows.sort_values("seed").reset_index(drop=True), wall, (_cpu_seconds() - cpu) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="replicates (one cell each)")
    parser.add_argument("--size", default="xs", help="toy ladder rung")
    parser.add_argument("--n-tokens", type=int, default=40_000, help="pre-training budget per replicate")
    args = parser.parse_args()
    cells = [dict(study="bench", size=args.size, n_tokens=args.n_tokens, seed=s) for s in range(args.seeds)]
    cores = os.cpu_count() or 1
    one, one_wall, one_busy = timed(cells, "local", 1)
    many, many_wall, many_busy = timed(cells, "local", cores)
    pool, pool_wall, pool_busy = timed(cells, "pool", 1)
    print(f"{args.seeds} replicates ({args.size}, {args.n_tokens} tokens each) on {cores} cores")
    for name, wall, busy in [("local, 1 thread", one_wall, one_busy), (f"local, {cores} threads", many_wall, many_busy),
                             (f"pool, {cores} workers x 1 thread", pool_wall, pool_busy)]:
        print(f"  {name:<28} {wall:7.1f} s   CPU/wall {busy:4.2f}")
    print(f"speed-up of the pool: x{one_wall / pool_wall:.2f} over 1 thread, x{many_wall / pool_wall:.2f} over "
          f"{cores} threads")
    same = one[["final_loss", "checksum"]].equals(pool[["final_loss", "checksum"]])
    print(f"pool numbers bit-identical to the 1-thread run: {same}")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (this process), "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB (largest worker)")


if __name__ == "__main__":
    main()
