"""Configurations: one line per refused value, naming its key path, from the API and the CLI;
defaults < YAML < command line; mace-torch's names; YAML's ambiguities; the README's
reference generated from the declarations. Fast: nothing is built or trained."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
import yaml

from orbitgraph.errors import ConfigError
from orbitgraph.model.aggregation import AggregationMode
from orbitgraph.model.config import MACE_TORCH_NAMES, ModelConfig, load_config
from orbitgraph.model.invariant import Attention
from orbitgraph.model.message import WeightInputs
from orbitgraph.model.networks import NETWORKS
from orbitgraph.model.radial import RADIAL_BASES, RANK_ENVELOPES
from orbitgraph.model.readout import BlockReduction, ReadoutKind
from orbitgraph.model.self_interaction import SELF_INTERACTIONS, ContractionWeights
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.store import SourceInfo, StoreSpec
from orbitgraph.preprocess.store.params import GraphParams, LabelKeys, SplitParams, StoreParams
from orbitgraph.train import cli
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.loader import LoaderConfig
from orbitgraph.train.pipelines import load_pipelines
from orbitgraph.train.reference import REFERENCE_END, REFERENCE_START, reference_markdown

ROOT = Path(__file__).resolve().parents[1]

# (key path, value as YAML text) of every bad value the issue lists
BAD = [
    ("train.checkpoint_every", "0"),
    ("train.log_every", "0"),
    ("train.warmup_steps", "-5"),
    ("train.forces_weight", "-1"),
    ("train.epochs", "2.5"),
    ("train.loader.max_atoms", "1.5"),
    ("train.loader.num_workers", "-2"),
    ("train.loader.max_edges", "0"),
    ("train.device", "gpu"),
    ("train.stage_two.start", "1.5"),
    ("train.stage_two.lr", "0"),
    ("model.rank_envelope_width", "0"),
    ("model.avg_num_neighbors", "-3.0"),
]


def _nested(path: str, value) -> dict:
    *parents, last = path.split(".")
    d = {last: value}
    for part in reversed(parents):
        d = {part: d}
    return d


def _from_api(path: str, value):
    section, rest = path.split(".", 1)
    d = _nested(rest, value)
    if section == "train":
        return TrainConfig.from_dict(d)
    return load_config({"preset": "mace", **d})


def _check_line(line: str, path: str, value) -> None:
    assert "\n" not in line
    assert line.startswith(f"{path}: expected "), line
    assert f"got {value!r}" in line, line


@pytest.mark.parametrize("path,text", BAD)
def test_bad_values_are_refused_by_the_api_naming_the_key_path(path, text):
    value = yaml.safe_load(text)
    with pytest.raises(ValueError) as err:
        _from_api(path, value)
    assert isinstance(err.value, ConfigError) and err.value.path == path
    _check_line(str(err.value), path, value)


@pytest.mark.parametrize("path,text", BAD)
def test_bad_values_are_one_line_and_exit_2_from_the_cli(path, text, tmp_path, capsys):
    code = cli.main(["train", "--store", tmp_path / "no-store", "--model", "mace",
                     "--out", tmp_path / "run", "--set", f"{path}={text}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    _check_line(err.removeprefix("orbitgraph: error: ").strip(), path, yaml.safe_load(text))


@pytest.mark.parametrize("path,text", BAD)
def test_bad_values_in_pipelines_yaml_name_the_experiment(path, text, tmp_path):
    section, rest = path.split(".", 1)
    doc = {"sources": {"s": {"path": "frames.json"}}, "stores": {"k16": {"source": "s"}},
           "experiments": {"e": {"store": "k16", "model": "mace"}}}
    file = tmp_path / "pipelines.yaml"
    file.write_text(yaml.safe_dump(doc))
    load_pipelines(file)  # valid as written
    with pytest.raises(ValueError) as err:
        load_pipelines(file, overrides=[f"experiments.e.{path}={text}"])
    _check_line(str(err.value), f"experiments.e.{path}", yaml.safe_load(text))


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_devices_accepted(device):
    assert TrainConfig.from_dict({"device": device}).device == device


def test_other_refusals_name_the_key():
    cases = [
        (lambda: GraphParams(k=0), "graph.k: expected an integer >= 1, got 0"),
        (lambda: GraphParams.from_dict({"k": 16, "cutof": 3}), "graph: unknown key 'cutof'"),
        (lambda: SplitParams(0.6, 0.5), "split: val_fraction + test_fraction must be < 1"),
        (lambda: StoreParams.from_dict({"frames_per_shard": 0}, where="stores.x"),
         "stores.x.frames_per_shard: expected an integer >= 1, got 0"),
        (lambda: ClusterConfig.from_dict({"kind": "slurm", "jobs": 0}),
         "cluster.jobs: expected an integer >= 1, got 0"),
        (lambda: TrainConfig.from_dict({"epochs": True}),
         "train.epochs: expected an integer >= 1, got True"),
        (lambda: TrainConfig.from_dict({"loader": {"max_atoms_by_device": {"gpu": 8}}}),
         "train.loader.max_atoms_by_device.gpu: expected cpu, cuda, cuda:N or mps"),
        (lambda: TrainConfig(ema_decay=1.0), "train.ema_decay: expected a number > 0 and < 1"),
        (lambda: load_config({"preset": "mace", "radial_mlp": [32, 0]}),
         "model.radial_mlp[1]: expected an integer >= 1, got 0"),
        (lambda: GraphParams(k=8).model_copy(update={"k": -1}), "graph.k: expected an integer"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value).startswith(message), (message, str(err.value))


# each model setting that chooses a block, and the options the blocks implement: the keys of
# the block's registry, or its Literal type where one module handles every option
BLOCK_OPTIONS = {
    "kind": tuple(NETWORKS),
    "radial_basis": tuple(RADIAL_BASES),
    "rank_envelope": tuple(RANK_ENVELOPES),
    "message_weights": get_args(WeightInputs),
    "aggregation": get_args(AggregationMode),
    "self_interaction": tuple(SELF_INTERACTIONS),
    "contraction_weights": get_args(ContractionWeights),
    "readout": get_args(ReadoutKind),
    "block_reduction": get_args(BlockReduction),
    "attention": get_args(Attention),
}


def test_block_settings_accept_their_registries_keys_and_nothing_else():
    """Every setting of ModelConfig with a fixed list of options chooses a block, and takes
    its options from that block: each option of the block is accepted, and the setting's
    declared options are exactly the block's (so a block added to a registry is a valid
    setting, and the config lists no block that does not exist)."""
    chosen = {name for name, field in ModelConfig.model_fields.items()
              if get_origin(field.annotation) is Literal}
    assert chosen == set(BLOCK_OPTIONS)
    for key, options in BLOCK_OPTIONS.items():
        assert get_args(ModelConfig.model_fields[key].annotation) == options, key
        for option in options:
            assert getattr(ModelConfig.from_dict({key: option}), key) == option
        with pytest.raises(ConfigError) as err:
            ModelConfig.from_dict({key: "no_such_block"})
        assert str(err.value) == (f"model.{key}: 'no_such_block' is not one of "
                                  f"{', '.join(options)}")


def test_yaml_ambiguities_are_coerced_or_refused(tmp_path):
    text = "train:\n  lr: 1e-3\n  min_lr: 1e-6\n  epochs: 3\n"
    assert yaml.safe_load(text)["train"]["lr"] == "1e-3"  # what PyYAML makes of it
    cfg = TrainConfig.from_dict(yaml.safe_load(text)["train"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float) and cfg.min_lr == 1e-6
    assert TrainConfig.from_dict({"lr": "1e-3"}).lr == 0.001
    assert TrainConfig.from_dict({"epochs": 4.0}).epochs == 4  # integral: accepted
    with pytest.raises(ValueError, match="train.epochs: expected an integer >= 1, got 2.5"):
        TrainConfig.from_dict({"epochs": 2.5})
    with pytest.raises(ValueError, match="train.lr: expected a number > 0, got 'fast'"):
        TrainConfig.from_dict({"lr": "fast"})


def test_precedence_defaults_then_yaml_then_command_line(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  epochs: 50\n  device: cuda\n  lr: 1e-3\n"
                      "  loader: {max_atoms: 256, seed: 3}\n")

    def settings(*extra):
        args = cli.parser(keys=False).parse_args(
            ["train", "--store", "s", "--model", "mace", "--out", "o", *map(str, extra)])
        return cli.train_settings(args)

    default, _ = settings()
    assert (default.epochs, default.device, default.loader.max_atoms) == (10, "cpu", 1024)
    from_file, _ = settings("--config", config)
    assert (from_file.epochs, from_file.device, from_file.lr) == (50, "cuda", 0.001)
    assert from_file.loader.max_atoms == 256 and from_file.loader.seed == 3
    given, model = settings("--config", config, "--set", "train.epochs=7",
                            "--set", "train.loader.max_atoms=64", "--set", "model.channels=32",
                            "--set", "model.radial_mlp=[32,32]")
    assert (given.epochs, given.device, given.loader.max_atoms) == (7, "cuda", 64)
    assert given.loader.seed == 3, "a --set on one key keeps the file's others"
    assert (model.channels, model.radial_mlp, model.self_interaction) == (
        32, (32, 32), "symmetric_contraction")
    flag, _ = settings("--config", config, "--epochs", "8", "--max-atoms", "99")
    assert (flag.epochs, flag.loader.max_atoms) == (8, 99)
    last, _ = settings("--config", config, "--epochs", "8", "--set", "train.epochs=9")
    assert last.epochs == 9, "--set comes after the flags"


def test_pipelines_overrides_take_precedence_over_the_file():
    config = load_pipelines(ROOT / "pipelines.yaml")
    assert config.experiments["mace-small"].train.lr == 0.04
    changed = load_pipelines(ROOT / "pipelines.yaml", overrides=[
        "experiments.mace-small.train.lr=1e-3", "stores.sample-k16.graph.k=12",
        "experiments.invariant-small.model.hidden=16"])
    assert changed.experiments["mace-small"].train.lr == 0.001
    assert changed.stores["sample-k16"].graph.k == 12
    assert changed.experiments["invariant-small"].model["hidden"] == 16
    assert changed.experiments["mace-small"].train.max_steps == 300  # the file's, kept


def test_mace_torch_names_are_aliases_with_the_mace_preset():
    common = {"r_max": 5.0, "max_ell": 2, "max_L": 0, "num_channels": 32,
              "num_interactions": 1, "correlation": 2}
    run_train = {**common, "num_radial_basis": 6, "num_cutoff_basis": 4}  # mace_run_train's
    modules = {**common, "num_bessel": 6, "num_polynomial_cutoff": 4}  # its model classes'
    ours = {"cutoff": 5.0, "sh_l_max": 2, "hidden_l_max": 0, "channels": 32, "layers": 1,
            "num_radial": 6, "envelope_p": 4, "correlation": 2}
    assert set(MACE_TORCH_NAMES) | {"correlation"} == set(run_train) | set(modules)
    for theirs in (run_train, modules):
        assert load_config({"preset": "mace", **theirs}) == load_config({"preset": "mace",
                                                                         **ours})
    with pytest.raises(ValueError, match="num_radial_basis .* and num_bessel are the same setting"):
        load_config({"preset": "mace", "num_radial_basis": 6, "num_bessel": 6})
    with pytest.raises(ValueError, match="model: r_max .* and cutoff are the same setting"):
        load_config({"preset": "mace", "r_max": 5.0, "cutoff": 5.0})
    with pytest.raises(ValueError, match="num_channels is mace-torch's name for channels"):
        load_config({"preset": "invariant", "num_channels": 8})
    with pytest.raises(ValueError, match="model.channels: expected an integer >= 1, got 0"):
        load_config({"preset": "mace", "num_channels": 0})


def test_store_spec_is_store_params_and_a_source():
    """One store specification: StoreSpec declares no store setting of its own, so each is
    declared and checked once (StoreParams), refused with its key named; the build takes a
    StoreParams as it is, and keyword overrides of its fields are the same store."""
    from helpers import SMALL_MPTRJ
    from orbitgraph.preprocess.build import make_spec

    assert set(StoreSpec.model_fields) == set(StoreParams.model_fields) | {"source"}
    src = SourceInfo("p", "mptrj-json", "abc")
    with pytest.raises(ConfigError, match=r"^store\.frames_per_shard: expected an integer >= 1"):
        StoreSpec(source=src, frames_per_shard=0)
    with pytest.raises(ConfigError, match=r"^store\.backend: 'tar' is not one of zarr, arrow"):
        StoreSpec(source=src, backend="tar")
    params = StoreParams(graph=GraphParams(k=12), split=SplitParams(0.1, 0.2, 3),
                         min_distance=0.7)
    _, spec = make_spec(SMALL_MPTRJ, params)
    _, same = make_spec(SMALL_MPTRJ, graph=GraphParams(k=12), split=SplitParams(0.1, 0.2, 3),
                        min_distance=0.7)
    assert spec == same and spec.store_id == same.store_id
    assert spec.graph == GraphParams(k=12) and spec.source.format == "mptrj-json"
    assert spec.energy_key == "uncorrected_total_energy"  # the source's convention, filled in
    assert make_spec(SMALL_MPTRJ)[1].store_id != spec.store_id


def test_to_dict_and_store_ids_are_unchanged(monkeypatch):
    """The dicts hashed into store ids and written to checkpoints are those of the frozen
    dataclasses these models replaced (ids computed with them, at store schema 2; each schema
    version gives its stores new ids)."""
    import orbitgraph.preprocess.store.manifest as manifest

    src = SourceInfo("p", "mptrj-json", "abc")
    assert StoreSpec(source=src).store_id != "7b3e7c6494b550a9"  # schema 3: another store
    monkeypatch.setattr(manifest, "SCHEMA_VERSION", 2)
    assert StoreSpec(source=src).store_id == "7b3e7c6494b550a9"
    spec = StoreSpec(source=src, graph=GraphParams(k=12, cutoff=5.0, tie_tolerance=0.01),
                     split=SplitParams(0.1, 0.2, 3), min_distance=0.7, energy_key="e",
                     forces_key="f")
    assert spec.store_id == "26e2b3b04eb6f507"
    assert GraphParams().to_dict() == {"k": 16, "ties": "include", "tie_tolerance": 0.5,
                                       "cutoff": None}
    assert LabelKeys("e").to_dict() == {"energy": "e", "forces": None, "stress": None,
                                        "virial": None}
    model = load_config({"preset": "mace", "radial_mlp": (16,), "atomic_energies": {"3": -1}})
    d = model.to_dict()
    assert d["radial_mlp"] == [16] and d["bands"] == [] and d["atomic_energies"] == {3: -1.0}
    assert ModelConfig.from_dict(d) == model
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    assert TrainConfig().to_dict()["loader"] == LoaderConfig().to_dict()


def test_help_lists_the_settable_keys(capsys):
    for command, keys in (("train", ["train.loader.max_atoms", "model.channels"]),
                          ("build", ["store.graph.k", "store.split.seed", "cluster.kind"]),
                          ("evaluate", ["evaluate.split"]),
                          ("run", ["experiments.NAME.train.lr", "stores.NAME.graph.k"])):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "--set" in out
        for key in keys:
            assert re.search(rf"^  {re.escape(key)}  ", out, re.M), (command, key)


def test_readme_configuration_reference_is_generated():
    text = (ROOT / "docs" / "reference" / "configuration.md").read_text()
    start, end = text.index(REFERENCE_START), text.index(REFERENCE_END)
    block = text[start + len(REFERENCE_START):end].strip()
    assert block == reference_markdown().strip(), (
        "docs/reference/configuration.md differs from the declarations: paste "
        "orbitgraph.train.reference.reference_markdown() between the markers")


def test_an_unknown_key_of_an_optional_section_names_the_sections_keys():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"stage_two": {"foo": 1}})
    assert str(err.value) == ("train.stage_two: unknown key 'foo'; expected one of "
                              "['start', 'lr', 'energy_weight', 'forces_weight', "
                              "'stress_weight']")
