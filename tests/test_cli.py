"""The command line: the README's commands (and docs/index.md's copy), pipelines.yaml, and
one-line user errors."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "orbitgraph.train.cli"]


def run(args, cwd=ROOT, timeout=900):
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def readme_commands(page: str = "README.md") -> list[str]:
    """The two commands of a page's opening code block (the README's, or the
    documentation's front page, docs/index.md)."""
    text = (ROOT / page).read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    assert "orbitgraph run pipelines.yaml" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), ".ci/run must run the README's test command verbatim"
    assert readme_commands("docs/index.md") == commands, (
        "docs/index.md must open with the README's two commands")


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


def printed_results(stdout: str) -> dict[str, dict[str, tuple[float, float]]]:
    """{experiment: {quantity: (model MAE, baseline MAE)}} from each experiment's printed
    table of test errors beside the baselines."""
    results = {}
    for block in re.split(r"^experiment (?=\S+: done)", stdout, flags=re.M)[1:]:
        name = block.split(":", 1)[0]
        rows = dict(re.findall(r"^(energy/atom|forces|stress)\s+([\d.]+\s+[\d.]+)", block,
                               re.M))
        results[name] = {k: tuple(float(x) for x in v.split()) for k, v in rows.items()}
    return results


@pytest.mark.slow
def test_readme_first_command_runs_the_default_pipeline(tmp_path):
    """`orbitgraph run pipelines.yaml` on the bundled sample: one store, two experiments
    that learn visibly, a comparison of the two; a second run does nothing."""
    path = _pipeline_copy(tmp_path)
    first = run(["run", path])
    assert first.returncode == 0, first.stderr[-3000:]
    stores = list((tmp_path / "runs" / "stores").iterdir())
    assert len(stores) == 1, "two experiments share one store"
    # progress (the stores' build summaries among it) on stderr, results on stdout
    assert first.stderr.count("already complete") == 1, "the store is built once, then reused"
    experiments = ("mace-small", "invariant-small")
    results = printed_results(first.stdout)
    assert sorted(results) == sorted(experiments), first.stdout[-3000:]
    for exp in experiments:
        # learned visibly: at most half the baselines' errors on the test split (fixed seeds)
        model, baseline = results[exp]["forces"]
        assert model <= 0.5 * baseline, f"{exp}: force MAE {model} vs zero force {baseline}"
        model, baseline = results[exp]["energy/atom"]
        assert model <= 0.5 * baseline, f"{exp}: energy MAE {model} vs E0 only {baseline}"
        out = tmp_path / "runs" / "experiments" / exp
        for name in ("best.pt", "checkpoint.pt", "metrics.csv", "metrics_test.json",
                     "parity_test.npz", "loss_curves.png", "parity.png"):
            assert (out / name).is_file(), f"{exp}/{name}"
        metrics = json.loads((out / "metrics_test.json").read_text())
        assert metrics["frames_with_untrained_elements"] == 0, "test elements all trained"
        assert metrics["frames"] > 100 and metrics["steps"] >= 100
    assert "absent from the training split" not in first.stdout + first.stderr
    table = first.stdout[first.stdout.index("experiments on store sample-k16"):]
    for name in (*experiments, "baselines"):
        assert re.search(rf"^{name}[\s:]", table, re.M), table
    figure = tmp_path / "runs" / "experiments" / "comparison-sample-k16.png"
    assert figure.is_file() and figure.stat().st_size > 20_000
    stamp = figure.stat().st_mtime_ns
    again = run(["run", path])
    assert again.returncode == 0
    assert again.stdout.count("nothing to do") == 2
    assert "experiments on store sample-k16" in again.stdout, "the comparison is printed again"
    assert figure.stat().st_mtime_ns == stamp, "nothing was redone"
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
    proc = run(["run", path, "--quiet"])  # the build's progress off: stderr holds the error
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "needs k=12" in lines[0] and "built with k=8" in lines[0], proc.stderr


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


