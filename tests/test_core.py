"""The run store, parameter validation and the claims file."""
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from alignrepro.core import (CLAIM_COLUMNS, COMMON_RULES, ParameterError, RunStore, number, one_of, run_id, seed_everything,
                             validate, write_claims)


def table(n=3):
    return pd.DataFrame({"step": range(n), "loss": [1.0 / (i + 1) for i in range(n)]})


def test_same_params_same_id_and_order_does_not_matter():
    assert run_id({"study": "s", "lr": 0.1, "sizes": [1, 2]}) == run_id({"sizes": (1, 2), "lr": 0.1, "study": "s"})
    assert run_id({"study": "s", "seed": 0}) != run_id({"study": "s", "seed": 1})


def test_finished_run_is_reused_and_force_recomputes(tmp_path):
    store, calls = RunStore(tmp_path), []

    def compute():
        calls.append(1)
        return table()

    params = {"study": "s", "seed": 0}
    first = store.get_or_run(params, compute)
    second = store.get_or_run(params, compute)
    assert len(calls) == 1 and first.equals(second)
    store.get_or_run(params, compute, force=True)
    assert len(calls) == 2


def test_run_killed_mid_write_leaves_no_partial_result(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        import pandas as pd
        from alignrepro.core import RunStore
        real = pd.DataFrame.to_parquet
        def dying(self, path, *args, **kwargs):
            with open(path, "wb") as f:
                f.write(b"PAR1 half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        pd.DataFrame.to_parquet = dying
        RunStore({str(tmp_path)!r}).get_or_run({{"study": "s", "seed": 0}}, lambda: pd.DataFrame({{"x": [1]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    store = RunStore(tmp_path)
    assert not store.has({"study": "s", "seed": 0})
    assert store.query().empty and store.runs().empty
    assert store.get_or_run({"study": "s", "seed": 0}, lambda: pd.DataFrame({"x": [1]})).x.tolist() == [1]


def test_query_sees_all_runs_with_their_params(tmp_path):
    store = RunStore(tmp_path)
    for seed in range(3):
        store.get_or_run({"study": "a", "seed": seed, "lr": 0.1}, lambda: table(2))
    store.get_or_run({"study": "b", "seed": 0}, lambda: table(4))
    everything = store.query()
    assert len(everything) == 3 * 2 + 4 and everything.run_id.nunique() == 4
    only_a = store.query("a")
    assert sorted(only_a.seed.unique()) == [0, 1, 2] and (only_a.lr == 0.1).all()
    assert list(store.runs("b").study) == ["b"]


def test_artifact_built_once(tmp_path):
    store, calls = RunStore(tmp_path), []

    def build(folder):
        calls.append(1)
        (folder / "w.bin").write_bytes(b"123")

    first = store.artifact({"study": "m", "size": "xs"}, build)
    second = store.artifact({"study": "m", "size": "xs"}, build)
    assert first == second and (first / "w.bin").read_bytes() == b"123" and len(calls) == 1


def _build_slowly(folder):
    "A build that takes a while and counts its calls in a file beside the store."
    with open(folder.parents[3] / "builds.txt", "a") as calls:
        calls.write("built\n")
    time.sleep(1.0)
    (folder / "who").write_text(str(os.getpid()))


def _build_in_worker(root):
    return str(RunStore(root).artifact({"study": "m", "size": "xs"}, _build_slowly))


def test_artifact_wanted_by_two_workers_at_once_is_built_once(tmp_path):
    "Parallel grid cells may want the same start model at once: one builds it, the other waits and shares it."
    root = tmp_path / "store"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        paths = list(pool.map(_build_in_worker, [root, root]))
    assert paths[0] == paths[1] and (tmp_path / "builds.txt").read_text() == "built\n"
    assert sorted(p.name for p in Path(paths[0]).parent.iterdir()) == ["artifact", "build.lock", "params.json",
                                                                       "provenance.json"]
    rebuilt = RunStore(root).artifact({"study": "m", "size": "xs"}, lambda f: (f / "who").write_text("forced"), force=True)
    assert (rebuilt / "who").read_text() == "forced"


def test_failed_artifact_build_leaves_nothing(tmp_path):
    store = RunStore(tmp_path)

    def broken(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.artifact({"study": "m"}, broken)
    assert not any(p.name == "artifact" for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("name,value,needle", [
    ("scale", "huge", "allowed: one of 'toy', 'small', 'paper'"),
    ("seeds", [], "a list of at least 1 ints >= 0"),
    ("seeds", [0.5], "'seeds'"),
    ("out_dir", "", "'out_dir'"),
    ("lr", -1.0, "'lr': got -1.0; allowed: a number >= 0"),
    ("mode", "sideways", "'mode'"),
    ("executor", "threads", "allowed: one of 'local', 'pool', 'submitit', 'submitit-local'"),
    ("max_parallel", 0, "'max_parallel'"),
])
def test_validation_names_parameter_and_allowed_values(name, value, needle):
    rules = {**COMMON_RULES, "lr": number(lo=0), "mode": one_of("up", "down")}
    params = {"scale": "toy", "seeds": [0, 1, 2], "out_dir": "out", "executor": "pool", "max_parallel": None, "lr": 0.1,
              "mode": "up"}
    assert validate(params, rules) == params
    with pytest.raises(ParameterError, match=f"'{name}'") as error:
        validate({**params, name: value}, rules)
    assert needle in str(error.value)


def test_validation_rejects_unknown_and_missing_names():
    with pytest.raises(ParameterError, match="unknown parameter 'sede'"):
        validate({"scale": "toy", "seeds": [0], "out_dir": "o", "executor": "pool", "max_parallel": 2, "sede": 1},
                 COMMON_RULES)
    with pytest.raises(ParameterError, match="'out_dir' is missing"):
        validate({"scale": "toy", "seeds": [0], "executor": "local", "max_parallel": None}, COMMON_RULES)


def test_seeding_is_bit_identical():
    import torch
    seed_everything(7)
    a = torch.nn.Linear(8, 8)(torch.randn(2, 8))
    seed_everything(7)
    b = torch.nn.Linear(8, 8)(torch.randn(2, 8))
    assert torch.equal(a, b)


def test_write_claims_checks_columns_and_verdicts(tmp_path):
    row = {column: "" for column in CLAIM_COLUMNS} | dict(study="s", claim_id="c1", n=3, verdict="inconclusive")
    runs = pd.DataFrame({"seed": [0, 1], "curve": [[0.1, 0.2], {"a": 1}]})
    assert pd.read_csv(write_claims([row], tmp_path, runs)).claim_id.tolist() == ["c1"]
    assert pd.read_parquet(tmp_path / "results.parquet").curve.tolist() == ["[0.1, 0.2]", '{"a": 1}']
    with pytest.raises(ValueError, match="verdicts"):
        write_claims([dict(row, verdict="maybe")], tmp_path)
    with pytest.raises(ValueError, match="lacks columns"):
        write_claims([{"study": "s"}], tmp_path)


def test_a_notebook_shows_the_saved_figure_and_draws_it_once(tmp_path, monkeypatch):
    "Under the inline backend the saved PNG is displayed and the figure closed (the backend would draw it again)."
    import IPython.display
    import matplotlib.pyplot as plt
    from alignrepro import core
    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    figure = plt.figure()
    plt.plot([0, 1], [1, 0])
    monkeypatch.setattr(core, "_inline_backend", lambda: False)
    core.save_figure(figure, tmp_path, "script.png")
    assert shown == [] and plt.fignum_exists(figure.number)
    monkeypatch.setattr(core, "_inline_backend", lambda: True)
    path = core.save_figure(figure, tmp_path, "notebook.png")
    assert [image.data for image in shown] == [path.read_bytes()] and not plt.fignum_exists(figure.number)
