"""The notebooks: each passes nbdev_test, and nbdev_export / nbdev_clean leave a clean checkout unchanged."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_passes_nbdev_test(notebook):
    proc = subprocess.run(["nbdev_test", "--path", f"nbs/{notebook}", "--do_print"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_export_and_clean_leave_the_tree_unchanged(tmp_path):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    copy = tmp_path / "repo"
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    git = lambda *a: subprocess.run(["git", *a], cwd=copy, capture_output=True, text=True, check=True).stdout
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=ci", "-c", "user.email=ci@example.org", "commit", "-qm", "snapshot")
    for command in (["nbdev_export"], ["nbdev_clean"]):
        subprocess.run(command, cwd=copy, check=True, capture_output=True, timeout=300)
    assert git("status", "--porcelain") == "", "nbdev_export/nbdev_clean changed: " + git("status", "--porcelain")