def test_quiet_and_verbose_decide_what_reaches_stderr(tmp_path, capsys):
    """Progress (INFO) on stderr, ``--verbose`` adds debug lines, ``--quiet`` (before or
    after the command) keeps warnings only (here: the sample's empty test split); the result,
    the build summary and the store's path, on stdout each time; no progress bar off a
    terminal."""
    from orbitgraph.preprocess.store import SplitParams, empty_splits, open_store
    from orbitgraph.train.cli import main

    src = ROOT / "tests" / "data" / "mptrj_small.json.gz"
    build = ["build", "--source", str(src), "--frames-per-shard", "50"]
    said = {}
    for name, argv in (("default", build), ("verbose", [*build, "--verbose"]),
                       ("quiet", ["--quiet", *build]), ("quiet-after", [*build, "--quiet"])):
        assert main([*argv, "--out", str(tmp_path / name)]) == 0
        said[name] = capsys.readouterr()
        assert said[name].out.strip().splitlines()[-1] == str(tmp_path / name)
        assert "building:" not in said[name].err, "no tqdm bar when stderr is not a terminal"
    # the small source is built without a cluster, which the build says at INFO
    assert "without a cluster" in said["default"].err
    assert "shard-000000 committed" not in said["default"].err
    assert "without a cluster" in said["verbose"].err
    assert "shard-000000 committed" in said["verbose"].err
    materials = open_store(tmp_path / "quiet").index.column("material_id").to_pylist()
    for name in ("quiet", "quiet-after"):  # the one warning: the sample's test split is empty
        assert said[name].err.splitlines() == [
            f"warning: {tmp_path / name}: {empty_splits(materials, SplitParams())['test']} "
            "(the split is set by store.split.* of orbitgraph build, stores.NAME.split in "
            "pipelines.yaml)"], said[name].err


@pytest.mark.parametrize("raised, status, line", [
    (KeyboardInterrupt(), 130, "orbitgraph: interrupted; what was committed is kept"),
    (PermissionError(13, "Permission denied", "/x/shards"), 2,
     "orbitgraph: error: [Errno 13] Permission denied: '/x/shards'"),
    ("process died", 1, "orbitgraph: error: /x: a build process died"),
], ids=["ctrl-c", "permission", "dead-process"])
def test_an_interrupted_or_failed_build_is_one_line(tmp_path, capsys, monkeypatch, raised,
                                                     status, line):
    """Ctrl-C (KeyboardInterrupt) ends a command with one line saying the same command
    resumes, status 130 (128 + SIGINT); a file that cannot be written is one line, status 2;
    a build process that died, one line, status 1. No traceback."""
    import orbitgraph.preprocess.build as build_module
    from orbitgraph.preprocess.cluster import BuildProcessError
    from orbitgraph.train.cli import main

    if raised == "process died":
        raised = BuildProcessError("/x: a build process died (killed, or out of memory)")

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(build_module, "build_store", failing)
    src = ROOT / "tests" / "data" / "mptrj_small.json.gz"
    assert main(["build", "--source", str(src), "--out", str(tmp_path / "s")]) == status
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(line) and "Traceback" not in err


