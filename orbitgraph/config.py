"""The base of every orbitgraph configuration: typed pydantic v2 models, one-line errors.

Every configuration (graph, split, labels, cluster, model, train, loader, evaluate and
pipelines.yaml as a whole) is a :class:`Config`: a frozen model that refuses unknown keys,
coerces what YAML leaves ambiguous (``lr: 1e-3`` is read by PyYAML as the string "1e-3",
and becomes 0.001) and refuses what it cannot represent (``epochs: 2.5`` is not truncated;
``true`` is not a number). Each field declares its default, its constraints and, in its
description, its unit.

A rejection is a :class:`ConfigError` (a ValueError) whose message is one line naming the
full key path, the value and what was expected, e.g.
``train.loader.max_atoms: expected an integer >= 1, got 1.5``.
"""
from __future__ import annotations

import contextlib
import contextvars
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from orbitgraph.errors import ConfigError

# how many Config validations are in progress in this context: pydantic validates a nested
# config through its __init__ (overridden below), whose errors must then stay pydantic's so
# that the outermost validation reports them with their full key path
_DEPTH = contextvars.ContextVar("orbitgraph_config_depth", default=0)
# what Config.from_dict's ``context`` gives the validators meanwhile (pydantic's own context
# does not reach a nested config validated through its __init__)
_CONTEXT: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "orbitgraph_config_context", default=None)


def validation_context() -> dict:
    """The ``context`` of the :meth:`Config.from_dict` call in progress (empty if none)."""
    return _CONTEXT.get() or {}


@contextlib.contextmanager
def _validating(model: type, where: str):
    token = _DEPTH.set(_DEPTH.get() + 1)
    try:
        yield
    except ValidationError as err:
        if _DEPTH.get() > 1:
            raise
        raise config_error(err, model, where) from None
    finally:
        _DEPTH.reset(token)


