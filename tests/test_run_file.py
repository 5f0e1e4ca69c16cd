"""``orbitgraph train --config``: one YAML for a whole run (store or source, model, train,
out), and mace-torch's flat configs read key by key, every key without an equivalent refused
in one line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from helpers import write_emt_extxyz
from orbitgraph.errors import ConfigError
from orbitgraph.model.config import load_config
from orbitgraph.train import cli
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.mace_torch import MACE_TORCH_KEYS, RULES, from_mace_torch, mapping_markdown
from orbitgraph.units import EV_PER_A3_IN_GPA

ROOT = Path(__file__).resolve().parents[1]
MAPPING_START, MAPPING_END = "<!-- mace-torch-keys:start -->", "<!-- mace-torch-keys:end -->"


def settings(tmp_path: Path, doc: dict | None, *argv):
    argv = ["train", *map(str, argv)]
    if doc is not None:
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        argv += ["--config", str(tmp_path / "run.yaml")]
    return cli.run_settings(cli.parser(keys=False).parse_args(argv))


def test_one_file_holds_the_whole_run(tmp_path):
    doc = {"store": "stores/k16", "out": "runs/a",
           "model": {"preset": "mace", "channels": 32, "correlation": 2},
           "train": {"lr": 0.005, "epochs": 3, "loader": {"max_atoms": 256}}}
    run = settings(tmp_path, doc)
    assert (run.store, run.out, run.source) == ("stores/k16", "runs/a", None)
    assert (run.model.channels, run.model.correlation, run.model.self_interaction) == (
        32, 2, "symmetric_contraction")
    assert (run.train.lr, run.train.epochs, run.train.loader.max_atoms) == (0.005, 3, 256)
    # the command line wins: flags over the file, --set over both
    run = settings(tmp_path, doc, "--store", "s2", "--out", "o2", "--epochs", "5",
                   "--set", "model.channels=8", "--set", "train.lr=0.01")
    assert (run.store, run.out, run.train.epochs) == ("s2", "o2", 5)
    assert (run.model.channels, run.model.correlation, run.train.lr) == (8, 2, 0.01)
    assert settings(tmp_path, doc, "--model", "sevennet").model.self_interaction == "gate"
    # a model section may name a preset or a model YAML, as --model does
    (tmp_path / "model.yaml").write_text("model: {preset: invariant, hidden: 16}\n")
    run = settings(tmp_path, {**doc, "model": str(tmp_path / "model.yaml")})
    assert (run.model.kind, run.model.hidden) == ("invariant", 16)


def test_a_source_is_built_into_the_run_directory(tmp_path):
    run = settings(tmp_path, {"source": "data.extxyz", "out": "runs/b", "model": "mace",
                              "build": {"graph": {"k": 12}, "split": {"val_fraction": 0.2}}},
                   "--set", "build.graph.cutoff=6.0")
    assert (run.store, run.source) == (str(Path("runs/b") / "store"), "data.extxyz")
    assert (run.build.graph.k, run.build.graph.cutoff, run.build.split.val_fraction) == (
        12, 6.0, 0.2)


@pytest.mark.parametrize("doc,message", [
    ({"store": "s", "out": "o", "modle": "mace"},
     r"run.yaml: unknown key 'modle'; expected one of \['store', 'source'"),
    ({"store": "s", "out": "o", "model": "mace", "train": {"lr": -1}},
     r"train.lr: expected a number > 0, got -1"),
    ({"store": "s", "out": "o"}, r"train: give --model .* or a model: section in the --config"),
    ({"store": "s", "model": "mace"}, r"train: give --out .* or out: in the --config file"),
    ({"out": "o", "model": "mace"}, r"train: give --store, or store: or source: in the --config"),
    ({"store": "s", "out": "o", "model": "mace", "build": {"graph": {"k": 8}}},
     r"build: settings for building a store, but no source: to build it from"),
])
def test_run_file_errors_are_one_line(tmp_path, capsys, doc, message):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli.main(["train", "--config", tmp_path / "run.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err


# a mace_run_train config as MACE users write them (keys of mace-torch's docs and examples)
MACE_CONFIG = {
    "name": "mace01", "model": "MACE", "seed": 123, "device": "cuda", "default_dtype": "float32",
    "train_file": "train.xyz", "valid_fraction": 0.05, "E0s": "average",
    "energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": "REF_stress",
    "r_max": 5.0, "num_radial_basis": 10, "num_cutoff_basis": 6, "max_ell": 2,
    "correlation": 3, "num_interactions": 2, "num_channels": 64, "max_L": 1,
    "MLP_irreps": "16x0e", "radial_MLP": "[32, 32]", "gate": "silu",
    "scaling": "rms_forces_scaling", "pair_repulsion": True, "loss": "stress",
    "energy_weight": 1.0, "forces_weight": 100.0, "stress_weight": 10.0, "lr": 0.01,
    "optimizer": "adam", "amsgrad": True, "weight_decay": 5e-7, "batch_size": 8,
    "max_num_epochs": 200, "patience": 20, "scheduler": "ReduceLROnPlateau",
    "lr_factor": 0.8, "scheduler_patience": 5, "ema": True, "ema_decay": 0.995,
    "clip_grad": 100, "eval_interval": 1, "num_workers": 2, "pin_memory": True,
}


def test_a_mace_torch_config_is_read_key_by_key(tmp_path):
    run = settings(tmp_path, MACE_CONFIG)
    m, t, b = run.model, run.train, run.build
    assert (m.kind, m.self_interaction, m.cutoff, m.num_radial, m.envelope_p) == (
        "equivariant", "symmetric_contraction", 5.0, 10, 6)
    assert (m.sh_l_max, m.correlation, m.layers, m.channels, m.hidden_l_max) == (2, 3, 2, 64, 1)
    assert (m.readout_mlp, m.radial_mlp, m.pair_repulsion) == ((16,), (32, 32), True)
    assert (m.atomic_energies, m.scale, m.avg_num_neighbors) == ("least_squares", None, None)
    assert (t.seed, t.loader.seed, t.device, t.precision) == (123, 123, "cuda", "float32")
    assert (t.loss, t.energy_weight, t.forces_weight) == ("mse", 1.0, 100.0)
    assert t.stress_weight == pytest.approx(10.0 / EV_PER_A3_IN_GPA ** 2)  # eV/Å³ -> GPa
    assert (t.lr, t.optimizer, t.amsgrad, t.weight_decay) == (0.01, "adam", True, 5e-7)
    assert (t.loader.batch_frames, t.epochs, t.early_stopping_patience) == (8, 200, 20)
    assert (t.schedule, t.plateau_factor, t.plateau_patience) == ("plateau", 0.8, 5)
    assert (t.ema_decay, t.grad_clip, t.loader.num_workers, t.loader.pin_memory) == (
        0.995, 100.0, 2, True)
    assert (run.source, run.store, run.out) == ("train.xyz", str(Path("mace01", "store")),
                                                "mace01")
    assert (b.split.val_fraction, b.energy_key, b.forces_key, b.stress_key) == (
        0.05, "REF_energy", "REF_forces", "REF_stress")


def test_mace_torch_values_that_differ_here():
    doc = from_mace_torch({"hidden_irreps": "128x0e + 128x1o + 128x2e", "loss": "weighted",
                           "ema": False, "E0s": "{1: -13.6, 8: -2042.0}",
                           "use_last_readout_only": True, "scaling": "no_scaling",
                           "work_dir": "runs", "name": "m"}, "m.yaml")
    assert doc["model"] == {"preset": "mace", "channels": 128, "hidden_l_max": 2,
                            "atomic_energies": {1: -13.6, 8: -2042.0},
                            "block_reduction": "last", "scale": 1.0}
    assert doc["train"] == {"loss": "mse", "stress_weight": 0.0, "ema_decay": None}
    assert doc["out"] == str(Path("runs", "m"))
    # MACE-MP's loss, its stress weight per (eV/Å³)² as per GPa² here
    doc = from_mace_torch({"loss": "universal", "stress_weight": 100.0}, "m.yaml")
    assert doc["train"]["loss"] == "universal"
    assert doc["train"]["stress_weight"] == pytest.approx(100.0 / EV_PER_A3_IN_GPA ** 2)


def test_mace_torch_swa_stage_is_stage_two():
    doc = from_mace_torch({"swa": True, "start_swa": 60, "max_num_epochs": 80, "swa_lr": 2e-4,
                           "swa_energy_weight": 500.0, "swa_stress_weight": 10.0}, "m.yaml")
    two = TrainConfig.from_dict(doc["train"]).stage_two
    assert two.start == 0.75 and two.lr == 2e-4 and two.energy_weight == 500.0
    assert two.forces_weight == 100.0  # mace-torch's default, here too
    assert two.stress_weight == pytest.approx(10.0 / EV_PER_A3_IN_GPA ** 2)
    # mace-torch's later names; and without swa/stage_two its keys are ignored, as there
    later = from_mace_torch({"stage_two": "yes", "stage_two_lr": 2e-4}, "m.yaml")
    assert TrainConfig.from_dict(later["train"]).stage_two.lr == 2e-4
    assert "train" not in from_mace_torch({"swa_lr": 2e-4, "swa_energy_weight": 5.0}, "m.yaml")
    with pytest.raises(ConfigError, match="start_swa/start_stage_two: needs max_num_epochs"):
        from_mace_torch({"swa": True, "start_swa": 3}, "m.yaml")
    # as mace-torch: a start epoch turns the stage on; its default start is E // 4 × 3; a
    # loss without stress keeps none in stage two; forces_only has no stage two
    started = from_mace_torch({"start_swa": 4, "max_num_epochs": 5}, "m.yaml")
    assert TrainConfig.from_dict(started["train"]).stage_two.start == 0.8
    default = from_mace_torch({"swa": True, "max_num_epochs": 10, "loss": "weighted"}, "m.yaml")
    two = TrainConfig.from_dict(default["train"]).stage_two
    assert two.start == 0.6 and two.stress_weight == 0.0
    with pytest.raises(ConfigError, match="no stage two with the forces_only loss"):
        from_mace_torch({"swa": True, "loss": "forces_only"}, "m.yaml")


def test_mace_torch_e0s_from_a_json_file(tmp_path):
    (tmp_path / "e0s.json").write_text(json.dumps({"1": -13.6, "8": -2042.0}))
    doc = from_mace_torch({"E0s": str(tmp_path / "e0s.json")}, "m.yaml")
    assert doc["model"]["atomic_energies"] == {1: -13.6, 8: -2042.0}


def test_keys_without_an_equivalent_are_refused_in_one_line(tmp_path, capsys):
    doc = {**MACE_CONFIG, "swa_virials_weight": 1.0, "lbfgs": True, "valid_file": "valid.xyz",
           "wandb": True, "loss": "l1l2energyforces", "interaction": "RealAgnosticInteractionBlock",
           "hidden_irreps": "32x0e + 32x1o", "r_maxx": 5.0}
    (tmp_path / "mace.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli.main(["train", "--config", tmp_path / "mace.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "mace.yaml: read as a mace-torch config; no equivalent here for " in err
    for item in ("swa_virials_weight", "lbfgs", "valid_file", "wandb", "loss: 'l1l2energyforces'",
                 "interaction", "hidden_irreps (contradicts num_channels)",
                 "r_maxx (not mace-torch's)"):
        assert item in err, (item, err)
    with pytest.raises(ConfigError, match=r"stress_weight \(contradicts loss\)"):
        from_mace_torch({"loss": "weighted", "stress_weight": 10.0}, "m.yaml")


def test_the_mapping_names_only_mace_torchs_keys_and_the_docs_list_it():
    assert set(RULES) <= set(MACE_TORCH_KEYS)
    assert len(MACE_TORCH_KEYS) == len(set(MACE_TORCH_KEYS)) == 177
    text = (ROOT / "docs" / "guides" / "mace-torch.md").read_text()
    block = text[text.index(MAPPING_START) + len(MAPPING_START):text.index(MAPPING_END)]
    assert block.strip() == mapping_markdown().strip(), (
        "docs/guides/mace-torch.md's table differs: paste orbitgraph.train.mace_torch."
        "mapping_markdown() between the markers")


def test_the_readme_mace_torch_example_is_a_run_on_the_bundled_sample(tmp_path):
    """The README's mace.yaml reads as a run of the bundled sample, and its commands name
    that run: ``orbitgraph train --config mace.yaml``, then ``evaluate`` of its checkpoint
    on its store."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Train from a mace-torch config"):]
    section = section[:section.index("\n## ")]
    (doc,) = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    run = settings(tmp_path, doc)
    assert (ROOT / run.source).is_file(), run.source
    assert (run.out, run.store) == (str(Path("runs/mace-emt")), str(Path("runs/mace-emt/store")))
    assert (run.model.self_interaction, run.model.channels, run.model.correlation) == (
        "symmetric_contraction", 16, 2)
    assert (run.train.epochs, run.train.precision, run.train.ema_decay) == (2, "float32", 0.99)
    commands = re.findall(r"^orbitgraph .*$", section, re.M)
    assert commands == ["orbitgraph train --config mace.yaml",
                        f"orbitgraph evaluate {run.out}/checkpoint.pt --store {run.store}"]
    assert f"{run.out}/evaluate-test/predictions.extxyz" in section


