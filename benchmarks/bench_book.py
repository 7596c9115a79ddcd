"""The whole default book, cold and warm: what `alignrepro book` costs on this machine.

Builds the book twice into a fresh output folder with a fresh run store: cold (every model pre-trained, every
replicate run) and warm (the same store: the chapters find their runs and only draw). Prints per chapter the
wall time, CPU time over wall time (its kernel and replicate workers) and peak resident memory, cold and warm;
then the whole build: wall time, CPU time over wall time (every process, the render included), and the
warm/cold ratio. The targets of the performance issue are printed beside the measurements. This machine's speed
drifts (a shared host: the same pre-training ran at 18,200 and 14,500 tokens/s an hour apart), so a fixed
reference pre-training is timed before the cold build and after the warm one: compare books at equal speed.

    python benchmarks/bench_book.py              # the default book, 2 chapters at a time (about 15-20 minutes)
    python benchmarks/bench_book.py --jobs 1     # one chapter at a time, to compare
"""
import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from bench_pretrain import bare_loop, world_batches

from alignrepro.book import build_book
from alignrepro.core import parse_value
from alignrepro.models import toy_model


def _cpu_seconds() -> float:
    "CPU time of this process and of every process it waited for (the render; chapters are counted by the book)."
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reference_speed(n_tokens: int = 60_000) -> float:
    """Tokens per wall-clock second of a fixed pre-training (xs toy, one thread, batches of 16): the machine's speed now.
    The plain padded loop of `bench_pretrain`, not the library's: a change in the library leaves the yardstick as it is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer, batches = world_batches(n_tokens, 16)
    model = toy_model("xs", len(tokenizer), "llama", seed=0)
    speed = bare_loop(model, batches, tokenizer.pad_token_id, 3e-3, torch.device("cpu"))[0]
    torch.set_num_threads(threads)
    return speed


def timed_build(out: Path, jobs: int | None, chapters: list[str] | None, parameters: dict):
    "(the build's result, wall seconds, CPU / wall) of one book build."
    started, cpu = time.perf_counter(), _cpu_seconds()
    result = build_book(out, chapters=chapters, parameters=parameters, renderer="nbconvert", jobs=jobs,
                        log=lambda line: print(line, flush=True))
    wall = time.perf_counter() - started
    chapters = sum(page.cpu_seconds for page in result.pages)  # each chapter's process, kernel and workers
    return result, wall, (_cpu_seconds() - cpu + chapters) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="chapters at once (default: the book's, 2)")
    parser.add_argument("--chapters", nargs="+", default=None, help="only these chapters (default all)")
    parser.add_argument("--out", default=None, help="output folder (default: a fresh temporary folder)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter for every chapter (default: none, the book's defaults)")
    args = parser.parse_args()
    parameters = {name: parse_value(value) for name, value in args.parameter}
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-book-"))
    os.environ["ALIGNREPRO_RUNS"] = str(work / "runs")  # a fresh run store: the first build is cold
    builds, before = {}, reference_speed()
    for phase in ("cold", "warm"):
        print(f"--- {phase} build into {work / 'book'}", flush=True)
        builds[phase] = timed_build(work / "book", args.jobs, args.chapters, parameters)
        if builds[phase][0].failed:
            print(builds[phase][0].summary())
            raise SystemExit(f"the {phase} build failed")
    (cold, cold_wall, cold_busy), (warm, warm_wall, _) = builds["cold"], builds["warm"]
    print(f"\n{os.cpu_count()} cores; chapters {args.jobs or 'the default number'} at a time; machine speed (reference "
          f"pre-training, one thread): {before:,.0f} tokens/s before the cold build, {reference_speed():,.0f} after the warm one\n")
    print(f"{'chapter':<24} {'cold s':>8} {'CPU/wall':>9} {'peak MiB':>9} {'warm s':>8} {'warm/cold':>10}")
    for c, w in zip(cold.pages, warm.pages):
        if c.status == "executed":
            print(f"{Path(c.page).stem:<24} {c.seconds:8.1f} {c.cpu_seconds / c.seconds:9.2f} {c.peak_mib:9.0f} "
                  f"{w.seconds:8.1f} {w.seconds / c.seconds:10.3f}")
    peak = max(p.peak_mib for p in cold.pages)
    print(f"{'whole book':<24} {cold_wall:8.1f} {cold_busy:9.2f} {peak:9.0f} {warm_wall:8.1f} {warm_wall / cold_wall:10.3f}")
    print(f"\ntargets: cold <= 900 s ({cold_wall:.0f} s), warm/cold <= 0.05 ({warm_wall / cold_wall:.3f}), "
          f"CPU/wall >= 1.7 ({cold_busy:.2f}); peak memory of one process {peak:.0f} MiB")


if __name__ == "__main__":
    main()
