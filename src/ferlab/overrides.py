"""Reading experiment files: YAML with the line of every key, ``--set KEY=VALUE`` overrides,
and validation errors as messages that name the key, the file and the line (``ConfigError``).
The schema that uses them is ``ferlab.config``.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError


class ConfigError(ValueError):
    """A bad experiment file or override; the message names the key, file and line."""


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values, section by section."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class LineLoader(yaml.SafeLoader):
    """A safe YAML loader that remembers the line of every mapping key."""


def load_with_lines(text: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The YAML document and the line of every key and list item, by its path."""
    lines: dict[tuple[Any, ...], int] = {}
    node = yaml.compose(text, Loader=LineLoader)
    if node is None:
        return {}, lines

    def walk(n: yaml.Node, path: tuple[Any, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                p = (*path, k.value)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[(*path, i)] = v.start_mark.line + 1
                walk(v, (*path, i))

    walk(node, ())
    return yaml.safe_load(text), lines


def format_errors(
    err: ValidationError,
    *,
    prefix: str = "",
    lines: dict[tuple[Any, ...], int],
    file: str = "",
    loc_prefix: tuple[Any, ...] = (),
) -> str:
    """A pydantic error as lines that name each bad key, its file and line, and the value."""
    msgs = []
    for e in err.errors():
        loc = (*loc_prefix, *e["loc"])
        key = ".".join(str(p) for p in loc)
        if prefix:
            key = f"{prefix}.{key}"
        line = None
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        where = f" ({file}, line {line})" if file and line else (f" ({file})" if file else "")
        what = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        got = "" if e["type"] in ("extra_forbidden", "missing") else f"; got {e.get('input')!r}"
        msgs.append(f"  {key}{where}: {what}{got}")
    return "Invalid experiment configuration:\n" + "\n".join(msgs)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=0.01`` -> (["train", "lr"], 0.01); the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override {item!r} is not KEY=VALUE (e.g. train.epochs=5).")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` items; list items are addressed by index (``models.0.train.batch_size=32``)."""
    for item in overrides:
        path, value = parse_override(item)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError) as e:
                    raise ConfigError(f"Override {item!r}: no list item {part!r}.") from e
            else:
                if part not in node or node[part] is None:
                    node[part] = {}
                node = node[part]
            if not isinstance(node, dict | list):
                raise ConfigError(f"Override {item!r}: {'.'.join(path[: i + 1])} is not a section.")
        last = path[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError) as e:
                raise ConfigError(f"Override {item!r}: no list item {last!r}.") from e
        else:
            node[last] = value
    return raw
