"""Resume everywhere: a chapter killed with SIGKILL mid-way and run again writes the claims of an uninterrupted run,
bit for bit, recomputes only what was not stored, and leaves no stale temporaries."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_chapters import CHAPTERS as CONTRACTS

NBS = Path(__file__).resolve().parent.parent / "nbs"
CHAPTERS = {  # chapter -> (its study folder in the run store, tiny parameters, results stored before the kill)
    "06_honesty": ("honesty", CONTRACTS["06_honesty"].tiny, 3),
    "04_peft_grid": ("peft_grid", CONTRACTS["04_peft_grid"].tiny, 3),
}


def papermill(chapter: str, parameters: dict, runs: Path, out: Path) -> subprocess.Popen:
    "The chapter run by the papermill command in its own process group, with its own run store."
    out.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).with_name("papermill")), str(NBS / f"{chapter}.ipynb"), str(out / "executed.ipynb"),
               "--cwd", str(NBS), "-k", "python3", "--no-progress-bar", "-y",
               yaml.safe_dump({**parameters, "out_dir": str(out)})]
    return subprocess.Popen(command, env={**os.environ, "ALIGNREPRO_RUNS": str(runs)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=1200)
    assert process.returncode == 0, stderr[-3000:]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_killed_chapter_resumes_to_the_uninterrupted_claims(chapter, tmp_path):
    study, parameters, kill_after = CHAPTERS[chapter]
    finished(papermill(chapter, parameters, tmp_path / "runs_ref", tmp_path / "ref"))
    runs = tmp_path / "runs"
    process = papermill(chapter, parameters, runs, tmp_path / "killed")
    deadline = time.time() + 900
    while len(list(runs.glob(f"{study}/*/result.parquet"))) < kill_after and process.poll() is None:
        assert time.time() < deadline, "the chapter stored too few results in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stored = {path: path.stat().st_mtime_ns for path in runs.rglob("result.parquet")}
    assert kill_after <= len(stored) and not (tmp_path / "killed" / "claims.csv").exists(), "killed too late"
    finished(papermill(chapter, parameters, runs, tmp_path / "resumed"))
    assert (tmp_path / "resumed" / "claims.csv").read_bytes() == (tmp_path / "ref" / "claims.csv").read_bytes()
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in stored.items()), "a stored run was recomputed"
    assert not list(runs.rglob(".tmp.*")), "stale temporaries were left behind"
