"""Schemas of the JSON cards and YAML configs pinn_lora reads, and a small validator.

The files pinn_lora reads from disk (base-model cards ``<name>.json``, adapter cards
``card.json``, the Hydra configs under ``configs/``) are parsed as plain data (``json.loads``,
``yaml.safe_load``/OmegaConf) and never instantiate classes. Before any value of a card is used,
the card is checked against its schema here, so a damaged or foreign file is refused with one
line naming the file, the key and what is expected, e.g.::

    card /data/b.json: key 'network.layers' is 'abc'; expected a list of at least 2 integers >= 1

A schema is a plain dict in a subset of JSON Schema's vocabulary (no dependency needed):
``type`` (a name or a tuple of names: object, array, string, integer, number, boolean, null),
``const``, ``enum``, ``pattern`` (strings, full match), ``min_length``, ``minimum`` /
``exclusive_minimum`` (numbers; ``number`` also means finite unless ``allow_nonfinite``), ``items``, ``min_items``
(arrays), ``required``, ``properties`` and ``additional`` (objects: the schema of other keys;
``True`` allows anything, ``False`` refuses unknown keys), and ``doc`` (how the expected value
is described in messages, instead of the generated description).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

from pinn_lora.store.tensors import CheckpointError

CARD_KIND = "pinn_lora.adapter"  # the "kind" of an adapter card


def config_dir() -> str:
    """``configs/`` of a checkout or editable install, else the copy inside the wheel."""
    here = Path(__file__).resolve().parent.parent  # the package folder
    for cand in (here.parent / "configs", here / "configs"):
        if (cand / "adapt.yaml").is_file():
            return str(cand)
    raise FileNotFoundError(f"pinn_lora's Hydra configs were not found next to {here}")


class SchemaError(CheckpointError):
    """A card or config does not match its schema; the message names the file, the key and what
    is expected."""


_TYPE_WORDS = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a finite number", "boolean": "true or false", "null": "null"}


def _types(schema: Mapping[str, Any]) -> tuple[str, ...]:
    t = schema.get("type", ())
    return (t,) if isinstance(t, str) else tuple(t)


def describe(schema: Mapping[str, Any] | bool) -> str:
    """What ``schema`` accepts, in words (for messages)."""
    if schema is True:
        return "any value"
    if "doc" in schema:
        return schema["doc"]
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    parts = []
    for t in _types(schema):
        word = _TYPE_WORDS[t]
        if t in ("integer", "number"):
            if "minimum" in schema:
                word += f" >= {schema['minimum']:g}"
            if "exclusive_minimum" in schema:
                word += f" > {schema['exclusive_minimum']:g}"
        if t == "array" and "items" in schema:
            item = describe(schema["items"])
            word = (f"a list of at least {schema['min_items']} ({item})" if schema.get("min_items")
                    else f"a list of ({item})")
        if t == "string" and schema.get("min_length"):
            word = "a non-empty string"
        parts.append(word)
    return " or ".join(parts) or "any value"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, Mapping)
    if t == "array":
        return isinstance(value, (list, tuple))
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    raise ValueError(f"schema: unknown type {t!r}")


def errors(value: Any, schema: Mapping[str, Any] | bool, path: str = "") -> list[tuple[str, str]]:
    """Every (key path, problem) where ``value`` does not match ``schema``; empty when it does."""
    if schema is True:
        return []
    if schema is False:
        return [(path, "is not an allowed key")]
    where = path or "(top level)"
    want = describe(schema)
    types = _types(schema)
    if schema.get("allow_nonfinite") and isinstance(value, float) and not math.isfinite(value):
        types = ()  # a recorded measurement may be nan/inf (a diverged run's error)
    if types and not any(_is(value, t) for t in types):
        return [(where, f"is {_short(value)}; expected {want}")]
    if "const" in schema and value != schema["const"]:
        return [(where, f"is {_short(value)}; expected {want}")]
    if "enum" in schema and value not in schema["enum"]:
        return [(where, f"is {_short(value)}; expected {want}")]
    if isinstance(value, str):
        if schema.get("min_length") and len(value) < schema["min_length"]:
            return [(where, f"is {_short(value)}; expected {want}")]
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            return [(where, f"is {_short(value)}; expected {want}")]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and not value >= schema["minimum"]:
            return [(where, f"is {_short(value)}; expected {want}")]
        if "exclusive_minimum" in schema and not value > schema["exclusive_minimum"]:
            return [(where, f"is {_short(value)}; expected {want}")]
    out: list[tuple[str, str]] = []
    if isinstance(value, (list, tuple)):
        if len(value) < schema.get("min_items", 0):
            return [(where, f"is {_short(value)}; expected {want}")]
        if "items" in schema:
            for i, item in enumerate(value):
                out += errors(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, Mapping):
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            prefix = f"{path}." if path else ""
            return [(where, "lacks " + ", ".join(f"{prefix}{k}" for k in missing))]
        props = schema.get("properties", {})
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                out.append((sub, "is not a string key"))
            elif key in props:
                out += errors(item, props[key], sub)
            else:
                out += errors(item, schema.get("additional", True), sub)
    return out


def validate(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    """Return ``value`` if it matches ``schema``, else raise :class:`SchemaError` naming ``where``
    (the file), the first offending key and what is expected (and how many more there are)."""
    found = errors(value, schema)
    if found:
        key, problem = found[0]
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        if problem.startswith("lacks"):
            raise SchemaError(f"{where} {problem}{more}")
        raise SchemaError(f"{where}: key {key!r} {problem}{more}")
    return value


# ---- the building blocks ---------------------------------------------------------------------------
SHA256 = {"type": "string", "pattern": "[0-9a-f]{64}", "doc": "a sha256 digest (64 lowercase hexadecimal digits)"}
NONEMPTY = {"type": "string", "min_length": 1}
COUNT = {"type": "integer", "minimum": 0}
COEFFICIENTS = {"type": "object", "additional": {"type": "number"},
                "doc": "an object of coefficient name -> finite number"}


def _activations() -> list[str]:
    from pinn_lora.model.network import ACTIVATIONS

    return sorted(ACTIVATIONS)


def network_schema(activation_required: bool) -> dict[str, Any]:
    """``{"layers": [2, 64, ..., 1], "activation": "tanh"}``."""
    return {"type": "object", "required": ["layers"] + (["activation"] if activation_required else []),
            "properties": {"layers": {"type": "array", "items": {"type": "integer", "minimum": 1}, "min_items": 2,
                                      "doc": "a list of at least 2 integers >= 1 (the layer widths)"},
                           "activation": {"type": "string", "enum": _activations()}}}


def base_card_schema() -> dict[str, Any]:
    """A base model's card (``pinn_lora/zoo/<name>.json`` or one written by :func:`pinn_lora.save_base`).
    Keys other than these are allowed (a card may carry more notes)."""
    number_or_null = {"type": ("number", "null"), "allow_nonfinite": True, "doc": "a number or null"}
    return {"type": "object", "required": ["problem", "coefficients", "network", "weights_sha256"], "properties": {
        "problem": NONEMPTY, "coefficients": COEFFICIENTS, "network": network_schema(True),
        "weights_sha256": SHA256, "relative_l2": number_or_null, "steps": COUNT, "seed": COUNT,
        "wall_time_s": number_or_null, "status": {"type": "string"}, "dtype": {"type": "string"},
        "device": {"type": "string"}, "recipe": {"type": "object"}, "eval_grid": {"type": "object"},
        "continued_from": {"type": "object"}, "package_version": {"type": "string"},
        "torch_version": {"type": "string"}, "python": {"type": "string"}}}


METHOD_OPTION = {"type": ("string", "integer", "number", "boolean", "null", "array"), "items": {"type": "integer"},
                 "doc": "a number, string, true/false, null or a list of layer indices"}


def adapter_card_schema() -> dict[str, Any]:
    """An adapter's ``card.json`` (written by :func:`pinn_lora.save_adapter`; extra keys allowed)."""
    maybe = {"type": ("string", "null")}
    return {"type": "object", "required": ["kind", "method", "base"], "properties": {
        "kind": {"const": CARD_KIND},
        "package_version": {"type": "string"},
        "method": {"type": "object", "required": ["name"], "properties": {"name": NONEMPTY},
                   "additional": METHOD_OPTION},
        "adapted_layers": {"type": "array", "items": COUNT},
        "layer_ranks": {"type": "object", "additional": {"type": "integer", "minimum": 1},
                        "doc": "an object of layer index -> rank (integer >= 1)"},
        "trainable_parameters": COUNT,
        "problem": maybe,
        "coefficients": {**COEFFICIENTS, "type": ("object", "null"), "doc": "null or " + COEFFICIENTS["doc"]},
        "base": {"type": "object", "required": ["network"], "properties": {
            "problem": maybe, "coefficients": {**COEFFICIENTS, "type": ("object", "null"),
                                               "doc": "null or " + COEFFICIENTS["doc"]},
            "network": network_schema(False),
            "weights_sha256": {**SHA256, "type": ("string", "null"), "doc": "null or " + SHA256["doc"]},
            "fingerprint": {**SHA256, "type": ("string", "null"), "doc": "null or " + SHA256["doc"]}}},
        "weights_sha256": SHA256,
        "contents": {"type": "string"}}}


