"""A YAML file read within bounds: size-capped, depth- and alias-bounded, errors that never quote it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from exporter import files
from exporter.config.model import MAX_CONFIG_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, ConfigError

# libyaml where installed: it parses ~6x faster than pure Python and limits nesting itself (1,000).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YAMLShapeError(yaml.YAMLError):
    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


def read_yaml(path: Path) -> Any:
    """The parsed file, or a ConfigError saying where and what, without quoting the file's text:
    PyYAML quotes undefined aliases and unknown tags, which may be a password written unquoted."""
    try:
        text = files.read_text(path, MAX_CONFIG_BYTES)
    except files.FileError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_yaml_shape(node)  # before building any object: aliases are shared until then
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc, text)}") from None
    except RecursionError:  # the pure-Python composer recurses per level; libyaml stops at 1,000 itself
        raise ConfigError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels") from None
    except Exception:  # PyYAML's constructors: int() of 5,000 digits, 2024-13-45, an empty !!int (IndexError)
        raise ConfigError(f"{path}: a number, date or tagged value cannot be converted") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character; its message would quote it
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"line {line}, column {column}: a control character is not allowed in YAML"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = re.sub(r"'[^']*'", "'...'", getattr(exc, "problem", None) or "invalid YAML")
    return f"{where}{problem}"


def check_yaml_shape(root: yaml.Node) -> None:
    """Refuses a document nested too deeply, larger than MAX_YAML_NODES with every alias expanded (an
    alias bomb: 90 KB of anchors that would expand to billions of nodes), or holding an alias inside
    the node it names. Each node is visited once (sizes are memoised), so this costs one pass."""
    sizes: dict[int, int] = {}  # id(node) -> expanded size, once all of it was seen
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    open_nodes: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if id(node) in sizes:
            continue
        children = _yaml_children(node)
        if id(node) in open_nodes:  # all children done: total them
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise _YAMLShapeError(f"more than {MAX_YAML_NODES} values once aliases are expanded", node.start_mark)
            continue
        if depth > MAX_YAML_DEPTH:
            raise _YAMLShapeError(f"nested deeper than {MAX_YAML_DEPTH} levels", node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, depth))
        for child in children:
            if id(child) in open_nodes:
                raise _YAMLShapeError("an alias refers to a node that contains it", node.start_mark)
            stack.append((child, depth + 1))


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []
