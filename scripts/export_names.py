"""How scripts/export.py finds what an algorithm reaches: ocrl modules parsed with `ast`, names resolved
through package re-exports and lazy `__getattr__` to the defining module, and the references of each
top-level statement in its real scopes."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root is the `ocrl` package


class ExportError(Exception):
    """Something the exporter cannot copy; the message says what and where."""


# ---------------------------------------------------------------- modules
def module_file(name: str) -> Path | None:
    """The source file of ocrl module `name`, or None when it is not an ocrl module."""
    if name != "ocrl" and not name.startswith("ocrl."):
        return None
    base = ROOT.joinpath(*name.split(".")[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


@dataclass
class Module:
    name: str
    path: Path
    source: bytes
    tree: ast.Module
    defs: dict[str, list[ast.stmt]] = field(default_factory=dict)
    ocrl_imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    ext_imports: dict[str, str] = field(default_factory=dict)
    lazy: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def ext_import_text(node: ast.Import | ast.ImportFrom, alias: ast.alias) -> tuple[str, str]:
    """(bound name, the one-name import statement) of a third-party/stdlib import alias."""
    if isinstance(node, ast.Import):
        bound = alias.asname or alias.name.split(".")[0]
        text = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
    else:
        bound = alias.asname or alias.name
        text = f"from {node.module} import {alias.name}" + (
            f" as {alias.asname}" if alias.asname else ""
        )
    return bound, text


def absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


_MODULES: dict[str, Module] = {}


def load(name: str, path: Path | None = None) -> Module:
    if name in _MODULES:
        return _MODULES[name]
    path = path or module_file(name)
    if path is None:
        raise ExportError(f"{name}: no such ocrl module under {ROOT}")
    source = path.read_bytes()
    mod = Module(name, path, source, ast.parse(source, str(path)))
    for node in mod.tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            target = absolute(mod, node) if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                if isinstance(node, ast.ImportFrom) and module_file(target) is not None:
                    mod.ocrl_imports[alias.asname or alias.name] = (target, alias.name)
                elif isinstance(node, ast.Import) and module_file(alias.name) is not None:
                    if not alias.asname:
                        raise ExportError(f"{path}:{node.lineno}: use `import {alias.name} as x`")
                    mod.ocrl_imports[alias.asname] = (alias.name, None)
                elif node.module != "__future__" if isinstance(node, ast.ImportFrom) else True:
                    bound, text = ext_import_text(node, alias)
                    mod.ext_imports[bound] = text
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            mod.defs.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        mod.defs.setdefault(n.id, []).append(node)
    getattr_fn = next((n for n in mod.defs.get("__getattr__", [])), None)
    if getattr_fn is not None:  # lazy re-exports: imports inside __getattr__, or a _LAZY table
        for n in ast.walk(getattr_fn):
            if isinstance(n, ast.ImportFrom) and module_file(absolute(mod, n)):
                for alias in n.names:
                    mod.lazy[alias.asname or alias.name] = (absolute(mod, n), alias.name)
        for node in mod.defs.get("_LAZY", []):
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
                table = ast.literal_eval(node.value)
                base = mod.name if mod.is_package else mod.name.rsplit(".", 1)[0]
                for key, sub in table.items():
                    mod.lazy[key] = (f"{base}.{sub}", key)
    _MODULES[name] = mod
    return mod


# A resolved name: ("def", module, name), ("module", module) or ("ext", import text, bound name).
Target = tuple


def resolve(modname: str, name: str, seen: frozenset = frozenset()) -> Target:
    """Where `name` as seen in module `modname` is defined."""
    if (modname, name) in seen:
        raise ExportError(f"{modname}.{name}: circular re-export")
    seen = seen | {(modname, name)}
    mod = load(modname)
    if name in mod.defs and name != "__getattr__":
        return ("def", modname, name)
    if name in mod.ocrl_imports:
        target, attr = mod.ocrl_imports[name]
        return resolve_from(target, attr, seen)
    if name in mod.ext_imports:
        return ("ext", mod.ext_imports[name], name)
    if name in mod.lazy:
        target, attr = mod.lazy[name]
        return resolve_from(target, attr, seen)
    if mod.is_package and module_file(f"{modname}.{name}"):
        return ("module", f"{modname}.{name}")
    raise ExportError(f"{mod.path}: '{name}' is not defined or imported at module level")


def resolve_from(target: str, attr: str | None, seen: frozenset = frozenset()) -> Target:
    """What `from target import attr` (or `import target` when attr is None) binds."""
    if attr is None:
        return ("module", target)
    mod = load(target)
    if attr not in mod.defs and attr not in mod.ocrl_imports and attr not in mod.lazy:
        if module_file(f"{target}.{attr}"):
            return ("module", f"{target}.{attr}")
    return resolve(target, attr, seen)


# ---------------------------------------------------------------- references of one statement
@dataclass
class Ref:
    node: ast.AST  # the Name, or the Attribute `alias.attr` of a module alias
    target: Target
    module_level: bool  # evaluated when the module runs (not only inside a function body)
    annotation: bool


@dataclass
class Scope:
    names: dict[
        str, Target | None
    ]  # local names; an ocrl import inside a function maps to its target
    is_class: bool = False


_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _bindings(body: list[ast.AST], mod: Module, drops: list[ast.stmt]) -> dict[str, Target | None]:
    """Names a function body binds (not descending into nested scopes)."""
    names: dict[str, Target | None] = {}
    declared_global: set[str] = set()
    stack = list(body)
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Global):
            declared_global.update(n.names)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del):
            names.setdefault(n.id, None)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.setdefault(n.name, None)
            stack.extend(n.decorator_list)
            if not isinstance(n, ast.ClassDef):
                stack.extend(d for d in n.args.defaults + n.args.kw_defaults if d is not None)
            else:
                stack.extend(n.bases + [k.value for k in n.keywords])
            continue
        elif isinstance(n, ast.Lambda):
            stack.extend(d for d in n.args.defaults + n.args.kw_defaults if d is not None)
            continue
        elif isinstance(n, _COMPS):
            stack.append(n.generators[0].iter)
            continue
        elif isinstance(n, ast.ExceptHandler) and n.name:
            names.setdefault(n.name, None)
        elif isinstance(n, ast.ImportFrom) and module_file(absolute(mod, n)):
            for alias in n.names:
                names[alias.asname or alias.name] = resolve_from(absolute(mod, n), alias.name)
            drops.append(n)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            for alias in n.names:
                if isinstance(n, ast.Import) and module_file(alias.name):
                    raise ExportError(f"{mod.path}:{n.lineno}: `import {alias.name}` in a function")
                names.setdefault(alias.asname or alias.name.split(".")[0], None)
        elif isinstance(n, ast.MatchAs | ast.MatchStar) and n.name:
            names.setdefault(n.name, None)
        stack.extend(ast.iter_child_nodes(n))
    for g in declared_global:
        names.pop(g, None)
    return names


def _args_names(args: ast.arguments) -> dict[str, None]:
    every = args.posonlyargs + args.args + args.kwonlyargs
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    return {a.arg: None for a in every}


class Collector:
    """The global references of one top-level statement, with scopes, and the imports to drop."""

    def __init__(self, mod: Module, lenient_annotations: bool):
        self.mod = mod
        self.lenient = lenient_annotations
        self.refs: list[Ref] = []
        self.drops: list[ast.stmt] = []
        self.local_ext: list[ast.stmt] = []

    def lookup(self, name: str, scopes: list[Scope]) -> Target | None | str:
        for i, scope in enumerate(reversed(scopes)):
            if scope.is_class and i != 0:
                continue  # a class body is not visible from the functions inside it
            if name in scope.names:
                return scope.names[name] or "local"
        return None

    def visit(self, node: ast.AST, scopes: list[Scope], in_fn: bool, ann: bool = False) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for d in node.decorator_list:
                self.visit(d, scopes, in_fn)
            for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                self.visit(d, scopes, in_fn)
            every = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            every += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            for a in every:
                if a.annotation is not None:
                    self.visit(a.annotation, scopes, in_fn, ann=True)
            if node.returns is not None:
                self.visit(node.returns, scopes, in_fn, ann=True)
            names = _args_names(node.args) | _bindings(node.body, self.mod, self.drops)
            inner = scopes + [Scope(names)]
            for s in node.body:
                self.visit(s, inner, True)
            return
        if isinstance(node, ast.Lambda):
            for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                self.visit(d, scopes, in_fn)
            self.visit(node.body, scopes + [Scope(_args_names(node.args))], True)
            return
        if isinstance(node, ast.ClassDef):
            for d in node.decorator_list + node.bases + [k.value for k in node.keywords]:
                self.visit(d, scopes, in_fn)
            names = _bindings(node.body, self.mod, self.drops)
            inner = scopes + [Scope(names, is_class=True)]
            for s in node.body:
                self.visit(s, inner, in_fn)
            return
        if isinstance(node, _COMPS):
            self.visit(node.generators[0].iter, scopes, in_fn)
            names: dict[str, Target | None] = {}
            for g in node.generators:
                for n in ast.walk(g.target):
                    if isinstance(n, ast.Name):
                        names[n.id] = None
            inner = scopes + [Scope(names)]
            for i, g in enumerate(node.generators):
                self.visit(g.target, inner, in_fn)
                if i:
                    self.visit(g.iter, inner, in_fn)
                for c in g.ifs:
                    self.visit(c, inner, in_fn)
            for part in ("elt", "key", "value"):
                if hasattr(node, part):
                    self.visit(getattr(node, part), inner, in_fn)
            return
        if isinstance(node, ast.AnnAssign):
            self.visit(node.annotation, scopes, in_fn, ann=True)
            self.visit(node.target, scopes, in_fn)
            if node.value is not None:
                self.visit(node.value, scopes, in_fn)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            if node not in self.drops and scopes:
                self.local_ext.append(node)
            return
        if is_type_checking(node) and not scopes:
            return
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            base = self.target_of(node.value.id, scopes)
            if base is not None and base[0] == "module":
                target = resolve_from(base[1], node.attr)
                if target[0] == "module":
                    raise ExportError(f"{self.mod.path}:{node.lineno}: nested module attribute")
                self.refs.append(Ref(node, target, not in_fn, ann))
                return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            target = self.target_of(node.id, scopes)
            if target is not None:
                self.refs.append(Ref(node, target, not in_fn, ann))
            return
        for child in ast.iter_child_nodes(node):
            self.visit(child, scopes, in_fn, ann)

    def target_of(self, name: str, scopes: list[Scope]) -> Target | None:
        found = self.lookup(name, scopes)
        if found == "local":
            return None
        if found is not None:
            return found
        mod = self.mod
        if (
            name in mod.defs
            or name in mod.ocrl_imports
            or name in mod.ext_imports
            or name in mod.lazy
        ):
            return resolve(mod.name, name)
        return None  # a builtin (or an error the module has anyway)


# ---------------------------------------------------------------- source text of the pieces
@dataclass
class Piece:
    module: str
    node: ast.stmt
    refs: list[Ref]
    drops: list[ast.stmt]
    local_ext: list[ast.stmt]
    pruned: list[ast.stmt] = field(default_factory=list)  # methods left out (nothing names them)


def pieces_of(modname: str, name: str, lenient: bool) -> list[Piece]:
    mod = load(modname)
    out = []
    seen: set[int] = set()
    for node in mod.defs[name]:
        if id(node) in seen:
            continue
        seen.add(id(node))
        c = Collector(mod, lenient)
        c.visit(node, [], False)
        out.append(Piece(modname, node, c.refs, c.drops, c.local_ext))
    return out


def stmt_start(mod: Module, node: ast.stmt) -> int:
    """First line of a top-level statement: its decorators and the comment lines right above it."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    lines = mod.source.split(b"\n")
    while (
        first > 1
        and lines[first - 2].lstrip().startswith(b"#")
        and not lines[first - 2].startswith(b"# -")
    ):
        first -= 1
    return first


