"""Several datasets in one run: configs, weighted sampling, exact resume, E0 per dataset,
per-dataset validation (train/datasets.py, train/mixing.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import emt_materials, shift_energies, write_mptrj
from orbitgraph.errors import ConfigError, GraphMismatchError, MissingFileError
from orbitgraph.preprocess.build import build_store
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.store import GraphParams, SplitParams, open_store
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.datasets import Dataset, dataset_specs, open_datasets
from orbitgraph.train.loader import LoaderConfig, make_loader
from orbitgraph.train.mixing import MixedPlanner, dataset_draws, make_mixed_loader
from orbitgraph.train.trainer import Trainer

SYNC = ClusterConfig(kind="synchronous")
TINY_MODEL = {"preset": "invariant", "hidden": 8, "species_dim": 4, "final_mlp": [8],
              "layers": 1, "num_radial": 4}
SHIFT = {29: 0.3, 13: -0.2}  # eV/atom: dataset b's reference minus dataset a's


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Store a (36 frames, 4 per shard), store b (24 frames on a reference shifted by
    SHIFT, 6 per shard), and store c (b's source with k=4 graphs)."""
    root = tmp_path_factory.mktemp("multi")
    src_a = write_mptrj(root / "a.json", emt_materials(36, 1))
    src_b = shift_energies(write_mptrj(root / "b.json", emt_materials(24, 2)), SHIFT)
    out = {}
    for name, src, per_shard, graph in (("a", src_a, 4, GraphParams()),
                                        ("b", src_b, 6, GraphParams()),
                                        ("c", src_b, 6, GraphParams(k=4))):
        out[name] = root / name
        build_store(src, out[name], frames_per_shard=per_shard, cluster=SYNC, progress=False,
                    split=SplitParams(0.2, 0.0, 0), graph=graph)
    return out


def planner(stores, weights=(0.7, 0.3), **loader) -> MixedPlanner:
    datasets = [Dataset(name, open_store(stores[name]).subset(split="train"), w)
                for name, w in zip("ab", weights, strict=True)]
    return MixedPlanner(datasets, LoaderConfig(**{"batch_frames": 2, "seed": 3, **loader}))


# ------------------------------------------------------------------------ configs

@pytest.mark.parametrize(("items", "message"), [
    ([], "stores: expected at least one"),
    ([{"path": "x", "weight": 0}], "stores[0].weight: "),
    ([{"path": "x", "weight": -1.0}], "stores[0].weight: "),
    ([{"path": "x/a"}, {"path": "y/a"}], "stores[1].name: 'a' is already the name of "
                                         "stores[0]"),
    ([{"path": "x", "name": "p"}, {"path": "y", "name": "p"}], "stores[1].name: 'p'"),
    ([{"path": "x", "wieght": 1}], "stores[0].wieght: "),
])
def test_bad_store_lists_are_refused_in_one_line(items, message):
    with pytest.raises(ConfigError) as err:
        dataset_specs(items)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_missing_store_and_graphs_that_cannot_serve_are_refused(stores, tmp_path):
    specs = dataset_specs([{"path": str(stores["a"])}, {"path": str(tmp_path / "nope")}])
    with pytest.raises(MissingFileError, match=r"^stores\[1\]\.path: .*nope: no such store"):
        open_datasets(specs, None, "none", 0.5)
    specs = dataset_specs([{"path": str(stores["a"])}, {"path": str(stores["c"])}])
    with pytest.raises(GraphMismatchError, match=r"^stores\[1\]: dataset 'c' has graphs k=4"):
        open_datasets(specs, None, "none", 0.5)
    # a model that wants k=4 reads a's k=16 graphs filtered: both serve it
    datasets, graph = open_datasets(specs, 4, "none", 0.5)
    assert graph.k == 4 and [d.name for d in datasets] == ["a", "c"]
    assert sum(d.weight for d in datasets) == pytest.approx(1.0)


