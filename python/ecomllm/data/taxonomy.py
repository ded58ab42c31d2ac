"""A category tree in the Google Product Taxonomy form: ``ID - A > B > C``, one node per line.

Nodes are identified by their path from the root (a tuple of names); each carries a numeric id.
``load_google_taxonomy`` (in :mod:`ecomllm.data.formats`) reads Google's file; :meth:`Taxonomy.write`
writes the same format back (round trip), and :meth:`Taxonomy.from_paths` builds a tree from leaf
paths (the bundled catalogue), numbering nodes deterministically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .schema import CATEGORY_SEPARATOR

__all__ = ["Taxonomy", "format_path", "parse_path"]

Path_ = tuple[str, ...]


def parse_path(text: str) -> Path_:
    """``"A > B > C"`` -> ("A", "B", "C"); surrounding whitespace of each name is dropped."""
    return tuple(part.strip() for part in text.split(CATEGORY_SEPARATOR.strip()))


def format_path(path: Sequence[str]) -> str:
    """("A", "B", "C") -> ``"A > B > C"``."""
    return CATEGORY_SEPARATOR.join(path)


class Taxonomy:
    """An id-numbered category tree. Every ancestor of a node is itself a node.

    Node arguments may be a path tuple/list, a ``"A > B"`` string, or an int id.
    """

    def __init__(self, nodes: Iterable[tuple[int, Sequence[str]]], version: str | None = None):
        """nodes: (id, path) in the order they should be written (parents before children is
        conventional but not required). Raises ValueError on duplicate ids or paths, empty names,
        or a node whose parent is missing."""
        self.version = version
        self._path: dict[int, Path_] = {}
        self._id: dict[Path_, int] = {}
        self._children: dict[Path_, list[Path_]] = {(): []}
        for node_id, path in nodes:
            path = tuple(path)
            if not path or any(not name for name in path):
                raise ValueError(f"taxonomy node {node_id}: empty category name in {format_path(path)!r}")
            if node_id in self._path:
                raise ValueError(f"taxonomy id {node_id} repeats ({format_path(self._path[node_id])!r} "
                                 f"and {format_path(path)!r})")
            if path in self._id:
                raise ValueError(f"taxonomy path {format_path(path)!r} repeats (ids {self._id[path]} and {node_id})")
            self._path[node_id] = path
            self._id[path] = node_id
        for path in self._id:  # second pass: parents may come later in the input
            if path[:-1] and path[:-1] not in self._id:
                raise ValueError(f"taxonomy node {format_path(path)!r} has no parent node {format_path(path[:-1])!r}")
            self._children.setdefault(path[:-1], []).append(path)

    # ---- construction / IO ----
    @classmethod
    def from_paths(cls, paths: Iterable[Sequence[str] | str], version: str | None = None) -> "Taxonomy":
        """A taxonomy holding every given path and all their ancestors. Ids are 1..N in sorted path
        order (so the same set of paths always gets the same ids, whatever the input order)."""
        nodes: set[Path_] = set()
        for p in paths:
            p = parse_path(p) if isinstance(p, str) else tuple(p)
            nodes.update(p[:k] for k in range(1, len(p) + 1))
        return cls(((i, p) for i, p in enumerate(sorted(nodes), start=1)), version=version)

    def write(self, path: str | Path) -> None:
        """Write ``ID - A > B`` lines (after a ``# Google_Product_Taxonomy_Version: ...`` comment when
        a version is set), in this taxonomy's order; UTF-8, LF line ends."""
        lines = [f"# Google_Product_Taxonomy_Version: {self.version}"] if self.version is not None else []
        lines += [f"{i} - {format_path(p)}" for i, p in self._path.items()]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    # ---- lookups ----
    def _key(self, node) -> Path_:
        if isinstance(node, int) and not isinstance(node, bool):
            if node not in self._path:
                raise KeyError(f"no taxonomy node with id {node}")
            return self._path[node]
        path = parse_path(node) if isinstance(node, str) else tuple(node)
        if path and path not in self._id:
            raise KeyError(f"no taxonomy node {format_path(path)!r}")
        return path

    def __len__(self) -> int:
        return len(self._path)

    def __iter__(self) -> Iterator[Path_]:
        """Node paths in file order."""
        return iter(self._path.values())

    def __contains__(self, node) -> bool:
        if isinstance(node, int) and not isinstance(node, bool):
            return node in self._path
        path = parse_path(node) if isinstance(node, str) else tuple(node)
        return path in self._id

    def __eq__(self, other) -> bool:
        return isinstance(other, Taxonomy) and list(self._path.items()) == list(other._path.items())

    def items(self) -> Iterator[tuple[int, Path_]]:
        """(id, path) pairs in file order."""
        return iter(self._path.items())

    def path(self, node_id: int) -> Path_:
        return self._key(node_id)

    def id(self, node) -> int:
        return self._id[self._key(node)]

    def parent(self, node) -> Path_ | None:
        """The parent's path; None for a top-level node."""
        path = self._key(node)
        return path[:-1] or None

    def children(self, node=()) -> list[Path_]:
        """Direct children in file order; ``children(())`` gives the top-level nodes."""
        return list(self._children.get(self._key(node), []))

    def roots(self) -> list[Path_]:
        return self.children(())

    def leaves(self) -> list[Path_]:
        """Nodes without children, in file order."""
        return [p for p in self._path.values() if not self._children.get(p)]

    def is_leaf(self, node) -> bool:
        return not self._children.get(self._key(node))

    def depth(self, node=None) -> int:
        """A node's depth (top level = 1); with no argument the deepest node's depth."""
        if node is None:
            return max((len(p) for p in self._path.values()), default=0)
        return len(self._key(node))