def byte_offset(lines: list[bytes], lineno: int, col: int) -> int:
    return sum(len(line) + 1 for line in lines[: lineno - 1]) + col


def segment(mod: Module, node: ast.stmt, edits: list[tuple[int, int, bytes]]) -> str:
    """The statement's source lines with `edits` (absolute byte spans) applied."""
    lines = mod.source.split(b"\n")
    start = byte_offset(lines, stmt_start(mod, node), 0)
    end = byte_offset(lines, node.end_lineno, len(lines[node.end_lineno - 1]))  # with its comment
    text = mod.source[start:end]
    for a, b, new in sorted(edits, reverse=True):
        text = text[: a - start] + new + text[b - start :]
    return text.decode()


def drop_edits(mod: Module, piece: Piece) -> list[tuple[int, int, bytes]]:
    """Remove the function-level ocrl imports (a `pass` where a body would be left empty)."""
    parents = {}
    for n in ast.walk(piece.node):
        for field_name in ("body", "orelse", "finalbody"):
            stmts = getattr(n, field_name, None)
            for s in stmts if isinstance(stmts, list) else []:
                if isinstance(s, ast.stmt):
                    parents[id(s)] = (n, field_name)
    lines = mod.source.split(b"\n")
    edits = []
    for d in piece.drops:
        parent, fname = parents[id(d)]
        siblings = getattr(parent, fname)
        a = byte_offset(lines, d.lineno, 0)
        b = byte_offset(lines, d.end_lineno, len(lines[d.end_lineno - 1])) + 1
        indent = lines[d.lineno - 1][: d.col_offset]
        only = all(s in piece.drops for s in siblings)
        edits.append((a, b, indent + b"pass\n" if only and d is siblings[0] else b""))
    return edits


