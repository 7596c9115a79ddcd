"""Grids: submitit's local executor, resuming after kill -9 with the same table as an uninterrupted run."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from alignrepro.core import RunStore
from alignrepro.grid import code_fingerprint, grid_cells, run_grid

SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np, pandas as pd
    from alignrepro.core import RunStore, seed_everything
    from alignrepro.grid import grid_cells, run_grid

    def cell_result(cell, store):
        seed_everything(cell["seed"])
        time.sleep(float(sys.argv[2]))
        return pd.DataFrame({"step": range(5), "loss": np.random.rand(5) * cell["lr"]})

    cells = grid_cells({"study": "killtest"}, {"lr": [0.1, 0.2, 0.3], "seed": [0, 1, 2, 3]})
    table = run_grid(cells, cell_result, RunStore(sys.argv[1]), log=lambda line: print(line, flush=True))
    table.to_parquet(sys.argv[1] + "/final.parquet")
""")


def run_script(tmp_path, root, delay):
    script = tmp_path / "grid_script.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(root), str(delay)], stdout=subprocess.PIPE, text=True)


def test_grid_killed_midway_resumes_to_the_uninterrupted_table(tmp_path):
    reference = run_script(tmp_path, tmp_path / "ref", 0)
    assert reference.wait(timeout=300) == 0
    root = tmp_path / "killed"
    proc = run_script(tmp_path, root, 0.5)
    deadline = time.time() + 120
    while len(list(root.glob("killtest/*/result.parquet"))) < 4 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(root.glob("killtest/*/result.parquet")))
    assert 4 <= done < 12, done
    assert not list(root.glob("killtest/*/*.tmp")), "a half-written result was left behind"
    resumed = run_script(tmp_path, root, 0)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and not list(root.rglob(".tmp.*")), "stale temporaries left after the resume"
    assert f"{done} of 12 cells already done, {12 - done} to run" in out
    pd.testing.assert_frame_equal(pd.read_parquet(root / "final.parquet"), pd.read_parquet(tmp_path / "ref" / "final.parquet"))


def test_submitit_local_executor_runs_missing_cells_in_parallel(tmp_path):
    store = RunStore(tmp_path / "runs")

    def cube(cell, store):  # a closure: submitit pickles it by value for its worker processes
        import os
        return pd.DataFrame({"value": [cell["x"] ** 3], "pid": [os.getpid()]})

    cells = grid_cells({"study": "sub"}, {"x": [1, 2, 3]})
    done = dict(cells[0], torch_threads=1, code=code_fingerprint(cube))  # as a job keys it: one thread, the code of `cube`
    store.get_or_run(done, lambda: pd.DataFrame({"value": [1], "pid": [os.getpid()]}))
    table = run_grid(cells, cube, store, executor="submitit-local", max_parallel=2, log=lambda line: None)
    assert table.value.tolist() == [1, 8, 27]
    assert table.pid.iloc[0] == os.getpid() and os.getpid() not in table.pid.iloc[1:].tolist()


def test_grid_rejects_unknown_executor(tmp_path):
    with pytest.raises(ValueError, match="allowed: 'local', 'pool', 'submitit'"):
        run_grid([], lambda cell, store: pd.DataFrame(), RunStore(tmp_path), executor="kubernetes")


def test_cells_get_the_grid_store(tmp_path):
    "What a cell caches on the way lands in the store the grid was given, not in the default one."
    def build(cell, store):
        folder = store.artifact({"study": "parts", "x": cell["x"]}, lambda f: (f / "part.txt").write_text(str(cell["x"])))
        return pd.DataFrame({"folder": [str(folder)]})

    store = RunStore(tmp_path / "runs")
    table = run_grid(grid_cells({"study": "whole"}, {"x": [1, 2]}), build, store, log=lambda line: None)
    assert [Path(f).parent.parent.parent for f in table.folder] == [store.root] * 2


def test_slurm_gets_one_job_array(tmp_path, monkeypatch):
    "On Slurm the pending cells are submitted inside one `batch()` (a job array whose parallelism Slurm enforces)."
    import contextlib

    import alignrepro.grid as grid

    class Job:
        def __init__(self, value): self.value = value
        def done(self): return True
        def result(self): return self.value

    class FakeSlurm:
        cluster, in_batch, submitted = "slurm", False, []

        @contextlib.contextmanager
        def batch(self):
            self.in_batch = True
            yield
            self.in_batch = False

        def submit(self, fn, *args):
            self.submitted.append(self.in_batch)
            return Job(fn(*args))

    slurm = FakeSlurm()
    monkeypatch.setattr(grid, "_executor", lambda *args: slurm)
    cells = grid_cells({"study": "arr"}, {"x": [1, 2, 3]})
    table = run_grid(cells, lambda cell, store: pd.DataFrame({"y": [cell["x"] * 2]}), RunStore(tmp_path),
                     executor="submitit", max_parallel=2, log=lambda line: None)
    assert slurm.submitted == [True, True, True] and table.y.tolist() == [2, 4, 6]