def test_a_closed_stdout_ends_the_program_quietly(tmp_path):
    """`orbitgraph ... | head -1`: stdout's reader may leave before the program writes (here
    `true`, which reads nothing); no BrokenPipeError traceback, status 1."""
    src = ROOT / "tests" / "data" / "mptrj_small.json.gz"
    proc = subprocess.run(
        f"{sys.executable} -m orbitgraph.train.cli build --source {src} --out {tmp_path / 's'} "
        "--scheduler synchronous --quiet | true; echo status ${PIPESTATUS[0]} >&2",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "status 1"
    from orbitgraph.preprocess.store import open_store
    assert open_store(tmp_path / "s").manifest.counts["frames"] > 0


# ------------------------------------------------------------- user errors and defects

@pytest.mark.parametrize("raised", [
    ValueError("operands could not be broadcast together"), KeyError("n_atoms"),
    ZeroDivisionError("division by zero"), OSError("a socket closed"),
], ids=["ValueError", "KeyError", "ZeroDivisionError", "OSError-without-file"])
def test_an_internal_error_keeps_its_traceback(tmp_path, capsys, monkeypatch, raised):
    """A defect planted in what ``orbitgraph info`` calls is not the user's mistake: main()
    lets it propagate (with its traceback) instead of printing one line with status 2."""
    import orbitgraph.preprocess.commands as commands
    from orbitgraph.train.cli import main

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(commands, "info", failing)
    with pytest.raises(type(raised)) as err:
        main(["info", str(tmp_path)])
    assert err.value is raised
    assert "orbitgraph: error:" not in capsys.readouterr().err


def test_the_program_prints_an_internal_errors_traceback(tmp_path):
    """The ``orbitgraph`` program itself: a planted KeyError in a command ends it with
    Python's traceback and status 1, not with one line and status 2."""
    code = ("import sys\n"
            "import orbitgraph.preprocess.commands as commands\n"
            "def info(path):\n"
            "    return {}['n_atoms']\n"
            "commands.info = info\n"
            "from orbitgraph.train.cli import run\n"
            f"sys.argv = ['orbitgraph', 'info', {str(tmp_path)!r}]\n"
            "run()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "KeyError: 'n_atoms'"
    assert "orbitgraph: error:" not in proc.stderr


def _other_runs_checkpoint(tmp_path: Path) -> list[str]:
    """``train`` into a run directory whose checkpoint is of another store."""
    from helpers import write_small_mptrj
    from orbitgraph.model.checkpoint import write_checkpoint
    from orbitgraph.preprocess.build import build_store
    from orbitgraph.preprocess.cluster import ClusterConfig

    store = tmp_path / "store"
    build_store(write_small_mptrj(tmp_path / "small.json", frames=8), store,
                cluster=ClusterConfig(kind="synchronous"), progress=False)
    write_checkpoint({"store_id": "0123456789abcdef"}, tmp_path / "run" / "checkpoint.pt")
    return ["train", "--store", str(store), "--model", "invariant", "--out",
            str(tmp_path / "run"), "--max-steps", "1"]


@pytest.mark.parametrize("kind, needle", [
    ("config", "store.graph.k: expected an integer >= 1, got 0"),
    ("input", "frames.txt: cannot tell the format from the name"),
    ("file", "absent.yaml: no such training config file"),
    ("store", "none: no such store"),
    ("not-a-store", "frames.txt: a file, not a store"),
    ("resume", "holds a run on store 0123456789abcdef"),
    ("model-file", "bare.pt: not an orbitgraph model file (no 'model_config'"),
])
def test_a_user_error_of_each_kind_is_one_line(tmp_path, capsys, kind, needle):
    """A refused setting, unusable input, a missing file, a missing store, a source given as
    a store, a run directory that cannot be continued and a bare state_dict given as a model
    file: each ends the command with one line, ``orbitgraph: error: ...``, status 2, and no
    traceback."""
    import torch

    from orbitgraph.train.cli import main

    source = tmp_path / "frames.txt"
    source.write_text("not a source\n")
    train = ["train", "--model", "invariant", "--out", str(tmp_path / "run")]
    argv = {
        "config": ["build", "--source", str(source), "--out", str(tmp_path / "s"), "--k", "0"],
        "input": ["build", "--source", str(source), "--out", str(tmp_path / "s")],
        "file": [*train, "--store", str(tmp_path), "--config", str(tmp_path / "absent.yaml")],
        "store": ["info", str(tmp_path / "none")],
        "not-a-store": ["info", str(source)],
        "model-file": ["evaluate", str(tmp_path / "bare.pt"), "--store", str(tmp_path)],
    }.get(kind) or _other_runs_checkpoint(tmp_path)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "bare.pt")
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("orbitgraph: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert err.strip().splitlines()[-1] == lines[0] and "Traceback" not in err
