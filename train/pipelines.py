"""``pipelines.yaml``: sources, the stores built from them, and the experiments that reuse them.

    workdir: runs                      # stores and experiment outputs (relative to the file)
    cluster: {kind: local, workers: 2} # where builds run (see preprocess.cluster)
    sources:
      NAME: {path: PATH, format: mptrj-json | extxyz}
    stores:
      NAME:
        source: SOURCE_NAME
        graph: {k: 16, ties: include, tie_tolerance: 0.01, cutoff: null}
        backend: zarr | arrow
        energy_key: KEY                # labels (default: the source's convention; see
        forces_key: KEY                #   preprocess/sources/labels.py)
        stress_key: KEY
        virial_key: KEY
        frames_per_shard: 2000
        min_distance: 0.5
        split: {val_fraction: 0.05, test_fraction: 0.05, seed: 0}
    experiments:
      NAME:
        store: STORE_NAME
        model: PRESET | {preset: mace, channels: 64, ...} | path/to/model.yaml
        train: {epochs: 10, lr: 0.001, loader: {max_atoms: 1024}, ...}
        evaluate: {split: test}
        threads: 1                     # CPU threads of its training (default: torch's)

A store lives in ``workdir/stores/NAME-ID`` where ID hashes what determines its contents, so
experiments naming the same store share one build, and changing a store's parameters never
overwrites the old one. Every mistake is reported as one line naming the key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from preprocess.cluster import ClusterConfig
from preprocess.store.manifest import MANIFEST_FILE, read_manifest
from preprocess.store.params import GraphParams, LabelKeys, SplitParams


class PipelineError(ValueError):
    """A mistake in pipelines.yaml; the message names the key."""


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PipelineError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _only(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PipelineError(f"{where}: unknown key {unknown[0]!r}; expected one of {sorted(allowed)}")


@dataclass(frozen=True)
class SourceDecl:
    name: str
    path: Path
    format: str | None


@dataclass(frozen=True)
class StoreDecl:
    name: str
    source: str
    graph: GraphParams
    backend: str = "zarr"
    frames_per_shard: int = 2000
    min_distance: float = 0.5
    split: SplitParams = field(default_factory=SplitParams)
    labels: LabelKeys = field(default_factory=LabelKeys)


@dataclass(frozen=True)
class ExperimentDecl:
    name: str
    store: str
    model: object
    train: dict
    evaluate_split: str = "test"
    threads: int | None = None  # torch intra-op threads while it runs (None: torch's default)


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
        from preprocess.pipeline import make_spec
        decl = self.stores[name]
        src = self.sources[decl.source]
        if not src.path.exists():
            raise PipelineError(f"sources.{src.name}.path: {src.path} does not exist")
        return make_spec(src.path, source_format=src.format, graph=decl.graph,
                         backend=decl.backend, energy_key=decl.labels.energy, split=decl.split,
                         frames_per_shard=decl.frames_per_shard, min_distance=decl.min_distance,
                         forces_key=decl.labels.forces, stress_key=decl.labels.stress,
                         virial_key=decl.labels.virial)

    def store_path(self, name: str) -> Path:
        _, spec = self.store_spec(name)
        return self.workdir / "stores" / f"{name}-{spec.store_id}"

    def build(self, name: str, progress: bool = True, log=print):
        from preprocess.pipeline import build_store
        if name not in self.stores:
            raise PipelineError(f"stores: no store named {name!r}; declared: {sorted(self.stores)}")
        decl = self.stores[name]
        src = self.sources[decl.source]
        return build_store(src.path, self.store_path(name), source_format=src.format,
                           graph=decl.graph, backend=decl.backend, energy_key=decl.labels.energy,
                           split=decl.split, frames_per_shard=decl.frames_per_shard,
                           min_distance=decl.min_distance, cluster=self.cluster,
                           progress=progress, log=log, forces_key=decl.labels.forces,
                           stress_key=decl.labels.stress, virial_key=decl.labels.virial)

    # ------------------------------------------------------------- experiments
    def experiment_dir(self, name: str) -> Path:
        return self.workdir / "experiments" / name

    def metrics_path(self, name: str) -> Path:
        exp = self.experiments[name]
        return self.experiment_dir(name) / f"metrics_{exp.evaluate_split}.json"

    def finished(self, name: str) -> bool:
        """Whether the experiment's metrics, checkpoint and store are all there."""
        from train.trainer import CHECKPOINT
        return (self.metrics_path(name).is_file() and
                (self.experiment_dir(name) / CHECKPOINT).is_file() and
                (self.store_path(self.experiments[name].store) / MANIFEST_FILE).is_file())

    def run_experiment(self, name: str, progress: bool = True, log=print) -> str:
        """Build the experiment's store if needed, train, evaluate; the text to print.

        With ``threads``, torch uses that many CPU threads meanwhile (small models on a
        busy machine run fastest on one).

        Writes, in ``workdir/experiments/NAME``: checkpoints, ``metrics.csv`` (per epoch),
        ``metrics_SPLIT.json`` (the test metrics, the baselines on the same frames, model
        size, steps, training wall time and the validation history), ``parity_SPLIT.npz``
        (reference and predicted values, see :class:`train.report.Pairs`),
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
            return self._train_and_evaluate(name, progress, log)
        finally:
            torch.set_num_threads(threads)

    def _train_and_evaluate(self, name: str, progress: bool, log) -> str:
        from model.config import load_config
        from train.config import TrainConfig
        from train.plots import write_loss_curves, write_parity
        from train.report import baselines, load_potential, predict_pairs, results_table
        from train.trainer import BEST, CHECKPOINT, Trainer, evaluate, write_json

        exp = self.experiments[name]
        out = self.experiment_dir(name)
        metrics_path = self.metrics_path(name)
        store_path = self.store_path(exp.store)
        model_cfg = load_config(exp.model)
        train_cfg = TrainConfig.from_dict(exp.train)
        summary = self.build(exp.store, progress=progress, log=log)
        log(summary.text())
        stored = read_manifest(store_path).graph
        wanted = replace(stored, k=model_cfg.k or stored.k)
        if not stored.can_serve(wanted):
            raise PipelineError(
                f"experiments.{name}.model.k: the experiment needs k={wanted.k}, store "
                f"{exp.store!r} was built with k={stored.k}; raise stores.{exp.store}.graph.k")
        # the figures below replace the trainer's own (validation-split parity)
        trainer = Trainer(store_path, model_cfg, replace(train_cfg, plots=False), out)
        step_losses = _record_step_losses(trainer)
        result = trainer.fit(log=log)
        split = exp.evaluate_split
        metrics = evaluate(out / BEST, store_path, split=split, device=train_cfg.device)
        store = trainer.store
        baseline = baselines(store, split)
        val_baseline = baselines(store, "val")
        model, graph = load_potential(out / BEST, device=train_cfg.device)
        pairs = predict_pairs(model, store, graph, split=split, device=train_cfg.device)
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
        from train.plots import write_comparison
        from train.report import Pairs, comparison_table

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

    def run(self, names: list[str] | None = None, progress: bool = True, log=print) -> None:
        """Run the experiments ``names`` (all if None) in order, printing each one's result,
        then compare the experiments that share each store."""
        names = list(self.experiments) if names is None else names
        ran = set()
        for name in names:
            if name in self.experiments and not self.finished(name):
                ran.add(self.experiments[name].store)
            log(self.run_experiment(name, progress=progress, log=log))
        for store in dict.fromkeys(self.experiments[name].store for name in names):
            log(self.compare(store, refresh_figure=store in ran))


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


def load_pipelines(path: str | Path) -> Pipelines:
    """Parse and validate pipelines.yaml; raises PipelineError naming the key."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: not valid YAML ({' '.join(str(err).split())[:160]})") from None
    data = _mapping(data, str(path))
    _only(data, {"workdir", "cluster", "sources", "stores", "experiments"}, str(path))
    base = path.resolve().parent
    workdir = base / str(data.get("workdir", "runs"))
    try:
        cluster = ClusterConfig.from_dict(_mapping(data.get("cluster"), "cluster"), base)
    except (TypeError, ValueError) as err:
        raise PipelineError(str(err)) from None

    sources = {}
    for name, d in _mapping(data.get("sources"), "sources").items():
        d = _mapping(d, f"sources.{name}")
        _only(d, {"path", "format"}, f"sources.{name}")
        if "path" not in d:
            raise PipelineError(f"sources.{name}.path: required (a .json/.json.gz or extxyz path)")
        fmt = d.get("format")
        if fmt not in (None, "mptrj-json", "extxyz"):
            raise PipelineError(f"sources.{name}.format: {fmt!r}; expected mptrj-json or extxyz")
        sources[name] = SourceDecl(name, base / str(d["path"]), fmt)

    stores = {}
    for name, d in _mapping(data.get("stores"), "stores").items():
        d = _mapping(d, f"stores.{name}")
        _only(d, {"source", "graph", "backend", "energy_key", "forces_key", "stress_key",
                  "virial_key", "frames_per_shard", "min_distance", "split"}, f"stores.{name}")
        if d.get("source") not in sources:
            raise PipelineError(f"stores.{name}.source: {d.get('source')!r} is not a declared "
                                f"source; declared: {sorted(sources)}")
        try:
            graph = GraphParams.from_dict(_mapping(d.get("graph"), f"stores.{name}.graph"))
        except (TypeError, ValueError) as err:
            raise PipelineError(f"stores.{name}.graph: {err}") from None
        if d.get("backend", "zarr") not in ("zarr", "arrow"):
            raise PipelineError(f"stores.{name}.backend: {d['backend']!r}; expected zarr or arrow")
        try:
            labels = LabelKeys(*(d.get(f"{label}_key") for label in
                                 ("energy", "forces", "stress", "virial")))
        except ValueError as err:
            raise PipelineError(f"stores.{name}.{err}") from None
        fps = d.get("frames_per_shard", 2000)
        if not isinstance(fps, int) or fps < 1:
            raise PipelineError(f"stores.{name}.frames_per_shard: expected an integer >= 1, "
                                f"got {fps!r}")
        try:
            split = SplitParams(**_mapping(d.get("split"), f"stores.{name}.split"))
        except (TypeError, ValueError) as err:
            raise PipelineError(f"stores.{name}.split: {err}") from None
        stores[name] = StoreDecl(name, d["source"], graph, d.get("backend", "zarr"), fps,
                                 float(d.get("min_distance", 0.5)), split, labels)

    experiments = {}
    from model.config import load_config
    from train.config import TrainConfig
    for name, d in _mapping(data.get("experiments"), "experiments").items():
        d = _mapping(d, f"experiments.{name}")
        _only(d, {"store", "model", "train", "evaluate", "threads"}, f"experiments.{name}")
        if d.get("store") not in stores:
            raise PipelineError(f"experiments.{name}.store: {d.get('store')!r} is not a declared "
                                f"store; declared: {sorted(stores)}")
        model = d.get("model")
        if model is None:
            raise PipelineError(f"experiments.{name}.model: required (a preset name, a mapping "
                                "or a YAML file)")
        if isinstance(model, str) and (model.endswith((".yaml", ".yml"))):
            model = str(base / model)
        try:
            load_config(model)
            TrainConfig.from_dict(_mapping(d.get("train"), f"experiments.{name}.train"))
        except (TypeError, ValueError, FileNotFoundError) as err:
            raise PipelineError(f"experiments.{name}: {err}") from None
        ev = _mapping(d.get("evaluate"), f"experiments.{name}.evaluate")
        split = ev.get("split", "test")
        if split not in ("train", "val", "test"):
            raise PipelineError(f"experiments.{name}.evaluate.split: {split!r}; expected "
                                "train, val or test")
        threads = d.get("threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise PipelineError(f"experiments.{name}.threads: expected an integer >= 1 or "
                                f"null, got {threads!r}")
        experiments[name] = ExperimentDecl(name, d["store"], model,
                                           dict(_mapping(d.get("train"), "train")), split,
                                           threads)
    return Pipelines(path, workdir, cluster, sources, stores, experiments)
