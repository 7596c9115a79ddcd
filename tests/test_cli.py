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
