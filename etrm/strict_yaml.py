"""The one YAML reader for trial configs and sweep specs: safe, strict and bounded.

PyYAML's `safe_load` runs no code, but it silently keeps the last of two equal keys (a
lost axis), recurses once per nesting level (20,000 levels: a RecursionError), and shares
an anchored node wherever it is aliased, so a few hundred bytes of nested aliases (an
"alias bomb") become a billion values the moment anything walks the tree. Here every such
input is refused with one line, before anything walks it:

- a file over MAX_BYTES, not a regular file, or not UTF-8 text;
- a repeated key in one mapping;
- nesting deeper than MAX_DEPTH levels, counted after aliases are expanded;
- more than MAX_NODES values once aliases are expanded, or an alias inside itself;
- a date-like scalar (`2024-01-01`) stays a string: configs hold JSON values only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MiB: the largest ready spec is under 4 KiB
MAX_DEPTH = 64  # a spec nests about 6 levels (search.optuna.space.KEY.choices[i])
MAX_NODES = 100_000  # values after alias expansion; a large grid spec has a few hundred


class YamlError(ValueError):
    """A YAML text that is refused; `str()` is one line, naming the file."""


class _Limit(yaml.YAMLError):
    """A bound exceeded, raised from inside the loader and reported as one line."""


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # the composer recurses once per level: stop it early
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(f"nested deeper than {MAX_DEPTH} levels (line {self.peek_event().start_mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        _check_expanded(node)  # before construction: nothing below walks an unbounded tree
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# (types-PyYAML types a constructor by the loader class it is added to; SafeLoader's own method is what we mean)
_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)  # type: ignore[type-var]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expanded(root: yaml.Node) -> None:
    """Size and depth of the tree with every alias expanded, computed on the shared node graph
    (each node once, so a billion-value bomb costs microseconds), refused past the caps."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()

    def visit(node: yaml.Node) -> None:
        key = id(node)
        if key in size:
            return
        if key in active:
            raise _Limit(f"an alias refers to the node that contains it (line {node.start_mark.line + 1})")
        active.add(key)
        kids = _children(node)
        for child in kids:
            visit(child)
        active.discard(key)
        size[key] = 1 + sum(size[id(c)] for c in kids)
        depth[key] = 1 + max((depth[id(c)] for c in kids), default=0)
        if size[key] > MAX_NODES:
            raise _Limit(f"more than {MAX_NODES:,} values once aliases are expanded (an alias bomb?)")
        if depth[key] > MAX_DEPTH:
            raise _Limit(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")

    visit(root)


def parse_yaml(text: str, where: str) -> Any:
    """The value of a YAML text (a file's contents, or a --set value), or YamlError naming `where`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _Limit as err:
        raise YamlError(f"{where}: {err}") from None
    except yaml.MarkedYAMLError as err:
        if (mark := err.problem_mark) is None:
            raise YamlError(f"{where}: not valid YAML ({err.problem})") from None
        raise YamlError(f"{where}: not valid YAML (line {mark.line + 1}, column {mark.column + 1}: {err.problem})") from None
    except yaml.YAMLError as err:
        raise YamlError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer of more than 4,300 digits
        raise YamlError(f"{where}: not valid YAML ({' '.join(str(err).split())[:200]})") from None


def read_yaml(path: str | Path) -> Any:
    """The value of a YAML file, read with the bounds above, or YamlError (one line naming the file)."""
    path = Path(path)
    try:
        if not path.exists():
            raise YamlError(f"{path}: no such file")
        if not path.is_file():
            raise YamlError(f"{path}: not a regular file")
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise YamlError(f"{path}: cannot read ({err.strerror})") from None
    if len(data) > MAX_BYTES:
        raise YamlError(f"{path}: larger than {MAX_BYTES >> 20} MiB; a spec or trial config is a few KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise YamlError(f"{path}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
                        "is it a binary file?") from None
    return parse_yaml(text, str(path))
