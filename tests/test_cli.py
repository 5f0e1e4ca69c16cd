"""The command line: the README's commands, pipelines.yaml, and one-line user errors."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "train.cli"]


def run(args, cwd=ROOT, timeout=900):
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def readme_commands() -> list[str]:
    """The two commands of the README's opening code block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    assert "orbitgraph run pipelines.yaml" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def _pipeline_copy(tmp_path: Path, mutate=None) -> Path:
    data = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    data["workdir"] = str(tmp_path / "runs")
    data["sources"]["sample"]["path"] = str(ROOT / data["sources"]["sample"]["path"])
    data["cluster"] = {"kind": "synchronous"}
    if mutate:
        mutate(data)
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_readme_first_command_runs_the_default_pipeline(tmp_path):
    """`orbitgraph run pipelines.yaml` on the bundled sample: one store, two experiments."""
    path = _pipeline_copy(tmp_path)
    first = run(["run", path])
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("experiment ") >= 2
    stores = list((tmp_path / "runs" / "stores").iterdir())
    assert len(stores) == 1, "two experiments share one store"
    assert first.stdout.count("already complete") == 1, "the store is built once, then reused"
    for exp in ("mace-small", "invariant-small"):
        out = tmp_path / "runs" / "experiments" / exp
        for name in ("best.pt", "checkpoint.pt", "metrics.csv", "metrics_test.json",
                     "loss_curves.png", "parity.png"):
            assert (out / name).is_file(), f"{exp}/{name}"
    again = run(["run", path])
    assert again.returncode == 0
    assert again.stdout.count("nothing to do") == 2
    info = run(["info", stores[0]])
    assert info.returncode == 0 and "k=16" in info.stdout
    verify = run(["verify", stores[0]])
    assert verify.returncode == 0 and verify.stdout.startswith("OK")


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"),
    ("bad_yaml", "not valid YAML"),
    ("unknown_preset", "unknown model preset 'macee'"),
    ("unknown_key", "unknown key 'stors'"),
    ("bad_store_ref", "experiments.mace-small.store: 'nope' is not a declared store"),
    ("bad_graph", "stores.sample-k16.graph: ties must be"),
])
def test_pipeline_errors_are_one_line(tmp_path, case, needle):
    if case == "missing":
        path = tmp_path / "absent.yaml"
    elif case == "bad_yaml":
        path = tmp_path / "bad.yaml"
        path.write_text("stores: [unclosed\n  - x: {")
    else:
        def mutate(d):
            if case == "unknown_preset":
                d["experiments"]["mace-small"]["model"] = "macee"
            elif case == "unknown_key":
                d["stors"] = {}
            elif case == "bad_store_ref":
                d["experiments"]["mace-small"]["store"] = "nope"
            elif case == "bad_graph":
                d["stores"]["sample-k16"]["graph"]["ties"] = "maybe"
        path = _pipeline_copy(tmp_path, mutate)
    proc = run(["run", path])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orbitgraph: error:"), proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_store_with_other_graph_parameters_is_a_clear_error(tmp_path):
    def mutate(d):
        d["stores"]["sample-k16"]["graph"]["k"] = 8
        d["experiments"]["mace-small"]["model"]["k"] = 12
        d["experiments"] = {"mace-small": d["experiments"]["mace-small"]}
    path = _pipeline_copy(tmp_path, mutate)
    proc = run(["run", path])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs k=12" in lines[0] and "built with k=8" in lines[0], proc.stderr


def test_cli_user_errors(tmp_path):
    proc = run(["train", "--store", tmp_path / "none", "--model", "mace", "--out", tmp_path / "o"])
    assert proc.returncode == 2 and "no such store" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run(["evaluate", tmp_path / "none.pt", "--store", tmp_path])
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr
    proc = run(["build", "--source", tmp_path / "none.json", "--out", tmp_path / "s"])
    assert proc.returncode == 2 and "no such file" in proc.stderr
    src = tmp_path / "sample.json.gz"
    shutil.copy(ROOT / "tests" / "data" / "mptrj_small.json.gz", src)
    ok = run(["build", "--source", src, "--out", tmp_path / "s", "--scheduler", "synchronous",
              "--frames-per-shard", "50", "--backend", "arrow"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == str(tmp_path / "s")
    proc = run(["train", "--store", tmp_path / "s", "--model", "macee", "--out", tmp_path / "o"])
    assert proc.returncode == 2 and "unknown model preset 'macee'" in proc.stderr
    other = run(["build", "--source", src, "--out", tmp_path / "s", "--k", "8",
                 "--scheduler", "synchronous"])
    assert other.returncode == 2 and "already holds another store" in other.stderr