class Config(BaseModel):
    """Base of orbitgraph's configurations.

    ``section`` is the key path of a config validated on its own (``train``, ``model``...),
    so that its errors name ``train.epochs`` rather than ``epochs``. Fields may also be
    given positionally, in declaration order, as with the dataclasses these replace.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    section: ClassVar[str] = ""

    def __init__(self, *args, **data):
        if args:
            names = list(type(self).model_fields)
            if len(args) > len(names):
                raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional "
                                f"arguments ({len(args)} given)")
            for name, value in zip(names, args, strict=False):
                if name in data:
                    raise TypeError(f"{type(self).__name__}: {name} given twice")
                data[name] = value
        with _validating(type(self), type(self).section):
            super().__init__(**data)

    @classmethod
    def from_dict(cls, d: dict | None, where: str | None = None, context: dict | None = None):
        """Validate a mapping (from YAML or JSON); errors name keys under ``where`` (default:
        the config's own section)."""
        if d is not None and not isinstance(d, dict):
            path = cls.section if where is None else where
            raise ConfigError(f"{path or cls.__name__}: expected a mapping of settings, got "
                              f"{d!r}", path)
        token = _CONTEXT.set(dict(context or {}))
        try:
            with _validating(cls, cls.section if where is None else where):
                return cls.model_validate(d or {})
        finally:
            _CONTEXT.reset(token)

    def to_dict(self) -> dict:
        """Plain Python values (nested configs as dicts, tuples as lists), JSON-ready."""
        return _plain(self.model_dump())

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False):
        """A copy with ``update`` applied, validated like a new config (pydantic's own
        model_copy does not validate the update)."""
        if not update:
            return super().model_copy(deep=deep)
        unknown = sorted(set(update) - set(type(self).model_fields))
        if unknown:
            raise ConfigError(f"{type(self).section or type(self).__name__}: unknown keys "
                              f"{unknown}")
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(update)
        with _validating(type(self), type(self).section):
            return type(self).model_validate(data)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value, info):
        """true/false are not numbers (pydantic would read them as 1/0)."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _leaf_types(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                raise PydanticCustomError("bool_not_number", "a boolean is not a number")
        return value


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------- describing types

def _unwrap(annotation) -> tuple[Any, list]:
    """(type, constraint metadata) of a possibly ``Annotated`` type."""
    metadata: list = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata.extend(extra)
    return annotation, metadata


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _leaf_types(annotation) -> set:
    annotation, _ = _unwrap(annotation)
    if _is_union(annotation):
        return set().union(*(_leaf_types(a) for a in typing.get_args(annotation)))
    origin = typing.get_origin(annotation)
    return {origin or annotation}


def _bounds(metadata: list) -> str:
    parts = []
    for m in metadata:
        items = m.metadata if isinstance(m, FieldInfo) else [m]
        for item in items:
            for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                if isinstance(item, getattr(annotated_types, attr.capitalize())):
                    parts.append(f"{sign} {getattr(item, attr)}")
    return " and ".join(parts)


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
          type(None): "null", Any: "any value", dict: "a mapping", list: "a list",
          Path: "a path"}


def describe(annotation, metadata: list = (), field: FieldInfo | None = None,
             bounds: bool = True) -> str:
    """What a value of ``annotation`` must be, in words: "an integer >= 1 or null" (without
    the "``>= 1``" when not ``bounds``)."""
    extra = field.json_schema_extra if field is not None else None
    if isinstance(extra, dict) and "expected" in extra:
        return str(extra["expected"])
    annotation, inner = _unwrap(annotation)
    for item in inner:
        if isinstance(item, FieldInfo) and isinstance(item.json_schema_extra, dict) and \
                "expected" in item.json_schema_extra:
            return str(item.json_schema_extra["expected"])
    metadata = [*metadata, *inner]
    if field is not None:
        metadata = [*field.metadata, *metadata]
    if _is_union(annotation):
        args = typing.get_args(annotation)
        kinds = [describe(a, metadata, bounds=bounds) for a in args if a is not type(None)]
        text = " or ".join(kinds)
        return text + " or null" if type(None) in args else text
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = describe(args[0]) if args else "values"
        return f"a list of {_plural(item)}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"a mapping of {_plural(describe(key))} to {_plural(describe(value))}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of settings"
    text = _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    limits = _bounds(metadata) if bounds else ""
    return f"{text} {limits}" if limits else text


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            head, _, rest = text[len(article):].partition(" ")
            return f"{head}s {rest}".strip()
    return text


# ------------------------------------------------------------------ one-line errors

def _walk(model: type, loc: tuple) -> tuple[list[str], Any, FieldInfo | None, int]:
    """Follow ``loc`` from ``model``: (path parts, annotation reached, its field, how many
    parts of loc were consumed). Stops at parts that are not keys (a union's branch tag)."""
    parts: list[str] = []
    annotation: Any = model
    field = None
    used = 0
    for i, part in enumerate(loc):
        ann, _ = _unwrap(annotation)
        if _is_union(ann):  # Optional[X]: follow X
            options = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(options) != 1:
                break
            ann, _ = _unwrap(options[0])
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if part not in ann.model_fields:
                break
            field = ann.model_fields[part]
            annotation = field.annotation
        elif origin is dict and isinstance(part, str):
            key, value = typing.get_args(ann)
            if loc[i + 1:i + 2] == ("[key]",):  # the key itself is refused
                parts.append(part)
                return parts, key, None, used + 2
            annotation, field = value, None
        elif origin in (tuple, list) and isinstance(part, int):
            annotation, field = typing.get_args(ann)[0], None
        else:
            break
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
        used += 1
    return parts, annotation, field, used


def _fields_of(annotation) -> list[str]:
    """The keys of a config type, or of the config of an optional section (``X | None``)."""
    ann, _ = _unwrap(annotation)
    if _is_union(ann):
        configs = [a for a in typing.get_args(ann)
                   if isinstance(a, type) and issubclass(a, BaseModel)]
        ann = configs[0] if len(configs) == 1 else ann
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def error_line(err: ValidationError, model: type, where: str = "") -> tuple[str, str]:
    """(one line, key path) for the first problem of a pydantic ValidationError raised while
    validating ``model`` at key path ``where``."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    kind = first["type"]

    def join(parts):  # a list's item as key[i], as the run file's stores[1].weight
        return ".".join(p for p in [where, *parts] if p).replace(".[", "[")

    if kind == "extra_forbidden":
        parts, annotation, _, _ = _walk(model, loc[:-1])
        parent = join(parts)
        unknown = [str(e["loc"][-1]) for e in errors
                   if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == loc[:-1]]
        known = _fields_of(annotation)
        what = (f"unknown key {unknown[0]!r}" if len(unknown) == 1
                else f"unknown keys {unknown}")
        line = (f"{parent or getattr(model, 'label', '') or model.__name__}: {what}; "
                f"expected one of {known}")
        return line, join([*parts, unknown[0]])
    parts, annotation, field, used = _walk(model, loc)
    path = join(parts)
    value = first.get("input")
    if kind == "value_error" or kind == "assertion_error":
        message = str(first["msg"]).removeprefix("Value error, ").removeprefix(
            "Assertion failed, ")
        line = f"{path}: {message}" if path else message
    elif kind == "missing":
        description = f" ({field.description})" if field is not None and field.description else ""
        line = f"{path}: required{description}"
    elif kind == "literal_error" and typing.get_origin(_unwrap(annotation)[0]) is Literal:
        options = ", ".join(str(a) for a in typing.get_args(_unwrap(annotation)[0]))
        line = f"{path}: {value!r} is not one of {options}"
    else:
        line = f"{path}: expected {describe(annotation, field=field)}, got {value!r}"
    others = {tuple(e["loc"][:used]) for e in errors} - {loc[:used]}
    if others:
        line += f" (and {len(others)} more {'problem' if len(others) == 1 else 'problems'})"
    return line, path


def config_error(err: ValidationError, model: type, where: str = "") -> ConfigError:
    line, path = error_line(err, model, where)
    return ConfigError(line, path)


# ------------------------------------------------------------------ reference tables

def reference_rows(model: type, prefix: str, collapse: dict | None = None
                   ) -> list[tuple[str, str, str, str, str]]:
    """(key path, type, default, constraint, description) of every setting of ``model``,
    nested configs expanded (a mapping of names to configs as ``KEY.NAME.*``), except the
    configs of ``collapse`` ({config class: what to write as its type}), for the
    configuration reference (docs/reference/configuration.md)."""
    collapse = collapse or {}
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        annotation, _ = _unwrap(field.annotation)
        if typing.get_origin(annotation) is dict:
            value, _ = _unwrap(typing.get_args(annotation)[1])
            if isinstance(value, type) and issubclass(value, BaseModel):
                rows.extend(reference_rows(value, f"{path}.NAME", collapse))
                continue
        optional = [a for a in typing.get_args(annotation) if a is not type(None)] \
            if _is_union(annotation) else []
        if len(optional) == 1 and isinstance(optional[0], type) and issubclass(optional[0],
                                                                             BaseModel):
            # an optional section (null: off): its own row, then its keys
            rows.append((path, "a mapping of settings or null", _show(field.default), "",
                         field.description or ""))
            rows.extend(reference_rows(optional[0], path, collapse))
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in collapse:
                rows.append((path, collapse[annotation], "{}", "", annotation.__doc__.split(
                    "\n")[0] if annotation.__doc__ else ""))
            else:
                rows.extend(reference_rows(annotation, path, collapse))
            continue
        if field.default_factory is not None:
            default = field.default_factory()
        else:
            default = field.default
        shown = "required" if default is PydanticUndefined else _show(default)
        kind = describe(field.annotation, field=field, bounds=False)
        bounds = _bounds([*field.metadata])
        rows.append((path, kind, shown, bounds, field.description or ""))
    return rows


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, BaseModel):
        return "{}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def markdown_table(rows) -> str:
    lines = ["| key | type | default | constraint | description |",
             "| --- | --- | --- | --- | --- |"]
    for path, kind, default, bounds, description in rows:
        cells = [f"`{path}`", kind, f"`{default}`", bounds, description]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ YAML

def yaml_value(text: str) -> Any:
    """``text`` read as YAML with PyYAML's safe loader (``1e-3`` a number, ``[32, 32]`` a
    list, ``null`` None). Raises ConfigError quoting the parser's problem in one line."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML ({' '.join(str(err).split())[:120]})") from None


def read_yaml(path: str | Path, what: str = "") -> dict:
    """The mapping a YAML file holds (``{}`` for an empty file): the one reader of
    pipelines.yaml, ``--config`` files and model YAMLs. ``what``: what the file holds, for
    the messages ("no such {what} file"). Raises MissingFileError when there is no such
    file and ConfigError, naming the file, when it is not valid YAML or holds something
    other than a mapping."""
    from orbitgraph.errors import MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such {what + ' ' if what else ''}file")
    try:
        data = yaml_value(path.read_text())
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping{' of ' + what if what else ''}, got "
                          f"{type(data).__name__} {data!r}")
    return data

