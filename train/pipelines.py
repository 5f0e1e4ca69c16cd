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

A store lives in ``workdir/stores/NAME-ID`` where ID hashes what determines its contents, so
experiments naming the same store share one build, and changing a store's parameters never
overwrites the old one. Every mistake is reported as one line naming the key.
"""
from __future__ import annotations

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
    def run_experiment(self, name: str, progress: bool = True, log=print) -> str:
        from model.config import load_config
        from train.config import TrainConfig
        from train.trainer import BEST, CHECKPOINT, Trainer, evaluate, write_json

        if name not in self.experiments:
            raise PipelineError(f"experiments: no experiment named {name!r}; declared: "
                                f"{sorted(self.experiments)}")
        exp = self.experiments[name]
        out = self.workdir / "experiments" / name
        metrics_path = out / f"metrics_{exp.evaluate_split}.json"
        store_path = self.store_path(exp.store)
        model_cfg = load_config(exp.model)
        train_cfg = TrainConfig.from_dict(exp.train)
        if metrics_path.is_file() and (out / CHECKPOINT).is_file() and \
                (store_path / MANIFEST_FILE).is_file():
            return (f"experiment {name}: already finished; nothing to do (metrics in "
                    f"{metrics_path})")
        summary = self.build(exp.store, progress=progress, log=log)
        log(summary.text())
        stored = read_manifest(store_path).graph
        wanted = replace(stored, k=model_cfg.k or stored.k)
        if not stored.can_serve(wanted):
            raise PipelineError(
                f"experiments.{name}.model.k: the experiment needs k={wanted.k}, store "
                f"{exp.store!r} was built with k={stored.k}; raise stores.{exp.store}.graph.k")
        trainer = Trainer(store_path, model_cfg, train_cfg, out)
        trainer.fit(log=log)
        metrics = evaluate(out / BEST, store_path, split=exp.evaluate_split,
                           device=train_cfg.device)
        write_json(metrics_path, metrics)
        from train.metrics import table
        return "\n".join([f"experiment {name}: done", table(metrics),
                          f"  store       {store_path}",
                          f"  checkpoints {out / CHECKPOINT}, {out / BEST}",
                          f"  metrics     {out / 'metrics.csv'}, {metrics_path}",
                          f"  plots       {out / 'loss_curves.png'}, {out / 'parity.png'}"])


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
        _only(d, {"store", "model", "train", "evaluate"}, f"experiments.{name}")
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
        experiments[name] = ExperimentDecl(name, d["store"], model,
                                           dict(_mapping(d.get("train"), "train")), split)
    return Pipelines(path, workdir, cluster, sources, stores, experiments)
