"""``pipelines.yaml``: sources, the stores built from them, and the experiments that reuse them.

    workdir: runs                      # stores and experiment outputs (relative to the file)
    cluster: {kind: local, workers: 2} # where builds run (see preprocess.cluster)
    sources:
      NAME: {path: PATH, format: mptrj-json}
    stores:
      NAME: {source: SOURCE_NAME, graph: {k: 16}, split: {val_fraction: 0.05}, ...}
    experiments:
      NAME:
        store: STORE_NAME              # or several, each step drawing its dataset by weight:
        # stores: [{store: STORE_A, weight: 0.6}, {store: STORE_B, weight: 0.4, name: b}]
        model: PRESET | {preset: mace, channels: 64, ...} | path/to/model.yaml
        train: {epochs: 10, lr: 0.001, loader: {max_atoms: 1024}, ...}
        evaluate: {split: test}
        threads: 1                     # CPU threads of its training (default: torch's)

Every key, its type, default and constraint is declared once, in :class:`PipelinesFile` and
the configs it holds (the configuration reference, docs/reference/configuration.md, is
generated from them). A store
lives in ``workdir/stores/NAME-ID`` where ID hashes what determines its contents, so
experiments naming the same store share one build, and changing a store's parameters never
overwrites the old one. Likewise an experiment's results live in
``workdir/experiments/NAME-ID`` where ID hashes its resolved configuration (store id, model,
training settings), ``workdir/experiments/NAME`` links to the latest, and a changed
configuration trains again without touching the earlier results
(:mod:`train.experiment_dirs`). Every mistake is reported as one line naming the key.

An experiment over several stores (``stores:``, :class:`ExperimentStore`) trains as a run
file's ``stores:`` does (:mod:`orbitgraph.train.datasets`, :mod:`orbitgraph.train.mixing`;
the first store is the primary, whose E0s the model keeps), each store built once and
shared with the other experiments that name it; its id hashes each store's id, name and
normalised weight, so a changed weight or store trains again. Its report and metrics file
give each dataset's errors on its own energy reference beside those of all its frames
(:func:`orbitgraph.train.evaluation.evaluate_datasets`).
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from orbitgraph.config import Config, read_yaml, yaml_value
from orbitgraph.errors import ConfigError, GraphMismatchError, MissingFileError
from orbitgraph.preprocess.cluster import ClusterConfig
from orbitgraph.preprocess.graph_params import graph_for_model
from orbitgraph.preprocess.store import open_store
from orbitgraph.preprocess.store.manifest import MANIFEST_FILE, read_manifest
from orbitgraph.preprocess.store.params import StoreParams
from orbitgraph.train.config import EvaluateConfig, TrainConfig
from orbitgraph.train.experiment_dirs import (
    changed_keys,
    config_id,
    point_latest,
    read_config,
    resolved_config,
    write_config,
)

log = logging.getLogger("orbitgraph.run")

class PipelineError(ConfigError):
    """A mistake in pipelines.yaml; the message names the key."""


class SourceDecl(Config):
    """A source of frames."""

    section = "source"

    path: Path = Field(description="MPtrj .json/.json.gz; extxyz, ASE .db/.aselmdb or "
                       "Alexandria .json.bz2 files: a file, folder or glob pattern (relative "
                       "to pipelines.yaml)")
    format: Literal["mptrj-json", "extxyz", "ase-db", "alexandria-json"] | None = Field(
        None, description="null: from the file name")


class StoreDecl(StoreParams):
    """A store: its source and the parameters that determine its contents."""

    source: str = Field(description="name of a declared source")


class ExperimentStore(Config):
    """One of the stores of an experiment over several: a declared store, its sampling
    weight and its dataset name."""

    section = "experiment.stores[]"

    store: str = Field(description="name of a declared store")
    weight: float = Field(1.0, gt=0, description="sampling weight: each training step draws "
                          "from this store with probability weight / (sum of the weights)")
    name: str | None = Field(None, min_length=1, description="the dataset's name in logs, "
                             "metrics and the calculator's dataset= (default: the store's "
                             "name)")

    @property
    def label(self) -> str:
        return self.name or self.store


class ExperimentDecl(Config):
    """A model trained on a store (or several, mixed by weight), then evaluated."""

    section = "experiment"

    store: str | None = Field(None, description="name of a declared store (or stores:)")
    stores: list[ExperimentStore] | None = Field(
        None, description="several declared stores, each {store, weight, name} (weight "
        "default 1, name default the store's): each training step draws its dataset by "
        "weight; the first is the primary (the model's E0 reference). Excludes store:")
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
            if (exp.store is None) == (exp.stores is None):
                which = "not both" if exp.store is not None else "got neither"
                raise ValueError(f"experiments.{name}: give store: (one store) or stores: "
                                 f"(several, with weights), {which}")
            if exp.store is not None and exp.store not in self.stores:
                raise ValueError(f"experiments.{name}.store: {exp.store!r} is not a declared "
                                 f"store; declared: {sorted(self.stores)}")
            for i, item in enumerate(exp.stores or ()):
                if item.store not in self.stores:
                    raise ValueError(f"experiments.{name}.stores[{i}].store: {item.store!r} is "
                                     f"not a declared store; declared: {sorted(self.stores)}")
            if exp.stores is not None:
                from orbitgraph.train.datasets import dataset_specs
                try:  # the run file's checks: at least one, each name once
                    dataset_specs([{"path": item.store, "weight": item.weight,
                                    "name": item.label} for item in exp.stores])
                except ConfigError as err:
                    raise ValueError(f"experiments.{name}.{err}") from None
        return self


@dataclass
class Pipelines:
    path: Path
    workdir: Path
    cluster: ClusterConfig
    sources: dict[str, SourceDecl]
    stores: dict[str, StoreDecl]
    experiments: dict[str, ExperimentDecl]
    _configs: dict[str, dict] = field(default_factory=dict, repr=False)  # experiment_config's

    # ------------------------------------------------------------------ stores
    def store_spec(self, name: str):
        from orbitgraph.preprocess.build import make_spec
        decl = self.stores[name]
        src = self.sources[decl.source]
        from orbitgraph.preprocess.sources.files import is_glob

        if not src.path.exists() and not is_glob(src.path):
            raise PipelineError(f"sources.{decl.source}.path: {src.path} does not exist",
                                f"sources.{decl.source}.path")
        return make_spec(src.path, decl, source_format=src.format)

    def store_path(self, name: str) -> Path:
        _, spec = self.store_spec(name)
        return self.workdir / "stores" / f"{name}-{spec.store_id}"

    def build(self, name: str, progress: bool = True, discard_partial: bool = False):
        from orbitgraph.preprocess.build import build_store
        if name not in self.stores:
            raise PipelineError(f"stores: no store named {name!r}; declared: {sorted(self.stores)}")
        decl = self.stores[name]
        src = self.sources[decl.source]
        return build_store(src.path, self.store_path(name), decl, source_format=src.format,
                           cluster=self.cluster, progress=progress,
                           discard_partial=discard_partial)

    # ------------------------------------------------------------- experiments
    def experiment_stores(self, name: str) -> list[str]:
        """The names of the stores experiment ``name`` trains on (the primary first)."""
        exp = self.experiments[name]
        return [exp.store] if exp.stores is None else [item.store for item in exp.stores]

    def store_key(self, name: str) -> str:
        """What experiment ``name``'s results are compared on: its store's name, or its
        stores' names joined by ``+``."""
        return "+".join(self.experiment_stores(name))

    def dataset_specs(self, name: str) -> list:
        """The :class:`~orbitgraph.train.datasets.DatasetSpec` of each store of an
        experiment over several stores (path: the store's folder, ``workdir/stores/NAME-ID``)."""
        from orbitgraph.train.datasets import DatasetSpec
        return [DatasetSpec(path=str(self.store_path(item.store)), weight=item.weight,
                            name=item.label) for item in self.experiments[name].stores]

    def experiment_config(self, name: str) -> dict:
        """The resolved configuration the experiment's results belong to: its store's id
        (over several stores: each one's store, name, id and normalised weight), model and
        training settings (:func:`train.experiment_dirs.resolved_config`)."""
        if name not in self._configs:
            from orbitgraph.model.config import load_config
            exp = self.experiments[name]
            if exp.stores is None:
                store_id = self.store_spec(exp.store)[1].store_id
            else:
                total = sum(item.weight for item in exp.stores)
                store_id = [{"store": item.store, "name": item.label,
                             "store_id": self.store_spec(item.store)[1].store_id,
                             # 12 digits: equal ratios are one configuration, whatever
                             # the floats' rounding (0.06 / 0.1 = 0.5999999999999999)
                             "weight": float(f"{item.weight / total:.12g}")}
                            for item in exp.stores]
            model = load_config(exp.model, where=f"experiments.{name}.model")
            self._configs[name] = resolved_config(store_id, model, exp.train)
        return self._configs[name]

    def experiment_dir(self, name: str) -> Path:
        """``workdir/experiments/NAME-ID``: the run directory of the experiment's current
        configuration (ID: :func:`train.experiment_dirs.config_id`)."""
        return (self.workdir / "experiments" /
                f"{name}-{config_id(self.experiment_config(name))}")

    def latest_link(self, name: str) -> Path:
        """``workdir/experiments/NAME``: a link to the run directory trained last."""
        return self.workdir / "experiments" / name

    def evaluate_settings(self, name: str) -> dict:
        """The experiment's ``evaluate`` settings, the device resolved (null: training's)."""
        exp = self.experiments[name]
        return {**exp.evaluate.to_dict(), "device": exp.evaluate.device or exp.train.device}

    def metrics_path(self, name: str) -> Path:
        exp = self.experiments[name]
        return self.experiment_dir(name) / f"metrics_{exp.evaluate.split}.json"

    def finished(self, name: str) -> bool:
        """Whether the experiment's current configuration has its checkpoint, its store
        and metrics evaluated with its current ``evaluate`` settings."""
        from orbitgraph.train.checkpointing import CHECKPOINT
        path = self.metrics_path(name)
        return ((self.experiment_dir(name) / CHECKPOINT).is_file() and
                all((self.store_path(store) / MANIFEST_FILE).is_file()
                    for store in self.experiment_stores(name)) and
                path.is_file() and
                json.loads(path.read_text()).get("evaluate") == self.evaluate_settings(name))

    def run_experiment(self, name: str, progress: bool = True) -> str:
        """Build the experiment's store if needed, train, evaluate; the text to print.

        Results are reused only where they belong to the experiment's current
        configuration (:mod:`train.experiment_dirs`): a run of it finished and evaluated
        with the current ``evaluate`` settings is not redone; a run of it stopped part-way
        is resumed; a changed configuration trains in a directory of its own, and a line
        says which keys changed. With ``threads``, torch uses that many CPU threads
        meanwhile (small models on a busy machine run fastest on one).

        Writes, in ``workdir/experiments/NAME-ID`` (and links ``workdir/experiments/NAME``
        to it): the configuration (``experiment.json``), checkpoints, ``metrics.csv`` (per
        epoch), ``step_losses.csv`` (per step), ``metrics_SPLIT.json`` (the test metrics,
        the weights evaluated, the ``evaluate`` settings, the baselines on the same frames,
        model size, steps, training wall time and the validation history),
        ``parity_SPLIT.npz`` (reference and predicted values, see
        :class:`orbitgraph.train.report.Pairs`), ``loss_curves.png`` and ``parity.png``.
        An experiment over several stores reports and records the metrics of all their
        frames, each dataset on its own energy reference, and each dataset's
        (``datasets`` in the metrics file, :func:`orbitgraph.train.evaluation.evaluate_datasets`).
        Raises PipelineError naming the key where a store's graphs cannot serve the model.
        """
        import torch

        if name not in self.experiments:
            raise PipelineError(f"experiments: no experiment named {name!r}; declared: "
                                f"{sorted(self.experiments)}")
        finished = self.finished(name)
        # stores built and checked before the run directory and the experiments/NAME link
        # change: a configuration that cannot train leaves the last results linked
        data = None if finished else self._prepare(name, progress)
        self._enter_run_dir(name, finished)
        if finished:
            return (f"experiment {name}: already finished; nothing to do (metrics in "
                    f"{self.metrics_path(name)})")
        threads = torch.get_num_threads()
        if self.experiments[name].threads is not None:
            torch.set_num_threads(self.experiments[name].threads)
        try:
            return self._train_and_evaluate(name, data)
        finally:
            torch.set_num_threads(threads)

    def _enter_run_dir(self, name: str, finished: bool) -> None:
        """Record the experiment's configuration in its run directory and link
        ``experiments/NAME`` to it; where the link pointed to another configuration's run,
        log which keys changed. Raises PipelineError where the directory records another
        configuration."""
        run, link = self.experiment_dir(name), self.latest_link(name)
        config = self.experiment_config(name)
        recorded = read_config(run)
        if recorded is not None and recorded != config:
            raise PipelineError(f"{run} holds the results of another configuration "
                                f"({', '.join(changed_keys(recorded, config)[:4])}); delete it "
                                f"to train experiment {name} there", f"experiments.{name}")
        latest = read_config(link) if link.is_symlink() else None
        if latest is not None and latest != config:
            changes = changed_keys(latest, config)
            shown = ", ".join(changes[:6]) + (f" and {len(changes) - 6} more"
                                              if len(changes) > 6 else "")
            log.info(f"experiment {name}: the configuration changed since "
                     f"{link.resolve().name} ({shown}); "
                     f"{'its results are those of' if finished else 'training it in'} "
                     f"{run.name} (the earlier results are kept)")
        write_config(run, config)
        point_latest(link, run)

    def _prepare(self, name: str, progress: bool):
        """Build the experiment's stores if needed and check, before training, that their
        graphs serve its model and that they hold frames to evaluate; the data the trainer
        takes (a store path, or the datasets' specs). Raises PipelineError naming the key."""
        from orbitgraph.model.config import load_config
        from orbitgraph.train.evaluation import frames_to_evaluate

        exp = self.experiments[name]
        stores = self.experiment_stores(name)
        store_path = self.store_path(stores[0])
        model_cfg = load_config(exp.model, where=f"experiments.{name}.model")
        for store in stores:  # each built once, whichever experiment names it first
            summary = self.build(store, progress=progress)
            log.info(summary.text())
        try:
            graph_for_model(read_manifest(store_path).graph, model_cfg.k,
                            model_cfg.rank_envelope, model_cfg.rank_envelope_width)
        except GraphMismatchError as err:
            key = f"experiments.{name}.model.{err.model_key}"
            raise PipelineError(f"{key}: {err} (store {stores[0]!r}: stores.{stores[0]}.graph "
                                "in pipelines.yaml)", key) from None
        data = store_path
        if exp.stores is not None:
            from orbitgraph.train.datasets import open_datasets
            data = self.dataset_specs(name)
            try:  # every store serves the model's graphs, before training
                open_datasets(data, model_cfg.k, model_cfg.rank_envelope,
                              model_cfg.rank_envelope_width)
            except GraphMismatchError as err:  # "stores[i]: dataset ... cannot serve ..."
                raise PipelineError(f"experiments.{name}.{err} (the stores' graph settings "
                                    "in pipelines.yaml)", f"experiments.{name}.stores") from None
        for store in stores:  # before training, not after
            frames_to_evaluate(open_store(self.store_path(store)), exp.evaluate.split)
        return data

    def _train_and_evaluate(self, name: str, data) -> str:
        from orbitgraph.model.config import load_config
        from orbitgraph.train.checkpointing import BEST, CHECKPOINT
        from orbitgraph.train.evaluation import evaluate, write_json
        from orbitgraph.train.plots import write_loss_curves, write_parity
        from orbitgraph.train.report import baselines, predict_pairs, results_table
        from orbitgraph.train.trainer import Advice, Trainer
        from orbitgraph.train.weights import load_potential

        exp = self.experiments[name]
        out = self.experiment_dir(name)
        metrics_path = self.metrics_path(name)
        store_path = self.store_path(self.experiment_stores(name)[0])
        model_cfg = load_config(exp.model, where=f"experiments.{name}.model")
        train_cfg = exp.train
        # the figures below replace the trainer's own (validation-split parity)
        trainer = Trainer(data, model_cfg, train_cfg.model_copy(update={"plots": False}),
                          out, advice=Advice(go_on="evaluating it",
                                             new_run=f"delete {out} to train it again"))
        step_losses = trainer.step_losses  # the loss curve, kept in the run directory
        result = trainer.fit()
        settings = self.evaluate_settings(name)
        split, device = settings["split"], settings["device"]
        if exp.stores is None:
            metrics = evaluate(out / BEST, store_path, split=split, device=device)
            store = trainer.store
            baseline = baselines(store, split)
            val_baseline = baselines(store, "val")
            saved = load_potential(out / BEST, device=device)
            pairs = predict_pairs(saved.model.double().eval(), store, saved.graph, split=split,
                                  device=device)
        else:
            from orbitgraph.train.evaluation import dataset_evaluation
            from orbitgraph.train.report import baseline_errors, pooled_baselines
            metrics, pairs = dataset_evaluation(
                out / BEST, {spec.label: spec.path for spec in data}, split=split,
                device=device, keep_pairs=True)
            baseline = metrics["baseline"]
            val_baseline = pooled_baselines([baseline_errors(d.store, "val")
                                             for d in trainer.datasets])
        record = {"experiment": name, "store": self.store_key(name),
                  "model": _model_label(exp.model),
                  "evaluate": settings, **metrics, "baseline": baseline,
                  "val_baseline": val_baseline,
                  "parameters": sum(p.numel() for p in trainer.model.parameters()),
                  "steps": trainer.state.step, "train_wall_s": result["wall_s"],
                  "history": trainer.state.history, "step_losses": step_losses.losses}
        write_json(metrics_path, record)
        pairs.thinned().save(out / f"parity_{split}.npz")
        plots = [write_loss_curves(out / "loss_curves.png", trainer.state.history, val_baseline,
                                   f"{name}: training and validation", step_losses.losses),
                 write_parity(out / "parity.png", pairs, metrics, baseline,
                              f"{name}: {split} split ({metrics['frames']} frames), best "
                              f"checkpoint")]
        lines = [f"experiment {name}: done ({trainer.state.step} steps, "
                 f"{result['wall_s']:.0f} s); {split} split against the baselines"
                 f"{' (all datasets, each on its own E0 reference)' if exp.stores else ''}:",
                 results_table(metrics, baseline)]
        for label, group in metrics.get("datasets", {}).items():
            lines += [f"dataset {label} ({group['frames']} frames of {group['store']}; "
                      "energies on its own E0 reference):",
                      results_table(group, group["baseline"])]
        stores_line = (f"  store       {store_path}" if exp.stores is None else
                       "  stores      " + ", ".join(str(self.store_path(s))
                                                 for s in self.experiment_stores(name)))
        return "\n".join([*lines, stores_line,
                          f"  checkpoints {out / CHECKPOINT}, {out / BEST}",
                          f"  metrics     {out / 'metrics.csv'}, {metrics_path}",
                          f"  plots       {', '.join(plots)}"])

    def compare(self, store: str, refresh_figure: bool = True) -> str:
        """The table comparing the experiments on ``store`` (a :meth:`store_key`: a store's
        name, or several joined by ``+``) that have results of their
        current configuration (from their metrics files) and, with ``refresh_figure``, when
        it is missing or when it shows other run directories, the side-by-side figure
        ``workdir/experiments/comparison-STORE.png``."""
        from orbitgraph.train.plots import write_comparison
        from orbitgraph.train.report import Pairs, comparison_table

        rows, missing, not_run = [], [], []
        for name in self.experiments:
            if self.store_key(name) != store:
                continue
            if not self.finished(name):
                not_run.append(name)
                continue
            record = json.loads(self.metrics_path(name).read_text())
            if "baseline" not in record:  # written before the baselines were recorded
                missing.append(name)
                continue
            rows.append(record)
        lines = [comparison_table(store, rows)]
        if not_run:
            lines.append(f"  (not compared, no results of their current configuration yet: "
                         f"{', '.join(not_run)})")
        if missing:
            lines.append(f"  (not compared, metrics from an older version: {', '.join(missing)};"
                         f" delete their folders under {self.workdir / 'experiments'} to rerun)")
        if rows:
            figure = self.workdir / "experiments" / f"comparison-{store}.png"
            # the run directories the figure shows, beside it: another set redraws it
            shown = figure.with_suffix(".json")
            runs = [self.experiment_dir(r["experiment"]).name for r in rows]
            if (refresh_figure or not figure.is_file() or not shown.is_file()
                    or json.loads(shown.read_text()) != runs):
                experiments = [{"name": r["experiment"], "history": r["history"],
                                "step_losses": r["step_losses"],
                                "metrics": r, "baseline": r["baseline"],
                                "val_baseline": r["val_baseline"],
                                "pairs": Pairs.load(self.experiment_dir(r["experiment"]) /
                                                    f"parity_{r['split']}.npz")}
                               for r in rows]
                write_comparison(figure, experiments, f"experiments on store {store}")
                shown.write_text(json.dumps(runs))
            lines.append(f"  figure      {figure}")
        return "\n".join(lines)

    def run(self, names: list[str] | None = None, progress: bool = True) -> None:
        """Run the experiments ``names`` (all if None) in order, printing each one's result,
        then compare the experiments that share each store."""
        names = list(self.experiments) if names is None else names
        ran = set()
        for name in names:
            if name in self.experiments and not self.finished(name):
                ran.add(self.store_key(name))
            print(self.run_experiment(name, progress=progress), flush=True)
        for store in dict.fromkeys(self.store_key(name) for name in names):
            print(self.compare(store, refresh_figure=store in ran), flush=True)


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
    try:
        data = read_yaml(path)
    except (ConfigError, MissingFileError) as err:
        raise PipelineError(str(err)) from None
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
            value = yaml_value(text)
        except ConfigError as err:
            raise ConfigError(f"--set {item}: the value is {err}") from None
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
