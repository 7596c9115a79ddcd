"""The wheel: library only at run time, torch as a range."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
TOOLING = {"nbdev", "papermill", "jupyter", "jupyterlab", "notebook", "nbconvert", "nbformat", "ipykernel",
           "execnb", "jupytext", "pytest", "build", "fastcore", "ghapi"}


@pytest.fixture(scope="module")
def requirements(tmp_path_factory):
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source") / "alignrepro"
    # built from a copy: a build writes build/ and *.egg-info into its source, and both test processes may build at once
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "nbs", "tests", "_build",
                                                                "_out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True)
    wheel = next(out.glob("alignrepro-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert "alignrepro/core.py" in archive.namelist()
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]


def test_runtime_requirements_hold_no_notebook_or_test_tooling(requirements):
    runtime = {r.name.lower() for r in requirements if r.marker is None}
    assert {"torch", "transformers", "trl", "peft", "datasets", "pandas", "seaborn", "tqdm", "pyyaml"} <= runtime
    assert not runtime & TOOLING, runtime & TOOLING
    dev = {r.name.lower() for r in requirements if r.marker is not None and "dev" in str(r.marker)}
    assert {"nbdev", "papermill", "nbconvert", "pytest", "jupyterlab"} <= dev


def test_torch_is_a_range_not_a_pin(requirements):
    torch = next(r for r in requirements if r.name == "torch")
    assert all(spec.operator not in ("==", "===") for spec in torch.specifier), torch
    assert torch.specifier.contains("2.13.0") and not torch.specifier.contains("1.13.0")


def test_quarto_is_an_optional_book_extra(requirements):
    book = {r.name.lower() for r in requirements if r.marker is not None and "book" in str(r.marker)}
    runtime = {r.name.lower() for r in requirements if r.marker is None}
    assert book == {"quarto-cli"} and "quarto-cli" not in runtime


TRAINING_LIBRARIES = ("trl", "peft", "bitsandbytes", "transformers.modeling_utils")
CHAPTER_MODULES = ("elasticity", "peft_grid", "repe", "honesty", "token_shift", "book", "cli")


def test_reading_stored_runs_loads_no_training_library():
    "A chapter's imports leave trl, peft, bitsandbytes and the modelling code unloaded (a rebuild only reads runs)."
    code = (f"import sys\nfor name in {CHAPTER_MODULES!r}: __import__('alignrepro.' + name)\n"
            f"print(','.join(m for m in {TRAINING_LIBRARIES!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert loaded == "", f"imported at module level: {loaded}"