def family_card_schema() -> dict[str, Any]:
    """A family's ``family.json`` (written by :meth:`pinn_lora.runs.ranges.Family.save`; extra keys allowed)."""
    number = {"type": "number"}
    return {"type": "object", "required": ["kind", "problem", "coefficients", "over", "range", "network",
                                           "method", "weights_sha256"], "properties": {
        "kind": {"const": "pinn_lora.family"},
        "problem": NONEMPTY, "coefficients": COEFFICIENTS, "over": NONEMPTY,
        "range": {"type": "array", "items": number, "min_items": 2, "doc": "[low, high]"},
        "network": network_schema(True),
        "method": {"type": "object", "required": ["name"], "properties": {"name": NONEMPTY},
                   "additional": METHOD_OPTION},
        "anchors": {"type": "array", "min_items": 2, "items": {
            "type": "object", "required": ["value"], "properties": {"value": number}}},
        "builder": {"enum": ["bank", "hyper"]}, "interpolate": {"enum": ["weights", "solution", "cubic"]},
        "hyper": {"type": "object", "required": ["rank", "width"], "properties": {
            "rank": {"type": "integer", "minimum": 1}, "width": {"type": "integer", "minimum": 1}}},
        "weights_sha256": SHA256, "status": {"type": "string"}}}


