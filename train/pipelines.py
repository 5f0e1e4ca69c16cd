"""``pipelines.yaml``: sources, the stores built from them, and the experiments that reuse them.

    workdir: runs                      # stores and experiment outputs (relative to the file)
    cluster: {kind: local, workers: 2} # where builds run (see preprocess.cluster)
    sources:
      NAME: {path: PATH, format: mptrj-json}
    stores:
      NAME: {source: SOURCE_NAME, graph: {k: 16}, split: {val_fraction: 0.05}, ...}
    experiments:
      NAME:
        store: STORE_NAME
        model: PRESET | {preset: mace, channels: 64, ...} | path/to/model.yaml
        train: {epochs: 10, lr: 0.001, loader: {max_atoms: 1024}, ...}
        evaluate: {split: test}
        threads: 1                     # CPU threads of its training (default: torch's)

Every key, its type, default and constraint is declared once, in :class:`PipelinesFile` and
the configs it holds (the README's configuration reference is generated from them). A store
lives in ``workdir/stores/NAME-ID`` where ID hashes what determines its contents, so
experiments naming the same store share one build, and changing a store's parameters never
overwrites the old one. Every mistake is reported as one line naming the key.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.graph_params import GraphMismatchError, graph_for_model
from orbitgraph.preprocess.store.manifest import MANIFEST_FILE, read_manifest
from orbitgraph.preprocess.store.params import StoreParams
from orbitgraph.train.config import EvaluateConfig, TrainConfig
from pydantic import Field, model_validator

from orbitgraph.config import Config, ConfigError

log = logging.getLogger("orbitgraph.run")

class PipelineError(ConfigError):
    """A mistake in pipelines.yaml; the message names the key."""


class SourceDecl(Config):
    """A source of frames."""

    section = "source"

    path: Path = Field(description="MPtrj .json/.json.gz, or an extxyz file or folder "
                       "(relative to pipelines.yaml)")
    format: Literal["mptrj-json", "extxyz"] | None = Field(None, description="null: from "
                                                           "the file name")


class StoreDecl(StoreParams):
    """A store: its source and the parameters that determine its contents."""

    source: str = Field(description="name of a declared source")


class ExperimentDecl(Config):
    """A model trained on a store, then evaluated."""

    section = "experiment"

    store: str = Field(description="name of a declared store")
    model: str | dict[str, Any] = Field(description="a preset name, a mapping of model "
                                        "settings (`preset` and the model keys below) or a "
                                        "YAML file (relative to pipelines.yaml)")
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    threads: int | None = Field(None, ge=1, description="torch's CPU threads while it trains "
                                "(null: torch's default)")


class PipelinesFile(Config):
    """pipelines.yaml as a whole."""

    label: ClassVar[str] = "pipelines.yaml"

    workdir: str = Field("runs", description="stores (stores/NAME-ID) and experiments "
                         "(experiments/NAME), relative to pipelines.yaml")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    sources: dict[str, SourceDecl] = Field(default_factory=dict)
    stores: dict[str, StoreDecl] = Field(default_factory=dict)
    experiments: dict[str, ExperimentDecl] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self):
        for name, store in self.stores.items():
            if store.source not in self.sources:
                raise ValueError(f"stores.{name}.source: {store.source!r} is not a declared "
                                 f"source; declared: {sorted(self.sources)}")
        for name, exp in self.experiments.items():
            if exp.store not in self.stores:
                raise ValueError(f"experiments.{name}.store: {exp.store!r} is not a declared "
                                 f"store; declared: {sorted(self.stores)}")
        return self


@dataclass
class Pipelines:
    path: Path
    workdir: Path
    cluster: ClusterConfig
    sources: dict[str, SourceDecl]
    stores: dict[str, StoreDecl]
    experiments: dict[str, ExperimentDecl]

    # ------------------------------------------------------------------ stores
    def store_spec(self, name: str):
        from orbitgraph.preprocess.build import make_spec
        decl = self.stores[name]
        src = self.sources[decl.source]
        if not src.path.exists():
            raise PipelineError(f"sources.{decl.source}.path: {src.path} does not exist",
                                f"sources.{decl.source}.path")
        return make_spec(src.path, decl, source_format=src.format)

    def store_path(self, name: str) -> Path:
        _, spec = self.store_spec(name)
        return self.workdir / "stores" / f"{name}-{spec.store_id}"

    def build(self, name: str, progress: bool = True):
        from orbitgraph.preprocess.build import build_store
        if name not in self.stores:
            raise PipelineError(f"stores: no store named {name!r}; declared: {sorted(self.stores)}")
        decl = self.stores[name]
        src = self.sources[decl.source]
        return build_store(src.path, self.store_path(name), decl, source_format=src.format,
                           cluster=self.cluster, progress=progress)

    # ------------------------------------------------------------- experiments
    def experiment_dir(self, name: str) -> Path:
        return self.workdir / "experiments" / name

    def metrics_path(self, name: str) -> Path:
        exp = self.experiments[name]
        return self.experiment_dir(name) / f"metrics_{exp.evaluate.split}.json"

    def finished(self, name: str) -> bool:
        """Whether the experiment's metrics, checkpoint and store are all there."""
        from orbitgraph.train.trainer import CHECKPOINT
        return (self.metrics_path(name).is_file() and
                (self.experiment_dir(name) / CHECKPOINT).is_file() and
                (self.store_path(self.experiments[name].store) / MANIFEST_FILE).is_file())

    def run_experiment(self, name: str, progress: bool = True) -> str:
        """Build the experiment's store if needed, train, evaluate; the text to print.

        With ``threads``, torch uses that many CPU threads meanwhile (small models on a
        busy machine run fastest on one).

        Writes, in ``workdir/experiments/NAME``: checkpoints, ``metrics.csv`` (per epoch),
        ``metrics_SPLIT.json`` (the test metrics, the baselines on the same frames, model
        size, steps, training wall time and the validation history), ``parity_SPLIT.npz``
        (reference and predicted values, see :class:`orbitgraph.train.report.Pairs`),
        ``loss_curves.png`` and ``parity.png``.
        """
        import torch

        if name not in self.experiments:
            raise PipelineError(f"experiments: no experiment named {name!r}; declared: "
                                f"{sorted(self.experiments)}")
        if self.finished(name):
            return (f"experiment {name}: already finished; nothing to do (metrics in "
                    f"{self.metrics_path(name)})")
        threads = torch.get_num_threads()
        if self.experiments[name].threads is not None:
            torch.set_num_threads(self.experiments[name].threads)
        try:
            return self._train_and_evaluate(name, progress)
        finally:
            torch.set_num_threads(threads)

    def _train_and_evaluate(self, name: str, progress: bool) -> str:
        from orbitgraph.model.config import load_config
        from orbitgraph.train.plots import write_loss_curves, write_parity
        from orbitgraph.train.report import baselines, load_potential, predict_pairs, results_table
        from orbitgraph.train.trainer import BEST, CHECKPOINT, Trainer, evaluate, write_json

        exp = self.experiments[name]
        out = self.experiment_dir(name)
        metrics_path = self.metrics_path(name)
        store_path = self.store_path(exp.store)
        model_cfg = load_config(exp.model, where=f"experiments.{name}.model")
        train_cfg = exp.train
        summary = self.build(exp.store, progress=progress)
        log.info(summary.text())
        try:
            graph_for_model(read_manifest(store_path).graph, model_cfg.k,
                            model_cfg.rank_envelope, model_cfg.rank_envelope_width)
        except GraphMismatchError as err:
            key = f"experiments.{name}.model.{err.model_key}"
            raise PipelineError(f"{key}: {err} (store {exp.store!r}: stores.{exp.store}.graph "
                                "in pipelines.yaml)", key) from None
        # the figures below replace the trainer's own (validation-split parity)
        trainer = Trainer(store_path, model_cfg, train_cfg.model_copy(update={"plots": False}),
                          out)
        step_losses = _record_step_losses(trainer)
        result = trainer.fit()
        split = exp.evaluate.split
        device = exp.evaluate.device or train_cfg.device
        metrics = evaluate(out / BEST, store_path, split=split, device=device)
        store = trainer.store
        baseline = baselines(store, split)
        val_baseline = baselines(store, "val")
        model, graph = load_potential(out / BEST, device=device)
        pairs = predict_pairs(model, store, graph, split=split, device=device)
        record = {"experiment": name, "store": exp.store, "model": _model_label(exp.model),
                  **metrics, "baseline": baseline, "val_baseline": val_baseline,
                  "parameters": sum(p.numel() for p in trainer.model.parameters()),
                  "steps": trainer.state.step, "train_wall_s": result["wall_s"],
                  "history": trainer.state.history, "step_losses": step_losses}
        write_json(metrics_path, record)
        pairs.thinned().save(out / f"parity_{split}.npz")
        plots = [write_loss_curves(out / "loss_curves.png", trainer.state.history, val_baseline,
                                   f"{name}: training and validation", step_losses),
                 write_parity(out / "parity.png", pairs, metrics, baseline,
                              f"{name}: {split} split ({metrics['frames']} frames), best "
                              f"checkpoint")]
        return "\n".join([f"experiment {name}: done ({trainer.state.step} steps, "
                          f"{result['wall_s']:.0f} s); {split} split against the baselines:",
                          results_table(metrics, baseline),
                          f"  store       {store_path}",
                          f"  checkpoints {out / CHECKPOINT}, {out / BEST}",
                          f"  metrics     {out / 'metrics.csv'}, {metrics_path}",
                          f"  plots       {', '.join(plots)}"])

    def compare(self, store: str, refresh_figure: bool = True) -> str:
        """The table comparing every finished experiment on ``store`` (from their metrics
        files) and, with ``refresh_figure`` or when it is missing, the side-by-side figure
        ``workdir/experiments/comparison-STORE.png``."""
        from orbitgraph.train.plots import write_comparison
        from orbitgraph.train.report import Pairs, comparison_table

        rows, missing = [], []
        for name, exp in self.experiments.items():
            path = self.metrics_path(name)
            if exp.store != store or not path.is_file():
                continue
            record = json.loads(path.read_text())
            if "baseline" not in record:  # written before the baselines were recorded
                missing.append(name)
                continue
            rows.append(record)
        lines = [comparison_table(store, rows)]
        if missing:
            lines.append(f"  (not compared, metrics from an older version: {', '.join(missing)};"
                         f" delete their folders under {self.workdir / 'experiments'} to rerun)")
        if rows:
            figure = self.workdir / "experiments" / f"comparison-{store}.png"
            if refresh_figure or not figure.is_file():
                experiments = [{"name": r["experiment"], "history": r["history"],
                                "step_losses": r["step_losses"],
                                "metrics": r, "baseline": r["baseline"],
                                "val_baseline": r["val_baseline"],
                                "pairs": Pairs.load(self.experiment_dir(r["experiment"]) /
                                                    f"parity_{r['split']}.npz")}
                               for r in rows]
                write_comparison(figure, experiments, f"experiments on store {store}")
            lines.append(f"  figure      {figure}")
        return "\n".join(lines)

    def run(self, names: list[str] | None = None, progress: bool = True) -> None:
        """Run the experiments ``names`` (all if None) in order, printing each one's result,
        then compare the experiments that share each store."""
        names = list(self.experiments) if names is None else names
        ran = set()
        for name in names:
            if name in self.experiments and not self.finished(name):
                ran.add(self.experiments[name].store)
            print(self.run_experiment(name, progress=progress), flush=True)
        for store in dict.fromkeys(self.experiments[name].store for name in names):
            print(self.compare(store, refresh_figure=store in ran), flush=True)


