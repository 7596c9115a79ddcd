"""The `alignrepro` command on a tiny dummy book: papermill runs, the nbconvert fallback, failures, runs listing."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from alignrepro.core import RunStore

QUARTO = """book:
  title: Dummy
  chapters:
    - index.ipynb
    - part: Studies
      chapters:
        - 01_dummy.ipynb
        - 02_broken.ipynb
    - claims.ipynb
    - api.ipynb
"""


def chapter(*sources, parameters="n = 1\nout_dir = 'out'"):
    cells = [nbformat.v4.new_markdown_cell("# A dummy chapter")]
    cells.append(nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def project(tmp_path):
    (tmp_path / "_quarto.yml").write_text(QUARTO)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    preface = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Preface\n\nHello.")])
    nbformat.write(preface, nbs / "index.ipynb")
    nbformat.write(chapter(
        "#| export\nfrom alignrepro.core import write_claims\nassert n == 3, n",
        "#| hide\nsecret = 'HIDDEN-CELL'",
        "write_claims([dict(study='dummy', claim_id='d1', claim='n is three', paper='3', measured=str(n), "
        "statistic='exact', verdict='reproduced')], out_dir)"), nbs / "01_dummy.ipynb")
    nbformat.write(chapter("raise ValueError('deliberate failure in the broken chapter')"), nbs / "02_broken.ipynb")
    return tmp_path


def alignrepro(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-c", "import sys; from alignrepro.cli import main; sys.exit(main())", *args],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_book_runs_chapters_and_nbconvert_index_links_every_page_in_order(project):
    out = project / "out"
    proc = alignrepro("book", "--out", str(out), "--renderer", "nbconvert", "-p", "n", "3", cwd=project)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the broken chapter fails the build
    assert "deliberate failure in the broken chapter" in proc.stdout
    assert "1 failed, 1 executed" in proc.stdout
    index = (out / "_book" / "index.html").read_text()
    links = re.findall(r'href="([^"]+)"', index)
    assert links == ["preface.html", "01_dummy.html", "02_broken.html", "claims.html", "api.html"]
    assert all((out / "_book" / link).exists() for link in links)
    dummy = (out / "_book" / "01_dummy.html").read_text()
    assert "#| export" not in dummy and "HIDDEN-CELL" not in dummy and "write_claims" in dummy
    assert pd.read_csv(out / "01_dummy" / "claims.csv").measured.tolist() == [3]
    assert "n is three" in (out / "_book" / "claims.html").read_text()


def test_book_subset_succeeds_and_parameters_reach_the_chapter(project):
    out = project / "out"
    proc = alignrepro("book", "--out", str(out), "--renderer", "nbconvert", "--chapters", "01_dummy",
                      "-p", "n", "3", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed, 1 executed" in proc.stdout and not (out / "02_broken.ipynb").exists()
    wrong = alignrepro("book", "--out", str(out), "--renderer", "nbconvert", "--chapters", "01_dummy",
                       "-p", "n", "4", cwd=project)
    assert wrong.returncode == 1 and "AssertionError" in wrong.stdout


def test_runs_command_lists_stored_runs(tmp_path):
    store, root = RunStore(tmp_path / "runs"), str(tmp_path / "runs")
    for seed in range(3):
        store.get_or_run({"study": "demo", "seed": seed, "scale": "toy", "sizes": ["xs", "s"] * 40},
                         lambda: pd.DataFrame({"x": [1]}))
    proc = alignrepro("runs", "--root", root, cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[0].split() == ["study", "run_id", "finished", "seed"], proc.stdout
    assert len(lines) == 5 and max(map(len, lines)) <= 120 and lines[-1].startswith("3 runs (demo 3); ")
    one = alignrepro("runs", "--root", root, "-p", "seed", "1", "--json", cwd=tmp_path).stdout.splitlines()
    assert len(one) == 1 and json.loads(one[0])["params"]["sizes"] == ["xs", "s"] * 40
    empty = alignrepro("runs", "--root", str(tmp_path / "none"), cwd=tmp_path)
    assert "no runs stored" in empty.stdout


def test_readme_is_generated_from_index_and_opens_with_two_commands():
    root = Path(__file__).resolve().parent.parent
    proc = alignrepro("readme", "--check", cwd=root)
    assert proc.returncode == 0, proc.stderr
    commands = re.findall(r"```sh\n(.+?)\n```", (root / "README.md").read_text())[:2]
    assert commands[0].endswith("alignrepro book") and commands[1].endswith("python -m pytest")
    assert (root / ".ci" / "run").read_text().count(commands[1]) == 1
