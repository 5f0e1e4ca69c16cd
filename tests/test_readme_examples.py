"""The README's "Stores and models elsewhere" examples run as written, on the CPU, in a
fresh directory that holds only the bundled data: its commands, then its Python blocks."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Stores and models elsewhere"


def blocks() -> list[tuple[str, str]]:
    """(language, text) of each code block of the section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def commands(script: str) -> list[list[str]]:
    """The shell lines of a block (continuations joined) as argument lists; ``pip`` lines
    are the install step, which this environment has done."""
    lines = script.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip() and not line.startswith("pip ")]


def test_the_examples_run(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    found = {"bash": 0, "python": 0}
    for language, text in blocks():
        found[language] += 1
        if language == "bash":
            for argv in commands(text):
                assert argv[0] == "orbitgraph", argv
                run = subprocess.run([sys.executable, "-m", "orbitgraph.train.cli", *argv[1:]],
                                     cwd=tmp_path, env=env, capture_output=True, text=True)
                assert run.returncode == 0, f"{shlex.join(argv)}\n{run.stderr[-2000:]}"
        else:
            run = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, env=env,
                                 capture_output=True, text=True)
            assert run.returncode == 0, f"{text}\n{run.stderr[-3000:]}"
    assert found == {"bash": 2, "python": 3}
    assert (tmp_path / "runs" / "emt-test.xyz").stat().st_size > 0