# ----------------------------------------------------------------------- sampling

def test_draws_follow_the_weights():
    """Over 20,000 steps each dataset's share is within 5 binomial standard deviations of
    its weight (a wrong normalisation or a swapped index is off by far more)."""
    weights = np.array([0.6, 0.3, 0.1])
    n = 20_000
    draws = np.concatenate([dataset_draws(weights * 7, n // 4, seed=5, epoch=e)
                            for e in range(4)])
    counts = np.bincount(draws, minlength=3)
    sigma = np.sqrt(n * weights * (1 - weights))
    assert np.all(np.abs(counts - n * weights) < 5 * sigma), counts
    assert np.array_equal(dataset_draws(weights, 50, 5, 0), dataset_draws(weights, 50, 5, 0))
    assert not np.array_equal(dataset_draws(weights, 50, 5, 0),
                              dataset_draws(weights, 50, 5, 1))


def test_an_epoch_draws_datasets_by_weight_and_passes_over_them(stores):
    p = planner(stores, weights=(0.7, 0.3))
    a_batches, b_batches = p.pass_batches(0, 0, 0), p.pass_batches(1, 0, 0)
    plan = p.plan(0)
    assert len(plan) == a_batches + b_batches
    batches = [b.frame_ids for b in make_mixed_loader(p, epoch=0)]
    assert len(batches) == len(plan)
    train = {name: set(open_store(stores[name]).subset(split="train").frame_ids)
             for name in "ab"}
    for d, ids in zip(plan.draws.tolist(), batches, strict=True):
        assert ids and set(ids) <= train["ab"[d]]  # each batch is of the dataset drawn
    # a dataset drawn more often than its batches starts a second pass, reshuffled
    drawn_a = int((plan.draws == 0).sum())
    assert drawn_a > a_batches
    first = [ids for d, ids in zip(plan.draws, batches, strict=True) if d == 0]
    assert sorted(sum(first[:a_batches], [])) == sorted(train["a"])
    assert first[a_batches:] != first[:drawn_a - a_batches]


def _index_store(rng, n_shards: int, per_shard: int):
    """A store as the planner reads it: an index of frames of 1-39 atoms, no data."""
    import types

    import pyarrow as pa
    atoms = rng.integers(1, 40, n_shards * per_shard)
    index = pa.table({"shard": np.repeat(np.arange(n_shards), per_shard),
                      "row": np.tile(np.arange(per_shard), n_shards),
                      "n_atoms": atoms, "n_edges": 16 * atoms})
    return types.SimpleNamespace(index=index, shard_indices=np.arange(n_shards))


@pytest.mark.parametrize("world", [1, 3])
def test_every_pass_delivers_all_its_batches_though_reshuffles_pack_differently(world):
    """A dataset drawn more often than its first pass holds goes on to further passes,
    each reshuffled and so packed into its own number of batches; each pass taken whole
    delivers every one of its batches (cutting every pass to the first's count skipped
    frames)."""
    import types
    rng = np.random.default_rng(1)
    datasets = [types.SimpleNamespace(store=_index_store(rng, 3, 30), weight=0.9),
                types.SimpleNamespace(store=_index_store(rng, 6, 100), weight=0.1)]
    cfg = LoaderConfig(max_atoms=64, seed=0)
    planners = [MixedPlanner(datasets, cfg, rank, world) for rank in range(world)]
    plans = [planner.plan(0) for planner in planners]
    last = int(plans[0].passes[plans[0].draws == 0].max())
    assert last >= 2
    counts = [planners[0].pass_batches(0, 0, p) for p in range(last + 1)]
    assert len(set(counts)) > 1, counts  # the case at hand: passes of unequal lengths
    for planner, plan in zip(planners, plans, strict=True):
        for p in range(last):  # every pass but the last is taken whole
            taken = plan.batch[(plan.draws == 0) & (plan.passes == p)]
            assert len(taken) == counts[p]
            assert np.array_equal(np.sort(taken[taken >= 0]),
                                  np.arange(len(planner.pass_plan(0, 0, p))))


def test_ranks_draw_the_same_datasets_and_disjoint_frames(stores):
    """Under DDP every rank takes the same number of steps and draws the same dataset at
    each; within a pass, ranks take disjoint frames (a rank short of batches steps empty)."""
    datasets = planner(stores).datasets
    cfg = LoaderConfig(batch_frames=2, seed=3)
    plans = [MixedPlanner(datasets, cfg, rank, 2) for rank in range(2)]
    p0, p1 = (p.plan(1) for p in plans)
    assert len(p0) == len(p1) and np.array_equal(p0.draws, p1.draws)
    for d in range(2):
        seen = [{(s, r) for s, r in zip(p.pass_plan(d, 1, 0).shard, p.pass_plan(d, 1, 0).row,
                                         strict=True)} for p in plans]
        assert not seen[0] & seen[1]
        assert len(seen[0] | seen[1]) == len(datasets[d].store)


def test_mixed_batches_are_deterministic_and_resume_exactly(stores):
    p = planner(stores)
    full = [b.frame_ids for b in make_mixed_loader(p, epoch=2)]
    again = [b.frame_ids for b in make_mixed_loader(planner(stores), epoch=2)]
    assert full == again
    assert [b.frame_ids for b in make_mixed_loader(planner(stores), epoch=3)] != full
    for skip in (1, 7):
        assert [b.frame_ids for b in make_mixed_loader(planner(stores), 2, skip)] == full[skip:]
    # DataLoader workers share out the same steps
    workers = planner(stores, num_workers=2)
    assert [b.frame_ids for b in make_mixed_loader(workers, 2, 3)] == full[3:]
    # its workers leave a terminal's Ctrl-C to the trainer, as the single-store loader's do
    from orbitgraph.train.loader import ignore_sigint
    assert make_mixed_loader(workers, 2).worker_init_fn is ignore_sigint


# ------------------------------------------------------------------------ training

def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, lr=3e-3, loader=LoaderConfig(max_atoms=48, seed=1), log_every=1000,
                checkpoint_every=1000, plots=False, tensorboard=False, ema_decay=0.9,
                warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def _two(stores, wa=0.7, wb=0.3) -> list[dict]:
    return [{"path": str(stores["a"]), "weight": wa}, {"path": str(stores["b"]), "weight": wb}]


def test_killed_and_resumed_mixed_run_follows_the_same_trajectory(stores, tmp_path):
    # statistics given: other weights would otherwise change the model's scale too
    model = {**TINY_MODEL, "atomic_energies": "least_squares", "scale": 1.0,
             "avg_num_neighbors": 16.0}
    straight = Trainer(_two(stores), model, _cfg(), tmp_path / "straight")
    n, total = straight.steps_per_epoch, straight.total_steps
    straight.fit()
    half = n + 2  # mid-epoch 1
    assert n > 3
    first = Trainer(_two(stores), model, _cfg(), tmp_path / "resumed")
    first.fit(stop_after=half)
    del first
    second = Trainer(_two(stores), model, _cfg(), tmp_path / "resumed")
    assert second.state.step == half and second.state.batches_in_epoch == 2
    second.fit()
    assert second.state.step == total
    a = straight.model.state_dict()
    for key, value in second.model.state_dict().items():
        assert value.dtype != torch.float32
        torch.testing.assert_close(value, a[key], rtol=0, atol=0, msg=key)
    # other weights part-way through an epoch would draw other batches: refused
    from orbitgraph.errors import ResumeError
    third = tmp_path / "third"
    Trainer(_two(stores), model, _cfg(), third).fit(stop_after=1)
    with pytest.raises(ResumeError, match="dataset weights"):
        Trainer(_two(stores, 0.5, 0.5), model, _cfg(), third)


def test_weights_change_at_an_epoch_boundary_with_the_models_statistics_left_to_the_data(
        stores, tmp_path):
    """The model's normalisation (mean neighbours, scale) comes from all training frames
    pooled, not from the sampling weights: a resumed run may change the weights at an epoch
    boundary (they apply from the next epoch), and part-way through an epoch the refusal
    names the weights (the statistics moving with the weights made it 'another model')."""
    from orbitgraph.errors import ResumeError
    model = {**TINY_MODEL, "atomic_energies": "least_squares"}
    first = Trainer(_two(stores), model, _cfg(epochs=1), tmp_path / "run")
    first.fit()
    stats = (first.model.config.avg_num_neighbors, first.model.config.scale)
    again = Trainer(_two(stores, 0.2, 0.8), model, _cfg(epochs=2), tmp_path / "run")
    assert (again.model.config.avg_num_neighbors, again.model.config.scale) == stats
    assert again.state.epoch == 1
    again.fit()
    assert again.state.epoch == 2
    Trainer(_two(stores), model, _cfg(), tmp_path / "mid").fit(stop_after=1)
    with pytest.raises(ResumeError, match="dataset weights"):
        Trainer(_two(stores, 0.5, 0.5), model, _cfg(), tmp_path / "mid")


def test_each_dataset_keeps_its_own_energy_reference(stores, tmp_path):
    """b's energies are a's reference plus SHIFT per atom: b's fitted E0s sit SHIFT above the
    model's (a's), and validation on b, compared on b's reference, is as good as on a."""
    model = {**TINY_MODEL, "atomic_energies": "least_squares"}
    trainer = Trainer(_two(stores), model, _cfg(max_steps=1), tmp_path / "run")
    a, b = trainer.datasets
    np.testing.assert_array_equal(a.e0_shift, 0.0)
    for z, shift in SHIFT.items():
        assert b.e0_shift[z] == pytest.approx(shift, abs=0.02), (z, b.e0_shift[z])
    e0 = open_store(stores["a"]).manifest.statistics["atomic_energies_eV"]
    for z in SHIFT:
        assert float(trainer.model.scale_shift.e0[z]) == pytest.approx(e0[z], abs=1e-12)
    metrics = trainer.validate()
    for name in "ab":
        assert metrics[f"{name}/frames"] == len(open_store(stores[name]).subset(split="val"))
    assert metrics["frames"] == metrics["a/frames"] + metrics["b/frames"]
    # b's errors are the model's energy plus b's E0 shift against b's own labels
    model_ = trainer.inference_model().eval()
    errors, unshifted = [], []
    for batch in make_loader(b.store.subset(split="val"), LoaderConfig(shuffle=False),
                             graph=trainer.graph):
        predicted = model_(batch, forces=True, stress=True)["energy"].detach()
        on_b = predicted + b.frame_shift(batch)
        errors.extend(((on_b - batch.energy) / batch.n_atoms).abs().tolist())
        unshifted.extend(((predicted - batch.energy) / batch.n_atoms).abs().tolist())
    assert metrics["b/energy_mae_meV_per_atom"] == pytest.approx(1000 * np.mean(errors),
                                                                 rel=1e-9)
    assert abs(np.mean(unshifted) - np.mean(errors)) > 0.05  # eV/atom: the shift matters
    # the batches the loader gives from b are on the model's reference: E - Σ shift(z)
    batch = next(batch for d, batch in zip(trainer.planner.plan(0).draws,
                                           make_mixed_loader(trainer.planner, 0), strict=True)
                 if d == 1)
    position = {fid: i for i, fid in enumerate(b.store.frame_ids)}
    for j, fid in enumerate(batch.frame_ids):
        frame = b.store[position[fid]]
        moved = frame["energy"] - b.e0_shift[frame["numbers"]].sum()
        assert float(batch.energy[j]) == pytest.approx(moved, rel=0, abs=1e-9)
        assert abs(moved - frame["energy"]) > 0.1  # 4 atoms: 0.2 to 1.2 eV


def test_a_run_file_names_several_stores(tmp_path):
    import yaml

    from orbitgraph.train import cli

    def settings(doc):
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc))
        args = cli.parser(keys=False).parse_args(["train", "--config",
                                                  str(tmp_path / "run.yaml")])
        return cli.run_settings(args)

    base = {"model": "invariant", "out": str(tmp_path / "run")}
    run = settings({**base, "stores": [{"path": "s/omat", "weight": 0.6},
                                       {"path": "s/mptrj", "weight": 0.4, "name": "mp"}]})
    assert [(s.label, s.weight) for s in run.store] == [("omat", 0.6), ("mp", 0.4)]
    with pytest.raises(ConfigError, match=r"^stores: several datasets, and store:/source:"):
        settings({**base, "store": "s/x", "stores": ["s/y"]})
    with pytest.raises(ConfigError, match=r"^stores\[1\]\.weight: "):
        settings({**base, "stores": ["s/y", {"path": "s/z", "weight": 0}]})


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory) -> tuple[Trainer, Path]:
    """One step on stores a and b (E0s fitted per dataset): the trainer and its best.pt."""
    out = tmp_path_factory.mktemp("trained") / "run"
    model = {**TINY_MODEL, "atomic_energies": "least_squares"}
    trainer = Trainer(_two(stores), model, _cfg(max_steps=1), out)
    trainer.fit()
    return trainer, out / "best.pt"


