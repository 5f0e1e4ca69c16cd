"""The configuration reference, generated from the declarations: every key of
pipelines.yaml, of ``train:`` and of ``model:`` (docs/reference/configuration.md, between
the markers; ``python -m orbitgraph.train.reference`` prints it)."""
from __future__ import annotations

from orbitgraph.config import markdown_table, reference_rows
from orbitgraph.model.config import MACE_TORCH_NAMES, PRESETS, ModelConfig
from orbitgraph.train.config import TrainConfig
from orbitgraph.train.pipelines import PipelinesFile
from orbitgraph.train.run_file import RunFile

REFERENCE_START = "<!-- config-reference:start -->"
REFERENCE_END = "<!-- config-reference:end -->"


def reference_markdown() -> str:
    """The configuration reference (docs/reference/configuration.md): every key of
    pipelines.yaml, of the run file (``orbitgraph train --config``), of ``train:`` and of
    ``model:``, with its type, default, constraint and description, generated from the
    declarations."""
    aliases = ", ".join(f"`{alias}` → `{name}`" for alias, name in MACE_TORCH_NAMES.items())
    parts = [
        "Generated from the declarations (`orbitgraph.train.reference.reference_markdown()`; "
        "a test checks this copy). Every key is also settable from the command line with "
        "`--set KEY.PATH=VALUE`.",
        "",
        "**pipelines.yaml** (`NAME`: a name of yours; each experiment's `train` and `model` "
        "take the keys of the tables below)",
        "",
        markdown_table(reference_rows(PipelinesFile, "",
                                      collapse={TrainConfig: "train settings (below)"})),
        "",
        "**run file** (`orbitgraph train --config run.yaml`; its `model`, `train` and `build` "
        "take the keys of the model and train tables below and of `orbitgraph build`'s "
        "`store.*`; `--store`, `--model` and `--out` win over the file)",
        "",
        markdown_table(reference_rows(RunFile, "")),
        "",
        "**train** (`experiments.NAME.train` in pipelines.yaml, or the `train:` section of "
        "`orbitgraph train --config`; `--set train.KEY=VALUE`)",
        "",
        markdown_table(reference_rows(TrainConfig, "train")),
        "",
        f"**model** (`experiments.NAME.model`, `orbitgraph train --model FILE` or the "
        f"`model:` section of `--config`). `preset` "
        f"({', '.join(PRESETS)}) starts from a preset; with `preset: mace`, mace-torch's "
        f"names are accepted: {aliases} (`correlation` and `pair_repulsion` are the same; "
        f"giving a name and its alias is an error).",
        "",
        markdown_table(reference_rows(ModelConfig, "model")),
    ]
    return "\n".join(parts)


if __name__ == "__main__":  # python -m orbitgraph.train.reference: the docs' block
    print(reference_markdown())