#: The module whose `register_envs` registers ocrl's Gymnasium ids when ocrl.envs is imported.
IDS_MODULE = "ocrl.envs.ids"


def gym_ids() -> dict[str, tuple[dict, tuple[str, str], tuple[str, str] | None]]:
    """ocrl's Gymnasium ids (`ocrl.envs.ids.register_envs`): id -> (kwargs, entry, vector entry)."""
    if module_file(IDS_MODULE) is None:
        return {}
    mod = load(IDS_MODULE)
    tables: dict[str, object] = {"Any": object}
    flags = __import__("__future__").annotations.compiler_flag
    for node in mod.tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            exec(compile(ast.Module([node], []), str(mod.path), "exec", flags=flags), tables)
    out = {}
    for loop in ast.walk(mod.defs["register_envs"][0]):
        if not (isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call)):
            continue
        table = tables[ast.unparse(loop.iter.func.value)]
        for call in ast.walk(loop):
            if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("register"):
                kw = {
                    k.arg: k.value.value for k in call.keywords if isinstance(k.value, ast.Constant)
                }
                entry = tuple(kw["entry_point"].split(":"))
                vector = (
                    tuple(kw["vector_entry_point"].split(":"))
                    if "vector_entry_point" in kw
                    else None
                )
                for env_id, kwargs in table.items():
                    out[env_id] = (kwargs, entry, vector)
    return out


def literal(module: str, name: str) -> object:
    """The value of a library constant written as a literal (a dict of strings, say)."""
    (node,) = load(module).defs[name]
    return ast.literal_eval(node.value)
