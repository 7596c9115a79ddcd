"""Shared pytest set-up: offline hub, a fresh run store per session, and the --runslow switch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _run_store(tmp_path_factory):
    "Every test session writes runs into its own folder, never the user's cache."
    os.environ["ALIGNREPRO_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    yield


def _command_line_text(value) -> str:
    "A parameter value as a user types it after papermill's `-p NAME`: lists as JSON text, the rest as str()."
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


@pytest.fixture
def run_chapter(tmp_path):
    """Run a chapter notebook from nbs/ with the `papermill` command, as a user types it, and tiny parameters.

    Every parameter goes on the command line as `-p NAME VALUE` (a list as text, `-p seeds "[0, 1]"`), or all
    of them as one `-y` YAML document with `as_yaml=True`. Returns (executed notebook path, out_dir); a failing
    cell raises papermill's `PapermillExecutionError` with the error the kernel raised."""
    import nbformat
    from papermill.exceptions import PapermillExecutionError

    nbs = Path(__file__).resolve().parent.parent / "nbs"

    def run(name: str, as_yaml: bool = False, **parameters):
        out_dir = tmp_path / name
        parameters.setdefault("out_dir", str(out_dir))
        executed = tmp_path / f"{name}.executed.ipynb"
        command = [str(Path(sys.executable).with_name("papermill")), str(nbs / f"{name}.ipynb"), str(executed), "--cwd", str(nbs), "-k", "python3",
                   "--no-progress-bar"]
        if as_yaml:
            command += ["-y", yaml.safe_dump(parameters)]
        else:
            command += [text for name_value in parameters.items()
                        for text in ("-p", name_value[0], _command_line_text(name_value[1]))]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            cells = nbformat.read(executed, as_version=4).cells if executed.exists() else []
            errors = [(i, c, o) for i, c in enumerate(cells) for o in c.get("outputs", []) if o.output_type == "error"]
            if not errors:
                raise RuntimeError(f"papermill failed before any cell ran:\n{proc.stderr[-3000:]}")
            index, cell, error = errors[0]
            raise PapermillExecutionError(index, cell.execution_count, cell.source, error.ename, error.evalue,
                                          error.traceback)
        return executed, Path(parameters["out_dir"])

    return run