def test_evaluate_and_calculator_predict_on_a_chosen_dataset_reference(stores, trained,
                                                                        tmp_path):
    from ase.build import bulk

    from orbitgraph.train.calculator import OrbitCalculator
    from orbitgraph.train.evaluation import evaluate

    trainer, best = trained
    val = trainer.validate()
    on_b = evaluate(best, stores["b"], split="val", dataset="b")
    assert on_b["dataset"] == "b"
    assert on_b["energy_mae_meV_per_atom"] == pytest.approx(val["b/energy_mae_meV_per_atom"],
                                                            rel=1e-9)
    # without --dataset, b's store is on b's reference: it is b's store (by store id)
    by_store = evaluate(best, stores["b"], split="val")
    assert by_store["dataset"] == "b"
    assert by_store["energy_mae_meV_per_atom"] == on_b["energy_mae_meV_per_atom"]
    on_a = evaluate(best, stores["b"], split="val", dataset="a")  # the model's (a's) reference
    assert on_a["dataset"] == "a"
    assert abs(on_a["energy_mae_meV_per_atom"] - on_b["energy_mae_meV_per_atom"]) > 50
    from orbitgraph.train import cli
    assert cli.main(["evaluate", str(best), "--store", str(stores["b"]), "--split", "val",
                     "--dataset", "b", "--out", str(tmp_path / "eval-b")]) == 0
    written = json.loads((tmp_path / "eval-b" / "metrics.json").read_text())
    assert written["dataset"] == "b"
    assert written["energy_mae_meV_per_atom"] == pytest.approx(
        on_b["energy_mae_meV_per_atom"], rel=1e-9)
    with pytest.raises(ConfigError, match=r"^dataset: .*best.pt has no dataset 'zz'; its "
                                          r"datasets are a, b$"):
        evaluate(best, stores["b"], split="val", dataset="zz")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    energies = {}
    for name in (None, "b"):
        atoms.calc = OrbitCalculator.from_checkpoint(best, dataset=name)
        energies[name] = atoms.get_potential_energy()
    expected = 4 * trainer.datasets[1].e0_shift[29]
    assert energies["b"] - energies[None] == pytest.approx(expected, abs=1e-9)
    assert abs(expected - 4 * SHIFT[29]) < 0.1