# ---- the Hydra configs (configs/*.yaml): the keys the code reads and their types ---------------------
_OPT_COUNT = {"type": ("integer", "null"), "minimum": 0}
_STR = {"type": "string"}
_OPT_STR = {"type": ("string", "null")}
_BOOL = {"type": "boolean"}
_DEFAULTS = {"type": "array", "min_items": 1}

# adapt.yaml holds its defaults list and Hydra's settings; its top-level keys, their defaults and types are
# pinn_lora.runs.settings.AdaptConfig, the schema Hydra merges it onto (an unknown key is refused when composing)
ADAPT_CONFIG = {"type": "object", "additional": False, "required": ["defaults", "hydra"], "properties": {
    "defaults": _DEFAULTS, "hydra": {"type": "object", "required": ["run"]}}}

PRETRAIN_CONFIG = {"type": "object", "required": ["defaults", "seed", "device", "dtype", "progress", "out", "steps",
                                                  "lbfgs_steps", "init_from", "hydra"], "properties": {
    "defaults": _DEFAULTS, "seed": COUNT, "device": _STR, "dtype": {"enum": ["float64", "float32"]},
    "progress": _BOOL, "out": NONEMPTY, "steps": _OPT_COUNT, "lbfgs_steps": _OPT_COUNT, "init_from": _OPT_STR,
    "debug": _BOOL, "checkpoint_every": COUNT, "resume": _BOOL, "hydra": {"type": "object", "required": ["run"]},
    "n_points": {"type": ("integer", "null"), "minimum": 1}, "resample_every": {"type": ("integer", "null"), "minimum": 1},
    "solver": {"enum": ["method", "lm", None]}, "sampling": {"enum": ["uniform", "rad", "rar_d", None]},
    "lm_mu": {"type": ("number", "null"), "exclusive_minimum": 0}}}

_POSITIVE = {"type": "number", "exclusive_minimum": 0}
# a problem's YAML holds its name and coefficients (null: the family's default target); the recipe is the
# family class's (pinn_lora.core.recipe), so a recipe section here is refused rather than silently ignored
PROBLEM_CONFIG = {"type": "object", "required": ["name"], "properties": {
    "name": NONEMPTY,
    "adapt": False, "pretrain": False,
    "modes": {"type": "array"}},
    "additional": {"type": ("number", "null", "array")}}

LAUNCHER_CONFIG = {"type": "object", "required": ["defaults"], "properties": {"defaults": _DEFAULTS}}

_OPT_NUMBER = {"type": ("number", "null")}
FAMILY_CONFIG = {"type": "object", "additional": False, "required": [
    "defaults", "over", "low", "high", "anchors", "tol", "seed", "device", "dtype", "base", "progress", "out", "hydra"],
    "properties": {
        "defaults": _DEFAULTS, "builder": {"enum": ["bank", "hyper"]}, "rank": {"type": "integer", "minimum": 1},
        "interpolate": {"enum": ["auto", "weights", "solution", "cubic"]}, "over": _OPT_STR, "low": _OPT_NUMBER, "high": _OPT_NUMBER,
        "anchors": {"type": "integer", "minimum": 2}, "tol": {"type": "number", "minimum": 0},
        "warm_start": _BOOL, "steps": _OPT_COUNT, "n_points": {"type": ("integer", "null"), "minimum": 1}, "seed": COUNT,
        "device": _STR, "dtype": {"enum": ["float64", "float32"]}, "base": _OPT_STR, "debug": _BOOL,
        "progress": _BOOL, "out": NONEMPTY, "hydra": {"type": "object", "required": ["run"]}}}


def config_schema(path: Path, root: Path) -> dict[str, Any]:
    """The schema of the YAML file ``path`` under the configs directory ``root``."""
    rel = Path(path).resolve().relative_to(Path(root).resolve())
    if rel == Path("adapt.yaml"):
        return ADAPT_CONFIG
    if rel == Path("pretrain.yaml"):
        return PRETRAIN_CONFIG
    if rel == Path("family.yaml"):
        return FAMILY_CONFIG
    if rel.parts[0] == "problem":
        return PROBLEM_CONFIG
    if rel.parts[:2] == ("hydra", "launcher"):
        return LAUNCHER_CONFIG
    raise KeyError(f"no schema for config file {rel}")


def validate_config_file(path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Parse the YAML file ``path`` with ``yaml.safe_load`` and check it against its schema."""
    import yaml

    root = Path(root or config_dir())
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise SchemaError(f"config {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    return validate(data, config_schema(Path(path), root), f"config {path}")