def _record_step_losses(trainer) -> list[tuple[int, float]]:
    """(step, batch loss) of every optimiser step the trainer takes from now on, for the
    loss curve (the trainer's history holds one mean per epoch)."""
    losses = []
    step = trainer.train_step

    def recording(batch):
        loss = step(batch)
        losses.append((trainer.state.step, loss))
        return loss

    trainer.train_step = recording
    return losses


def _model_label(model) -> str:
    """How the comparison table names an experiment's model: its preset or file name."""
    if isinstance(model, dict):
        return str(model.get("preset", model.get("kind", "custom")))
    return Path(str(model)).stem


def load_pipelines(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Pipelines:
    """Parse and validate pipelines.yaml, with ``overrides`` (``KEY.PATH=VALUE``, as the
    CLI's ``--set``) applied over the file; raises PipelineError naming the key."""
    from orbitgraph.model.config import load_config

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())[:160]
        raise PipelineError(f"{path}: not valid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping, got {type(data).__name__} {data!r}")
    try:
        data = apply_overrides(data, overrides)
        config = PipelinesFile.from_dict(data, where="", context={"base": path.resolve().parent})
    except ConfigError as err:
        raise PipelineError(str(err), err.path) from None
    base = path.resolve().parent
    sources = {name: src.model_copy(update={"path": base / src.path})
               for name, src in config.sources.items()}
    experiments = {}
    for name, exp in config.experiments.items():
        if isinstance(exp.model, str) and exp.model.endswith((".yaml", ".yml")):
            exp = exp.model_copy(update={"model": str(base / exp.model)})
        try:
            load_config(exp.model, where=f"experiments.{name}.model")
        except ConfigError as err:
            raise PipelineError(str(err), err.path) from None
        except FileNotFoundError as err:
            raise PipelineError(f"experiments.{name}.model: {err}",
                                f"experiments.{name}.model") from None
        experiments[name] = exp
    return Pipelines(path, base / config.workdir, config.cluster, sources, dict(config.stores),
                     experiments)


def apply_overrides(data: dict, overrides) -> dict:
    """A copy of ``data`` with each ``KEY.PATH=VALUE`` of ``overrides`` set (VALUE read as
    YAML, so ``1e-3`` is a number and ``[32, 32]`` a list)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY.PATH=VALUE, e.g. train.lr=0.001")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item}: the value is not valid YAML "
                              f"({' '.join(str(err).split())[:120]})") from None
        set_path(data, key.strip(), value)
    return data


def set_path(data: dict, key: str, value) -> None:
    """Set ``data[a][b][c] = value`` for ``key`` "a.b.c", creating the mappings on the way;
    a model given as a preset name becomes ``{preset: NAME}`` so that its keys can be set."""
    *parents, last = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.get(part)
        if part == "model" and isinstance(child, str) and not child.endswith((".yaml", ".yml")):
            child = node[part] = {"preset": child}
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parents[:i + 1])
            raise ConfigError(f"{key}: {where} is {child!r}, not a mapping of settings", where)
        node = child
    node[last] = value