def test_evaluate_reports_each_dataset_on_its_reference_and_all_together(stores, trained,
                                                                          tmp_path, capsys):
    from orbitgraph.train import cli
    from orbitgraph.train.evaluation import evaluate, evaluate_datasets

    trainer, best = trained
    metrics = evaluate_datasets(best, split="val", out=tmp_path / "ev")  # stores: recorded
    assert list(metrics["datasets"]) == ["a", "b"]
    keys = ("energy_mae_meV_per_atom", "energy_rmse_meV_per_atom", "forces_mae_meV_per_A",
            "stress_mae_GPa", "frames")
    for name in "ab":
        alone = evaluate(best, stores[name], split="val", dataset=name)
        group = metrics["datasets"][name]
        assert group["dataset"] == name and group["store"] == str(stores[name].resolve())
        for key in keys:
            assert group[key] == pytest.approx(alone[key], rel=1e-12), (name, key)
        assert group["baseline"] == alone["baseline"]
    # all frames together, each dataset on its own reference: validation's overall figures
    val = trainer.validate()
    for key in ("energy_mae_meV_per_atom", "forces_mae_meV_per_A", "frames"):
        assert metrics[key] == pytest.approx(val[key], rel=1e-9), key
    n = [metrics["datasets"][name]["frames"] for name in "ab"]
    for key in ("energy_mae_meV_per_atom", "stress_mae_GPa"):  # per frame: frame-weighted
        for part in (metrics, metrics["baseline"]):
            groups = [metrics["datasets"][name] for name in "ab"]
            each = [g[key] if part is metrics else g["baseline"][key] for g in groups]
            assert part[key] == pytest.approx(np.average(each, weights=n), rel=1e-12), key
    assert metrics["baseline"]["frames"] == sum(n) == metrics["frames"]
    assert (tmp_path / "ev" / "parity.png").is_file()
    assert (tmp_path / "ev" / "b" / "predictions.csv").is_file()
    # the command: a block per dataset and one of all, metrics.json with a section each
    assert cli.main(["evaluate", str(best), "--split", "val", "--out",
                     str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    blocks = [line for line in printed.splitlines()
              if line.startswith(("dataset a (", "dataset b (", "all datasets ("))]
    assert len(blocks) == 3 and blocks[2].startswith("all datasets (")
    assert printed.count("energy/atom") == 3
    written = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert set(written["datasets"]) == {"a", "b"}
    assert written["energy_mae_meV_per_atom"] == pytest.approx(
        metrics["energy_mae_meV_per_atom"], rel=1e-12)
    # --dataset alone: that dataset's recorded store, as --store STORE --dataset NAME
    assert cli.main(["evaluate", str(best), "--split", "val", "--dataset", "b", "--out",
                     str(tmp_path / "only-b")]) == 0
    capsys.readouterr()
    only_b = json.loads((tmp_path / "only-b" / "metrics.json").read_text())
    assert only_b["dataset"] == "b" and "datasets" not in only_b
    assert only_b["energy_mae_meV_per_atom"] == pytest.approx(
        metrics["datasets"]["b"]["energy_mae_meV_per_atom"], rel=1e-12)


def test_evaluate_refuses_a_reference_it_cannot_tell_in_one_line(stores, trained, capsys):
    """A store of none of the datasets, or a source file, has labels on a reference the
    checkpoint cannot know: --dataset names it (one-line error without)."""
    from orbitgraph.train import cli

    _, best = trained
    source = stores["a"].parent / "a.json"
    for frames in (["--store", str(stores["c"]), "--split", "val"], ["--source", str(source)]):
        assert cli.main(["evaluate", str(best), *frames]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("orbitgraph: error: dataset: ")
        assert "trained on" in err and "(--dataset NAME)" in err
    assert cli.main(["evaluate", str(best), "--dataset", "zz"]) == 2
    assert "has no dataset 'zz'; its datasets are a, b" in capsys.readouterr().err
