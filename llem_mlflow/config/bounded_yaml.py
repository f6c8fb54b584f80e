"""YAML with bounds: a config or study file cannot make the loader (or anything after it) spin.

YAML anchors and aliases (`&a` / `*a`) share one node, so a small file can describe a huge
tree (an "alias bomb": 9 aliases of 9 aliases ... = 9^8 leaves from a few hundred bytes). The
parser itself is cheap; what is not is every later walk over the tree (validation, the JSON
check of passthrough_kwargs, writing params). So the composed node graph is measured before
anything is built from it: its size with every alias expanded must stay under MAX_NODES, and
an alias inside itself (a cycle) is refused. Files are read only up to MAX_FILE_BYTES, and
`[`/`{` nest at most MAX_FLOW_DEPTH deep (PyYAML's scanner takes time quadratic in that depth:
50,000 `[` took seconds, a megabyte of them would take many minutes).
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_FILE_BYTES = 1024 * 1024  # 1 MiB: a config with thousands of tags is ~100 kB
MAX_NODES = 100_000  # values once aliases are expanded (the largest real config has ~1000)
MAX_FLOW_DEPTH = 100  # nested [ ] / { }: PyYAML's scanner slows quadratically with the depth


class TooLarge(ValueError):
    """The document is over a bound; the message says which and how far."""


class BoundedSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that measures the document before constructing it."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= MAX_FLOW_DEPTH:
            raise TooLarge(
                f"more than {MAX_FLOW_DEPTH} nested [ ] or {{ }} at line {self.line + 1}, column {self.column + 1}: "
                "a config nests a few levels; check the brackets"
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_document(self) -> Any:
        node = super().compose_document()
        expanded_size(node, MAX_NODES)
        return node


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the tree with every alias expanded (each distinct node measured once), or TooLarge.

    Iterative, so depth costs no recursion; a node reached again through its own subtree is a cycle.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # started, children not all measured: the current ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids = _children(node)
        if not children_done:
            open_nodes.add(key)
            stack.append((node, True))
            for kid in kids:
                if id(kid) in open_nodes:
                    raise TooLarge(f"an alias refers to a node that contains it (line {kid.start_mark.line + 1}): the tree would be infinite")
                if id(kid) not in sizes:
                    stack.append((kid, False))
            continue
        open_nodes.discard(key)
        total = 1 + sum(sizes[id(kid)] for kid in kids)
        if total > limit:
            raise TooLarge(
                f"the value starting at line {node.start_mark.line + 1} expands to more than {limit} values "
                "through YAML aliases (&anchor / *alias); write the values out, or use fewer aliases"
            )
        sizes[key] = total
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
