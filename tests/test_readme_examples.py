"""The examples of the documentation's "Stores and models elsewhere" (docs/guides/calculator.md)
and of the README's "The other jobs, one example each" run as written, on the CPU, in a
fresh directory that holds only the bundled data: each section's commands, then its Python
blocks, the guide's first (it builds the store and trains the model the README's reuse)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (page, section): run in this order, in one directory
SECTIONS = [("docs/guides/calculator.md", "## Stores and models elsewhere"),
            ("README.md", "## The other jobs, one example each")]


def blocks(page: str, heading: str) -> list[tuple[str, str]]:
    """(language, text) of each code block of the section (up to the next heading of its
    level, or the page's end), in order."""
    text = (ROOT / page).read_text()
    start = text.index(heading)
    end = text.find("\n" + heading.split()[0] + " ", start + len(heading))
    section = text[start:end if end >= 0 else len(text)]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def commands(script: str) -> list[list[str]]:
    """The shell commands of a block (continuations joined, ``&&`` lists split) as argument
    lists; ``pip`` lines are the install step, which this environment has done."""
    lines = script.replace("\\\n", " ").splitlines()
    argvs = []
    for line in lines:
        if not line.strip() or line.startswith("pip "):
            continue
        argv = shlex.split(line, comments=True)
        while "&&" in argv:
            i = argv.index("&&")
            argvs.append(argv[:i])
            argv = argv[i + 1:]
        argvs.append(argv)
    return argvs


def test_the_examples_run(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    found = {}
    for page, heading in SECTIONS:
        counts = found.setdefault(page, {"bash": 0, "python": 0})
        for language, text in blocks(page, heading):
            counts[language] += 1
            if language == "bash":
                for argv in commands(text):
                    assert argv[0] == "orbitgraph", argv
                    run = subprocess.run([sys.executable, "-m", "orbitgraph.train.cli",
                                          *argv[1:]], cwd=tmp_path, env=env,
                                         capture_output=True, text=True)
                    assert run.returncode == 0, f"{page}: {shlex.join(argv)}\n{run.stderr[-2000:]}"
            else:
                run = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, env=env,
                                     capture_output=True, text=True)
                assert run.returncode == 0, f"{page}:\n{text}\n{run.stderr[-3000:]}"
    assert found == {"docs/guides/calculator.md": {"bash": 2, "python": 3},
                     "README.md": {"bash": 2, "python": 1}}
    assert (tmp_path / "runs" / "emt-test.xyz").stat().st_size > 0
