"""What scripts/export.py leaves out of a copy: the methods of a library class that the carried code never
names (`unnamed_methods`, `trim`)."""

from __future__ import annotations

import ast

from export_names import Piece  # beside this file: scripts/ is on the path when it runs


def _named(node: ast.AST, skip: set[int], out: set[str]) -> None:
    """Every identifier, attribute, keyword and string constant in `node`, less the subtrees in `skip`."""
    if id(node) in skip:
        return
    if isinstance(node, ast.Name):
        out.add(node.id)
    elif isinstance(node, ast.Attribute):
        out.add(node.attr)
    elif isinstance(node, ast.keyword) and node.arg:
        out.add(node.arg)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        out.add(node.value)
    for child in ast.iter_child_nodes(node):
        _named(child, skip, out)


def _own_class(piece: Piece, pieces: dict[tuple[str, str], list[Piece]]) -> bool:
    """A class whose ancestors are all ocrl classes (no framework, such as nn.Module or a Gymnasium
    wrapper, calls its methods by name), with no metaclass."""
    node = piece.node
    if not isinstance(node, ast.ClassDef) or node.keywords:
        return False
    bases = {id(r.node): r.target for r in piece.refs if r.target[0] == "def"}
    for b in node.bases:
        target = bases.get(id(b))
        if target is None:
            return False
        parents = pieces.get((target[1], target[2]), [])
        if not parents or not all(_own_class(q, pieces) for q in parents):
            return False
    return True


def _methods(
    piece: Piece, pieces: dict[tuple[str, str], list[Piece]]
) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The methods of a library class that only the code can call by name: not dunders, of a class
    whose ancestors are ocrl's (`_own_class`)."""
    if not _own_class(piece, pieces):
        return []
    return [
        m
        for m in piece.node.body
        if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)
        and not (m.name.startswith("__") and m.name.endswith("__"))
    ]


def unnamed_methods(
    algo_pieces: list[Piece], carried: dict[tuple[str, str], list[Piece]]
) -> set[int]:
    """Ids of the library methods whose name appears nowhere in the algorithm or in what is carried
    (as a name, attribute, keyword or string): nothing can call them, so they are left out."""
    pieces = [p for ps in carried.values() for p in ps]
    candidates = {id(m): m for p in pieces for m in _methods(p, carried)}
    named: set[str] = set()
    for p in algo_pieces + pieces:
        _named(p.node, set(candidates), named)
    while kept := [i for i, m in candidates.items() if m.name in named]:
        for i in kept:
            _named(candidates.pop(i), set(candidates), named)
    # A class body is never left empty.
    for p in pieces:
        body = getattr(p.node, "body", [])
        if body and all(id(s) in candidates for s in body):
            candidates.pop(id(body[0]))
    return set(candidates)


def trim(piece: Piece, pruned: set[int]) -> Piece:
    """`piece` without the references, imports and ocrl-import drops inside its `pruned` methods."""
    gone = [m for m in getattr(piece.node, "body", []) if id(m) in pruned]
    if not gone:
        return piece

    spans = [(min([m.lineno] + [d.lineno for d in m.decorator_list]), m.end_lineno) for m in gone]

    def inside(n: ast.AST) -> bool:
        return any(a <= n.lineno <= b for a, b in spans)

    return Piece(
        piece.module,
        piece.node,
        [r for r in piece.refs if not inside(r.node)],
        [d for d in piece.drops if not inside(d)],
        [e for e in piece.local_ext if not inside(e)],
        gone,
    )