def test_mace_torch_names_without_the_preset_say_how(tmp_path):
    with pytest.raises(ConfigError, match="r_max is mace-torch's name for cutoff: add "
                                          "preset: mace"):
        load_config({"r_max": 5.0})


def test_a_mace_torch_config_trains_from_its_train_file(tmp_path, capsys, monkeypatch):
    """The whole path: an extxyz train_file becomes a store in work_dir/name/store, the
    model trains, and a second call finds the store complete and the run finished."""
    monkeypatch.chdir(tmp_path)
    write_emt_extxyz(tmp_path / "train.extxyz")
    config = {"name": "emt", "work_dir": "runs", "model": "MACE", "train_file": "train.extxyz",
              "valid_fraction": 0.0, "r_max": 4.0, "num_channels": 4, "max_L": 0,
              "max_ell": 1, "correlation": 2, "num_interactions": 1, "MLP_irreps": "4x0e",
              "radial_MLP": "[8]", "E0s": "{13: -0.5, 29: -1.0}", "batch_size": 4,
              "max_num_epochs": 1, "default_dtype": "float64", "plot": False}
    (tmp_path / "mace.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    argv = ["train", "--config", "mace.yaml", "--quiet", "--set", "build.split.test_fraction=0",
            "--set", "train.tensorboard=false"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "emt"
    assert (run / "store" / "manifest.json").is_file() and (run / "best.pt").is_file()
    from orbitgraph.model import load_model
    model = load_model(run / "best.pt")
    assert model.config.atomic_energies == {13: -0.5, 29: -1.0}
    assert (model.config.channels, model.config.cutoff) == (4, 4.0)
    assert cli.main(argv) == 0
