"""Experiments of pipelines.yaml over several stores (train/pipelines.py): trained through
the run file's mixing path, each store built once, an id that follows the stores and their
weights, per-dataset reports, one-line mistakes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import emt_materials, shift_energies, write_mptrj
from orbitgraph.train.cli import main
from orbitgraph.train.pipelines import PipelineError, load_pipelines

TINY = {"preset": "invariant", "hidden": 8, "species_dim": 4, "final_mlp": [8], "layers": 1,
        "num_radial": 4, "atomic_energies": "least_squares"}
TRAIN = {"max_steps": 2, "lr": 3e-3, "warmup_steps": 0, "loader": {"max_atoms": 48},
         "log_every": 10_000, "checkpoint_every": 10_000, "plots": False,
         "tensorboard": False}
MIX = [{"store": "pbe", "weight": 0.6}, {"store": "scan", "weight": 0.4, "name": "r2scan"}]


def write_pipeline(root: Path, experiments: dict, scan_graph: dict | None = None) -> Path:
    """pipelines.yaml in ``root`` over two tiny generated sources (24 and 20 frames of Cu,
    Al and CuAl; the second on another energy reference), stores ``pbe`` and ``scan``
    (validation and test 0.3 each), and ``experiments``."""
    if not (root / "pbe.json").is_file():
        write_mptrj(root / "pbe.json", emt_materials(24, 1))
        shift_energies(write_mptrj(root / "scan.json", emt_materials(20, 2)),
                       {29: 0.3, 13: -0.2})
    split = {"val_fraction": 0.3, "test_fraction": 0.3, "seed": 0}
    path = root / "pipelines.yaml"
    path.write_text(yaml.safe_dump({
        "workdir": "runs", "cluster": {"kind": "synchronous"},
        "sources": {"pbe": {"path": "pbe.json", "format": "mptrj-json"},
                    "scan": {"path": "scan.json", "format": "mptrj-json"}},
        "stores": {"pbe": {"source": "pbe", "frames_per_shard": 8, "split": split},
                   "scan": {"source": "scan", "frames_per_shard": 8, "split": split,
                            **({"graph": scan_graph} if scan_graph else {})}},
        "experiments": experiments}))
    return path


def test_an_experiment_over_two_stores_trains_reports_each_and_follows_its_weights(
        tmp_path, capsys):
    path = write_pipeline(tmp_path, {
        "mix": {"stores": MIX, "model": TINY, "train": TRAIN, "threads": 1},
        "solo": {"store": "pbe", "model": TINY, "train": TRAIN, "threads": 1}})
    assert main(["run", str(path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "experiment mix: done (2 steps" in printed, printed
    assert "(all datasets, each on its own E0 reference)" in printed
    assert "dataset pbe (" in printed and "dataset r2scan (" in printed
    assert "experiments on store pbe+scan" in printed and "experiments on store pbe " in printed
    runs = tmp_path / "runs"
    # each store built once, shared by both experiments
    assert sorted(p.name.split("-")[0] for p in (runs / "stores").iterdir()) == ["pbe", "scan"]
    mix = (runs / "experiments" / "mix").resolve()
    record = json.loads((mix / "metrics_test.json").read_text())
    assert record["store"] == "pbe+scan" and list(record["datasets"]) == ["pbe", "r2scan"]
    n = [record["datasets"][name]["frames"] for name in ("pbe", "r2scan")]
    assert record["frames"] == sum(n) and min(n) > 0
    best = torch.load(mix / "best.pt", weights_only=True)
    assert [(d["name"], d["weight"]) for d in best["datasets"]] == [("pbe", 0.6),
                                                                   ("r2scan", 0.4)]
    # trained as the run file trains: the same datasets through train/datasets.py
    config = load_pipelines(path)
    specs = config.dataset_specs("mix")
    assert [(s.label, s.weight, Path(s.path).parent.name) for s in specs] == [
        ("pbe", 0.6, "stores"), ("r2scan", 0.4, "stores")]
    assert isinstance(config.experiment_config("solo")["store_id"], str)  # as before
    # unchanged: reused; another weight: another id, trained again
    assert main(["run", str(path), "--quiet", "--experiment", "mix"]) == 0
    assert "experiment mix: already finished; nothing to do" in capsys.readouterr().out
    ids = {}
    for weights in ((0.6, 0.4), (1.2, 0.8), (0.06, 0.04), (0.5, 0.5)):
        mix_stores = [{**item, "weight": w} for item, w in zip(MIX, weights, strict=True)]
        config = load_pipelines(write_pipeline(tmp_path, {
            "mix": {"stores": mix_stores, "model": TINY, "train": TRAIN}}))
        ids[weights] = config.experiment_dir("mix").name
    # the same normalised weights (0.06 / 0.1 is 0.6 only to rounding)
    assert ids[(0.6, 0.4)] == ids[(1.2, 0.8)] == ids[(0.06, 0.04)] == mix.name
    assert ids[(0.5, 0.5)] != mix.name
    renamed = [MIX[0], {**MIX[1], "name": "scan"}]
    assert load_pipelines(write_pipeline(tmp_path, {
        "mix": {"stores": renamed, "model": TINY, "train": TRAIN}})).experiment_dir(
        "mix").name != mix.name


@pytest.mark.parametrize(("stores", "message"), [
    ([{"store": "pbe"}, {"store": "hse"}],
     r"^experiments.mix.stores\[1\].store: 'hse' is not a declared store; "
     r"declared: \['pbe', 'scan'\]$"),
    ([{"store": "pbe"}, {"store": "scan", "weight": 0}],
     r"^experiments.mix.stores\[1\].weight: "),
    ([{"store": "pbe"}, {"store": "scan", "name": "pbe"}],
     r"^experiments.mix.stores\[1\].name: 'pbe' is already the name of "
     r"stores\[0\]; give each dataset its own name$"),
    ([], r"^experiments.mix.stores: expected at least one"),
])
def test_mistakes_in_an_experiments_stores_are_one_line(tmp_path, stores, message):
    path = write_pipeline(tmp_path, {"mix": {"stores": stores, "model": TINY}})
    with pytest.raises(PipelineError, match=message) as err:
        load_pipelines(path)
    assert "\n" not in str(err.value)


def test_store_and_stores_exclude_each_other_and_graphs_must_serve_the_model(tmp_path,
                                                                             capsys):
    for exp in ({"store": "pbe", "stores": MIX}, {}):
        path = write_pipeline(tmp_path, {"mix": {**exp, "model": TINY}})
        with pytest.raises(PipelineError, match=r"^experiments.mix: give "
                                                r"store: \(one store\) or stores: "):
            load_pipelines(path)
    # scan's 4-neighbour graphs cannot serve the 16 the model sees on pbe: refused before
    # any training, in one line naming the experiment's stores
    path = write_pipeline(tmp_path, {"mix": {"stores": MIX, "model": TINY, "train": TRAIN}},
                          scan_graph={"k": 4})
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("orbitgraph: error: experiments.mix.stores[1]: dataset 'r2scan' "
                          "has graphs k=4"), err
    # nor does it leave a run directory or move the experiments/mix link (which would
    # hide the results of the configuration trained last)
    assert not list((tmp_path / "runs" / "experiments").glob("mix*"))