def test_changed_cell_code_is_another_run(tmp_path, monkeypatch):
    "The key holds a fingerprint of the cell function's module source: edit the module and its cells run again."
    import importlib
    module = tmp_path / "cellcode.py"
    module.write_text("import pandas as pd\n\ndef cell_rows(cell, store):\n    return pd.DataFrame({'y': [cell['x']]})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import cellcode
    store, cells = RunStore(tmp_path / "runs"), grid_cells({"study": "code"}, {"x": [1, 2]})
    run_grid(cells, cellcode.cell_rows, store, log=lambda line: None)
    lines = []
    run_grid(cells, cellcode.cell_rows, store, log=lines.append)
    assert lines[0].startswith("grid: 2 of 2 cells already done")
    module.write_text(module.read_text().replace("cell['x']", "cell['x'] * 10"))
    importlib.reload(cellcode)
    table = run_grid(cells, cellcode.cell_rows, store, log=lines.append)
    assert lines[-3].startswith("grid: 0 of 2 cells already done") and table.y.tolist() == [10, 20]


def pretrained_cell(cell, store):
    "A replicate as the chapters run one: pre-train a toy model for the seed (a shared artefact), report its loss and weights."
    from alignrepro.study import ModelSpec, pretrained
    toy = pretrained(ModelSpec(size="xxs", n_tokens=3000).for_seed(cell["seed"]), store)
    model, _ = toy.load(device="cpu")
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    return pd.DataFrame([dict(loss=float(toy.log.loss.iloc[-1]), checksum=checksum, steps=len(toy.log))])


def test_one_worker_and_two_workers_store_identical_results(tmp_path):
    cells = grid_cells({"study": "workers"}, {"seed": [0, 1, 2], "repeat": [0, 1]})  # two cells per model
    stores = {n: RunStore(tmp_path / f"workers-{n}") for n in (1, 2)}
    tables = {n: run_grid(cells, pretrained_cell, stores[n], executor="pool", max_parallel=n, log=lambda line: None)
              for n in stores}
    pd.testing.assert_frame_equal(tables[1], tables[2])
    assert tables[1].checksum.nunique() == 3, "each seed must pre-train its own model"
    for cell in cells:  # the stored files themselves, cell by cell
        keyed = {**cell, "torch_threads": 1, "code": code_fingerprint(pretrained_cell)}
        pd.testing.assert_frame_equal(pd.read_parquet(stores[1].result_path(keyed)),
                                      pd.read_parquet(stores[2].result_path(keyed)))


HELD_STREAM = textwrap.dedent("""
    import sys, threading
    from alignrepro.core import RunStore
    from alignrepro.grid import grid_cells, run_grid
    from cells import printing_cell

    class HeldStream:  # a notebook kernel's stdout: a thread of its own takes the lock to flush
        lock = threading.Lock()
        def write(self, text):
            with self.lock:
                return sys.__stdout__.write(text)
        def flush(self):
            pass

    if __name__ == "__main__":  # a worker started by a fork server imports the main module (as spawn does)
        sys.stdout = HeldStream()
        HeldStream.lock.acquire()  # the flushing thread holds it when the workers start, and never lets go here
        table = run_grid(grid_cells({"study": "held"}, {"seed": [0, 1]}), printing_cell, RunStore(sys.argv[1]),
                         executor="pool", max_parallel=2, log=lambda line: None)
        sys.__stdout__.write(f"rows {len(table)}\\n")
""")


def test_pool_workers_do_not_inherit_a_lock_held_by_a_thread(tmp_path):
    "A worker forked from a process whose output lock another thread holds would hang on its first print (a notebook"
    "kernel's output thread holds one while it flushes): pool workers come from a fork server instead."
    (tmp_path / "cells.py").write_text("import pandas as pd\n\ndef printing_cell(cell, store):\n"
                                       "    print('cell', cell['seed'])\n    return pd.DataFrame({'seed': [cell['seed']]})\n")
    script = tmp_path / "held.py"
    script.write_text(HELD_STREAM)  # a cell function defined in the script itself (`__main__`) is forked and hangs
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs")], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("a pool worker hung on the output lock its parent's thread held")
    assert "rows 2" in out and "cell" not in out  # what a cell prints goes to its log beside its result
    assert sorted(p.read_text() for p in (tmp_path / "runs").rglob("log.txt")) == ["cell 0\n", "cell 1\n"]
