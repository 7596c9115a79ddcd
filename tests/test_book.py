"""The `alignrepro` command on a tiny dummy book: papermill runs, the nbconvert fallback (sidebar, clean outputs,
folded setup cells), failures, runs listing, the API page's coverage."""
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from alignrepro.book import _library_modules
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


NOISE = """import sys, warnings
from tqdm.auto import tqdm
warnings.warn('deliberate')  # the texts looked for are split, so that the page's code does not show them
print('Failed to' + ' load a deliberate kernel', file=sys.stderr)
for _ in tqdm(range(3), desc='progress-on-' + 'stderr'):
    pass
print('step' + ' 1\\rstep 2\\rSTDOUT-KEPT')"""


def make_project(root: Path) -> Path:
    (root / "_quarto.yml").write_text(QUARTO)
    nbs = root / "nbs"
    nbs.mkdir()
    preface = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Preface\n\nHello.")])
    nbformat.write(preface, nbs / "index.ipynb")
    nbformat.write(chapter(
        "#| code-fold: true\n#| export\nfrom alignrepro.core import write_claims  # SETUP-CELL\nassert n == 3, n",
        "#| hide\nsecret = 'HIDDEN-CELL'", NOISE,
        "from alignrepro.stats import claim_row, mean_effect\n"
        "write_claims([claim_row('dummy', 'd1', 'n is three', '3', 'toy', 'seeds', mean_effect([n - 3] * 5, 'equivalent', "
        "margin=0.5), measured=str(n))], out_dir)"), nbs / "01_dummy.ipynb")
    nbformat.write(chapter("raise ValueError('deliberate failure in the broken chapter')"), nbs / "02_broken.ipynb")
    return root


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    "The dummy book built once with the nbconvert fallback: (the command's result, its output folder)."
    root = make_project(tmp_path_factory.mktemp("book"))
    out = root / "out"
    return alignrepro("book", "--out", str(out), "--renderer", "nbconvert", "-p", "n", "3", cwd=root), out


PAGES = ["index.html", "01_dummy.html", "02_broken.html", "claims.html", "api.html"]


def body(path: Path) -> str:
    "A rendered page from <body> on (its <head> holds the theme's CSS, whose selectors name stderr)."
    text = path.read_text()
    return text[text.index("<body"):]


def sidebar(path: Path) -> tuple[list[str], list[str]]:
    "The links of a page's sidebar in order, and those marked as the current page."
    nav = re.search(r"<nav[^>]*book-nav.*?</nav>", body(path), re.S).group(0)
    marked = "".join(re.findall(r'<a[^>]*aria-current="page"[^>]*>', nav))
    return re.findall(r'href="([^"]+)"', nav), re.findall(r'href="([^"]+)"', marked)


def alignrepro(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-c", "import sys; from alignrepro.cli import main; sys.exit(main())", *args],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_book_runs_chapters_and_reports_the_broken_one(built):
    proc, out = built
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the broken chapter fails the build
    assert "deliberate failure in the broken chapter" in proc.stdout
    assert "1 failed, 1 executed" in proc.stdout
    assert pd.read_csv(out / "01_dummy" / "claims.csv").note.tolist() == ["3; zero-width interval: all values equal"]
    assert "n is three" in body(out / "_book" / "claims.html") and "data:image/png;base64," in body(out / "_book" / "claims.html")
    assert "deliberate failure in the broken chapter" in body(out / "_book" / "02_broken.html")  # errors stay


def test_book_reports_what_each_chapter_cost(built):
    proc, _ = built
    line = next(l for l in proc.stdout.splitlines() if l.startswith("01_dummy.ipynb") and "executed" in l)
    busy, peak = re.search(r"CPU/wall\s+([\d.]+)\s+peak\s+(\d+) MiB", line).groups()
    assert float(busy) > 0.05, line  # the kernel's CPU time was counted
    assert int(peak) > 50, line  # a Python kernel with pandas loaded is larger than 50 MiB
    assert "2 at a time" in proc.stdout


def test_every_nbconvert_page_links_every_page_in_book_order(built):
    _, out = built
    site = out / "_book"
    assert sorted(p.name for p in site.glob("*.html")) == sorted(PAGES)
    for page in PAGES:
        assert sidebar(site / page) == (PAGES, [page]), page
        assert "jp-Notebook" in body(site / page)  # every page in the chapters' theme


def test_pages_show_no_stderr_warnings_or_progress_bars_but_executed_notebooks_keep_them(built):
    _, out = built
    for page in PAGES:
        text = body(out / "_book" / page)
        for junk in ("Warning", "Failed to load", "progress-on-stderr", "it/s]", "step 1"):
            assert junk not in text, (page, junk)
        assert text.count("vnd.jupyter.stderr") == (page == "02_broken.html"), page  # only the broken one's error
    assert "STDOUT-KEPT" in body(out / "_book" / "01_dummy.html")  # stdout as a terminal shows it
    executed = nbformat.read(out / "01_dummy.ipynb", as_version=4)
    stderr = "".join(o.text for c in executed.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream" and o.name == "stderr")
    assert "UserWarning: deliberate" in stderr and "Failed to load" in stderr and "progress-on-stderr" in stderr


def test_setup_cells_are_folded_and_nbdev_directives_stripped(built):
    _, out = built
    dummy = body(out / "_book" / "01_dummy.html")
    folded = re.findall(r'<details class="book-fold"><summary>Code</summary>(.*?)</details>', dummy, re.S)
    assert len(folded) == 1 and "SETUP-CELL" in folded[0] and "write_claims" in folded[0]
    assert "#|" not in dummy and "HIDDEN-CELL" not in dummy
    page = nbformat.read(out / "_pages" / "01_dummy.ipynb", as_version=4)  # what Quarto renders keeps the option
    assert any(c.source.startswith("#| code-fold: true\nfrom alignrepro") for c in page.cells)
    assert not any("#| export" in c.source or "HIDDEN-CELL" in c.source for c in page.cells)


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


def test_api_page_covers_every_library_module_titled_in_one_line():
    root = Path(__file__).resolve().parent.parent
    modules = _library_modules(root)
    package = {f"alignrepro.{m.name}" for m in pkgutil.iter_modules([str(root / "alignrepro")]) if not m.name.startswith("_")}
    assert set(modules) == package and {"alignrepro.study", "alignrepro.grid"} <= package
    for path in sorted((root / "nbs").glob("*.ipynb")):  # nbdev keeps a title quote's first line only
        cells = nbformat.read(path, as_version=4).cells
        if any(c.cell_type == "code" and c.source.startswith("#| default_exp") for c in cells):
            title = next(c.source for c in cells if c.cell_type == "markdown").splitlines()
            quote = [i for i, line in enumerate(title) if line.startswith(">")]
            after = title[quote[0] + 1:quote[0] + 2] if quote else []
            assert len(quote) == 1 and after in ([], [""]), f"{path.name}: make its title quote one line"


def test_the_costliest_chapter_starts_last(project):
    "With one page at a time the chapter that declares the higher cold cost runs last; the book keeps its order."
    dummy = project / "nbs" / "01_dummy.ipynb"  # first in the book's order
    nb = nbformat.read(dummy, as_version=4)
    nb.metadata["alignrepro"] = {"cost_s": 100}
    nbformat.write(nb, dummy)
    proc = alignrepro("book", "--out", str(project / "out"), "--renderer", "nbconvert", "--jobs", "1", "-p", "n", "3",
                      cwd=project)
    finished = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("[") and " in " in line]
    assert finished == ["02_broken.ipynb", "01_dummy.ipynb"], proc.stdout
