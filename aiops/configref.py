"""Generate the configuration reference (docs/configuration.md) from the config models.

:func:`reference` is the full reference, :func:`readme_table` the README's one-row-per-section
summary. ``aiops docs-sync`` rewrites both (:mod:`aiops.docsync`); a test fails when either drifts.
"""

from __future__ import annotations

import json
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from aiops.config import AiopsConfig

HEADER = """# Configuration reference

Generated from `aiops/config.py` by `aiops config-reference`; do not edit by hand.

One YAML file (`aiops check-config FILE` validates it). Unknown keys are errors. Every key
can be overridden from the environment: `AIOPS_` + the path in capitals with `__` between
levels and list indexes as numbers, e.g. `AIOPS_PROMETHEUS__URL`, `AIOPS_WATCHES__0__STEP`.
Values are read as YAML scalars (`false`, `30`, `{X-Scope-OrgID: a}`). Secrets (`SecretStr`)
are never printed; each has a `*_file` twin that reads it from a file.
Durations are Prometheus-style: `30s`, `5m`, `1h30m`, `7d`, `2w`.
"""


def _type_name(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is None:
        name = getattr(ann, "__name__", str(ann))
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(name, name)
    args = [a for a in get_args(ann) if a is not type(None)]
    if str(origin).endswith("Literal"):
        return " \\| ".join(f"`{a}`" for a in get_args(ann))
    if origin in (list,):
        return f"list of {_type_name(args[0])}"
    if origin in (dict,):
        return "mapping"
    if len(args) == 1:
        return _type_name(args[0]) + " (optional)"
    return " or ".join(_type_name(a) for a in args)


def _model_of(ann: Any) -> type[BaseModel] | None:
    for a in (ann, *get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        for b in get_args(a):
            if isinstance(b, type) and issubclass(b, BaseModel):
                return b
    return None


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            val = field.default_factory()
            if isinstance(val, BaseModel):
                return "(section)"
            return f"`{json.dumps(val)}`"
        return "**required**"
    if field.default is None:
        return "unset"
    if isinstance(field.default, BaseModel):
        return "(section)"
    return f"`{json.dumps(field.default) if not isinstance(field.default, str) else field.default}`"


def reference() -> str:
    out = [HEADER]
    todo: list[tuple[str, type[BaseModel]]] = [("", AiopsConfig)]
    seen: set[str] = set()
    while todo:
        path, model = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        title = path or "top level"
        out.append(f"\n## `{title}`\n")
        if model.__doc__ and model is not AiopsConfig:
            out.append(model.__doc__.strip().splitlines()[0] + "\n")
        out.append("| key | type | default | description |\n|---|---|---|---|")
        for name, field in model.model_fields.items():
            sub = _model_of(field.annotation)
            is_list = get_origin(field.annotation) is list
            child = f"{path}.{name}" if path else name
            if sub is not None:
                todo.append((child + ("[]" if is_list else ""), sub))
            desc = (field.description or "").replace("|", "\\|")
            kind = f"[{'list of ' if is_list else ''}section](#{_anchor(child)})" if sub else _type_name(field.annotation)
            out.append(f"| `{name}` | {kind} | {_default(field)} | {desc} |")
    return "\n".join(out) + "\n"


def _anchor(path: str) -> str:
    return path.replace(".", "").replace("[]", "")


def readme_table(link: str = "docs/configuration.md") -> str:
    """The README's compact view: one row per top-level section with all its keys, linking
    each section to its full table in ``link``. Required keys are bold."""
    rows = ["| section | what it sets | keys |", "|---|---|---|"]
    for name, field in AiopsConfig.model_fields.items():
        sub = _model_of(field.annotation)
        is_list = get_origin(field.annotation) is list
        desc = (field.description or "").replace("|", "\\|")
        if sub is None:
            keys = f"{_type_name(field.annotation)}, default {_default(field)}"
        else:
            keys = ", ".join(
                f"**`{k}`**" if f.is_required() else f"`{k}`" for k, f in sub.model_fields.items()
            )
        title = f"`{name}`" + (" (list)" if is_list else "")
        anchor = _anchor(name) if sub is not None else "top-level"
        rows.append(f"| [{title}]({link}#{anchor}) | {desc} | {keys} |")
    return "\n".join(rows) + "\n"
