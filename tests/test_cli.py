"""The `alignrepro` command's small conveniences, as a user types them: --version and the merged claims of a book."""
import subprocess
import sys
from pathlib import Path

import pandas as pd

import alignrepro
from alignrepro.core import CLAIM_COLUMNS


def alignrepro_command(*args, cwd):
    command = [str(Path(sys.executable).with_name("alignrepro")), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_version_is_the_package_version(tmp_path):
    proc = alignrepro_command("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"alignrepro {alignrepro.__version__}"


def test_claims_merges_every_chapter_of_a_built_book(tmp_path):
    for study, verdict in [("alpha", "reproduced"), ("beta", "inconclusive")]:
        (tmp_path / "book" / study).mkdir(parents=True)
        row = {column: f"{study} {column}" for column in CLAIM_COLUMNS} | {"study": study, "verdict": verdict}
        pd.DataFrame([row]).to_csv(tmp_path / "book" / study / "claims.csv", index=False)
    proc = alignrepro_command("claims", "book", "--csv", "merged.csv", cwd=tmp_path)
    assert proc.returncode == 0 and "reproduced" in proc.stdout and "inconclusive" in proc.stdout, proc.stderr
    assert list(pd.read_csv(tmp_path / "merged.csv").study) == ["alpha", "beta"]
    missing = alignrepro_command("claims", "nowhere", cwd=tmp_path)
    assert missing.returncode == 1 and "build the book first" in missing.stderr


def test_every_chapter_has_a_grid_of_stored_replicates():
    "`alignrepro grid STUDY` hands each chapter's cells to `run_grid`: one per seed (and experiment), fn importable."
    import importlib
    import pickle

    from alignrepro.cli import GRID_STUDIES
    from test_chapters import CHAPTERS

    tiny = {"elasticity": "03_elasticity", "peft": "04_peft_grid", "repe": "05_repe", "honesty": "06_honesty",
            "token_shift": "07_token_shift"}
    assert set(GRID_STUDIES) == set(tiny)
    for study, chapter in tiny.items():
        cells, fn = importlib.import_module(GRID_STUDIES[study]).grid_plan(**CHAPTERS[chapter].tiny)
        assert cells and {cell["seed"] for cell in cells} == set(CHAPTERS[chapter].tiny["seeds"]), study
        assert pickle.loads(pickle.dumps(fn)) is fn  # a Slurm job can import it


def test_grid_command_runs_a_chapters_replicates_and_the_chapter_reuses_them(tmp_path):
    from alignrepro.core import RunStore
    from alignrepro.repe import grid_plan
    from test_chapters import CHAPTERS

    tiny = {**CHAPTERS["05_repe"].tiny, "seeds": [0]}
    arguments = [text for name, value in tiny.items() for text in ("-p", name, str(value))]
    proc = subprocess.run([str(Path(sys.executable).with_name("alignrepro")), "grid", "repe", *arguments],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "ALIGNREPRO_RUNS": str(tmp_path / "runs")})
    assert proc.returncode == 0 and "1 cells" in proc.stdout, proc.stderr[-2000:]
    cells, fn = grid_plan(**tiny)
    assert len(RunStore(tmp_path / "runs").runs("repe")) == 1 and len(cells) == 1
