"""Shared pytest set-up: offline hub, a fresh run store per session, and the --runslow switch."""
import os

import pytest

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


@pytest.fixture
def run_chapter(tmp_path):
    """Run a chapter notebook from nbs/ through papermill with the given parameters.

    Returns (executed notebook path, out_dir). Chapters' tests call it with tiny parameters."""
    from pathlib import Path

    import papermill

    nbs = Path(__file__).resolve().parent.parent / "nbs"

    def run(name: str, **parameters):
        out_dir = tmp_path / name
        parameters.setdefault("out_dir", str(out_dir))
        executed = tmp_path / f"{name}.executed.ipynb"
        papermill.execute_notebook(str(nbs / f"{name}.ipynb"), str(executed), parameters=parameters,
                                   cwd=str(nbs), kernel_name="python3", progress_bar=False)
        return executed, Path(parameters["out_dir"])

    return run
