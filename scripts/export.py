"""Write one self-contained file: an algorithm from algos/ with the ocrl pieces it uses above it.

    python scripts/export.py algos/td3_bc.py --out my_td3_bc.py
    python scripts/export.py algos/td3_bc.py --check my_td3_bc.py   # is my_td3_bc.py still current?
    python scripts/export.py algos/td3_bc.py --out my_td3_bc.py --formats hdf5 minari --features track

The library reaches dataset readers and optional features (W&B tracking, videos, the policy file)
through tables of "module:name" strings it imports on first use (`PLUGINS`); a copy carries the
entries --formats and --features name, and its --help says what it reads and what it lacks.

The algorithm's ``from ocrl...`` imports are followed (package re-exports and lazy ``__getattr__``
re-exports to the defining module) and every top-level function, class and constant they reach is
copied, by its source lines, under a one-line banner per module; nothing unreached is carried, not even
a method of a library class whose name the carried code never uses (`unnamed_methods`).
Names two modules both define are renamed (``name__module``); an ocrl module used as a namespace
(``ggd.biev``) is rewritten to the flat name inside library code and given a small namespace for
the algorithm, whose text is copied exactly (less its imports, which join the merged block on top).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tyro
from export_names import (  # beside this file: scripts/ is on the path when it runs
    ROOT,
    Collector,
    ExportError,
    Piece,
    Ref,
    byte_offset,
    drop_edits,
    gym_ids,
    literal,
    load,
    pieces_of,
    resolve,
    resolve_from,
    segment,
    stmt_start,
)
from export_packages import OPTIONAL, PIP_EXTRA, PIP_NAMES, optional_extras, ruff_tidy
from export_pruning import trim, unnamed_methods

from ocrl.files import source_commit

#: Library names that read files shipped with ocrl, with what the export's --help says instead.
CANNOT_TRAVEL = {
    ("ocrl.data.offline", "SHIPPED_ROOT"): (
        "This copy does not carry the datasets shipped with ocrl (ids ocrl/...): pass --dataset {inputs}."
    ),
}
#: Tables of "module:name" entries the library imports on first use, with the option that picks the
#: entries a copy carries; the copy's table holds those objects themselves.
PLUGINS = {("ocrl.data.offline", "READERS"): "formats", ("ocrl.plugins", "FEATURES"): "features"}
#: What each kind of input a reader reads is (the library's table).
READER_INPUTS = ("ocrl.data.offline", "READER_INPUTS")
#: What each feature is, for the copy's --help.
FEATURE_NOTES = {
    "track": "--track (Weights & Biases)",
    "video": "--capture-video",
    "policy": "the policy file (policy.pt2, policy.json)",
}
DEFAULT_FORMATS = ("hdf5",)
READERS = ("ocrl.data.offline", "READERS")
FEATURES = ("ocrl.plugins", "FEATURES")
#: The library constant an export sets to those notes (`cli` adds it to --help).
HELP_NOTE = ("ocrl.experiment.flags", "HELP_NOTE")


# ---------------------------------------------------------------- the export
def export(
    algo: Path,
    command: str,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    features: tuple[str, ...] = (),
) -> str:
    algo = algo.resolve()
    main = load("__algo__", algo)
    lenient = True

    # The algorithm: every top-level statement but its imports and docstring.
    body = [n for n in main.tree.body if not isinstance(n, ast.Import | ast.ImportFrom)]
    docstring = ""
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        docstring = ast.get_source_segment(main.source.decode(), body[0]) or ""
        body = body[1:]
    algo_pieces = []
    for node in body:
        c = Collector(main, lenient_annotations=False)
        c.visit(node, [], False)
        algo_pieces.append(Piece("__algo__", node, c.refs, c.drops, c.local_ext))

    def reach(pruned: set[int]) -> tuple:
        """What the algorithm reaches, less what only the methods in `pruned` (node ids) reach."""
        carried: dict[tuple[str, str], list[Piece]] = {}
        order: list[tuple[str, str]] = []

        def carry(ref: Ref) -> list[Piece]:
            """The pieces of the definition `ref` names, once (none when carried already or the algorithm's own)."""
            key = (ref.target[1], ref.target[2])
            if key in carried or key[0] == "__algo__":
                return []
            carried[key] = [trim(p, pruned) for p in pieces_of(*key, lenient)]
            order.append(key)
            return carried[key]

        def close(todo: list[Ref]) -> None:
            ann_only: list[Ref] = []
            while todo:
                for p in carry(todo.pop()):
                    for r in p.refs:
                        if r.target[0] == "def":
                            (ann_only if r.annotation else todo).append(r)
            # An annotation that names an uncarried ocrl class is carried too (ruff would flag it, and
            # tyro/get_type_hints may evaluate it).
            while ann_only:
                for p in carry(ann_only.pop()):
                    ann_only.extend(r for r in p.refs if r.target[0] == "def")

        close([r for p in algo_pieces for r in p.refs if r.target[0] == "def"])
        # Plugin tables: the entries --formats/--features name are carried (and what they reach).
        chosen = {"formats": formats, "features": features}
        plugins: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
        while todo_tables := [k for k in PLUGINS if k in carried and k not in plugins]:
            for key in todo_tables:
                table = literal(*key)
                option = PLUGINS[key]
                unknown = [k for k in chosen[option] if k not in table]
                if unknown:
                    raise ExportError(
                        f"--{option} {' '.join(unknown)}: expected some of {', '.join(table)}"
                    )
                plugins[key] = {
                    k: tuple(v.split(":")) for k, v in table.items() if k in chosen[option]
                }
                close([
                    Ref(ast.Name(e[1]), ("def", *e), False, False) for e in plugins[key].values()
                ])  # fmt: skip
        # ocrl's own Gymnasium ids that the code names: registered in the export with the classes.
        ids = gym_ids()
        strings = {
            n.value
            for p in algo_pieces + [p for key in order for p in carried[key]]
            for n in ast.walk(p.node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        used_ids = sorted(strings & set(ids))
        close([
            Ref(ast.Name(e[1]), ("def", *e), False, False)
            for env_id in used_ids for e in ids[env_id][1:] if e is not None
        ])  # fmt: skip
        return carried, order, plugins, used_ids, ids

    # Closure over library definitions; then again without the methods of library classes that
    # nothing names (`unnamed_methods`), so what only they reach is left out too.
    carried, order, plugins, used_ids, ids = reach(set())
    pruned = unnamed_methods(algo_pieces, carried)
    if pruned:
        carried, order, plugins, used_ids, ids = reach(pruned)
    for key in carried:
        if key[0] == "__algo__":
            raise ExportError(f"{key}: the library refers back to the algorithm")

    # Output names: the algorithm keeps its names; a library name another module or the
    # algorithm also defines becomes name__module.
    taken = {n for n in main.defs} | set(main.ext_imports)
    flat: dict[tuple[str, str], str] = {}
    by_name: dict[str, list[tuple[str, str]]] = {}
    for key in order:
        by_name.setdefault(key[1], []).append(key)
    for name, keys in by_name.items():
        for key in keys:
            clash = len(keys) > 1 or name in taken
            flat[key] = f"{name}__{key[0].rsplit('.', 1)[-1]}" if clash else name

    # External imports of the carried code (module-level ones as one-name statements).
    ext: dict[str, str] = {}
    local_imports: set[str] = set()

    def canonical(text: str) -> str:  # `import a.b as b` and `from a import b` bind the same
        words = text.split()
        dotted = words[1] if words[0] == "import" else f"{words[1]}.{words[3]}"
        return dotted if "as" in words or words[0] == "from" else words[1].split(".")[0]

    def need_ext(text: str, bound: str, where: str) -> None:
        if bound in ext and canonical(ext[bound]) == canonical(text):
            return
        if ext.get(bound, text) != text:
            raise ExportError(f"{where}: '{bound}' is both `{ext[bound]}` and `{text}`")
        if bound in flat.values() or bound in main.defs:
            raise ExportError(f"{where}: '{bound}' is imported and also defined")
        ext[bound] = text

    for p in algo_pieces:
        for r in p.refs:
            if r.target[0] == "ext":
                need_ext(r.target[1], r.target[2], str(algo))
    for bound, text in main.ext_imports.items():  # keep the algorithm's imports as written
        need_ext(text, bound, str(algo))
    pieces = [p for key in order for p in carried[key]]
    for p in pieces:
        for r in p.refs:
            if r.target[0] == "ext":
                need_ext(r.target[1], r.target[2], p.module)
        for imp in p.local_ext:
            for alias in imp.names:
                dotted = alias.name if isinstance(imp, ast.Import) else imp.module or ""
                local_imports.add(dotted)

    # Library text with renames and module-alias rewrites applied.
    texts: dict[int, str] = {}
    for p in pieces:
        mod = load(p.module)
        lines = mod.source.split(b"\n")
        edits = drop_edits(mod, p)
        for m in p.pruned:  # with its decorators, the comments above it and its line break
            a = byte_offset(lines, stmt_start(mod, m), 0)
            edits.append(
                (a, byte_offset(lines, m.end_lineno, len(lines[m.end_lineno - 1])) + 1, b"")
            )
        for r in p.refs:
            if r.target[0] != "def":
                continue
            new = flat[(r.target[1], r.target[2])]
            n = r.node
            old = n.id if isinstance(n, ast.Name) else None
            if old != new:
                a = byte_offset(lines, n.lineno, n.col_offset)
                b = byte_offset(lines, n.end_lineno, n.end_col_offset)
                edits.append((a, b, new.encode()))
        own = (
            flat[(p.module, getattr(p.node, "name", None) or "")]
            if hasattr(p.node, "name")
            else None
        )
        if own is not None and own != p.node.name:
            head = byte_offset(lines, p.node.lineno, p.node.col_offset)
            line = mod.source[head:].split(b"\n", 1)[0]
            kw = line.split(p.node.name.encode(), 1)[0]
            a = head + len(kw)
            edits.append((a, a + len(p.node.name.encode()), own.encode()))
        elif isinstance(p.node, ast.Assign | ast.AnnAssign):
            targets = p.node.targets if isinstance(p.node, ast.Assign) else [p.node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and flat.get((p.module, n.id), n.id) != n.id:
                        a = byte_offset(lines, n.lineno, n.col_offset)
                        edits.append((a, a + len(n.id.encode()), flat[(p.module, n.id)].encode()))
        texts[id(p.node)] = segment(mod, p.node, edits)
    for key, entries in plugins.items():
        (piece,) = carried[key]
        ann = (
            f": {ast.unparse(piece.node.annotation)}"
            if isinstance(piece.node, ast.AnnAssign)
            else ""
        )
        items = ", ".join(f"{k!r}: {flat[e]}" for k, e in entries.items())
        texts[id(piece.node)] = (
            f"#: What this copy was exported with (scripts/export.py --{PLUGINS[key]}); the library\n"
            "#: imports each entry by name on first use.\n"
            f"{flat[key]}{ann} = {{{items}}}"
        )
    reads = ""
    if READERS in plugins:
        inputs = literal(*READER_INPUTS)
        reads = " or ".join(inputs[k] for k in plugins[READERS])
    notes = [note.format(inputs=reads) for key, note in CANNOT_TRAVEL.items() if key in carried]
    if READERS in plugins:
        others = [k for k in inputs if k not in plugins[READERS]]
        if others:
            notes.append(
                f"It reads {reads}; for {' or '.join(inputs[k] for k in others)} export it "
                f"again with --formats {' '.join([*plugins[READERS], *others])}."
            )
    if FEATURES in plugins:
        missing = [k for k in literal(*FEATURES) if k not in plugins[FEATURES]]
        if missing:
            notes.append(
                f"Not in this copy: {', '.join(FEATURE_NOTES.get(k, k) for k in missing)}; "
                f"export it again with --features {' '.join(missing)} for them."
            )
    if notes and HELP_NOTE in carried:
        (piece,) = carried[HELP_NOTE]
        texts[id(piece.node)] = (
            "#: What did not travel with this copy of the algorithm (--help shows it).\n"
            f"{flat[HELP_NOTE]} = {' '.join(notes)!r}"
        )

    # Module order: a module's pieces come after those its module-level code uses (required), and
    # where the imports allow, after the modules its functions use (it reads bottom-up).
    modules: list[str] = []
    for key in order:
        if key[0] not in modules:
            modules.append(key[0])
    strict: dict[str, set[str]] = {m: set() for m in modules}
    soft: dict[str, set[str]] = {m: set() for m in modules}
    for p in pieces:
        for r in p.refs:
            if r.target[0] == "def" and r.target[1] != p.module:
                (strict if r.module_level else soft)[p.module].add(r.target[1])

    for key, entries in plugins.items():  # the written table names its entries at module level
        strict[key[0]].update(e[0] for e in entries.values() if e[0] != key[0])

    def topological(edges: list[dict[str, set[str]]]) -> list[str]:
        ordered: list[str] = []
        state: dict[str, int] = {}

        def visit(m: str) -> None:
            if state.get(m):
                return  # done, or a cycle through function bodies (harmless)
            state[m] = 1
            for deps in edges:
                for d in sorted(deps[m], key=modules.index):
                    visit(d)
            state[m] = 2
            ordered.append(m)

        for m in modules:
            visit(m)
        return ordered

    def respects_strict(ordered: list[str]) -> bool:
        at = {m: i for i, m in enumerate(ordered)}
        return all(at[d] < at[m] for m in modules for d in strict[m])

    ordered = topological([strict, soft])
    if not respects_strict(ordered):
        ordered = topological([strict])
        if not respects_strict(ordered):
            raise ExportError(f"module-level definitions of {', '.join(modules)} form a cycle")

    # Things that cannot travel, and the namespaces/aliases the algorithm's imports bound.
    tail: list[str] = []
    if used_ids:
        need_ext("import gymnasium as gym", "gym", str(algo))
        tail.append("# The ocrl Gymnasium ids used here (importing ocrl.envs registers them).")
    for env_id in used_ids:
        kwargs, entry, vector = ids[env_id]
        vec = f"vector_entry_point={flat[vector]}, " if vector else ""
        tail.append(f"gym.register({env_id!r}, entry_point={flat[entry]}, {vec}kwargs={kwargs!r})")
    for node in main.tree.body:
        if not isinstance(node, ast.ImportFrom | ast.Import):
            continue
        for alias in node.names:
            bound = alias.asname or alias.name
            if bound not in main.ocrl_imports:
                continue
            target = resolve("__algo__", bound)
            if target[0] == "def" and flat[(target[1], target[2])] != bound:
                tail.append(f"{bound} = {flat[(target[1], target[2])]}")
            elif target[0] == "module":
                used = sorted(
                    {r.node.attr for p in algo_pieces for r in p.refs
                     if isinstance(r.node, ast.Attribute) and isinstance(r.node.value, ast.Name)
                     and r.node.value.id == bound}
                )  # fmt: skip
                need_ext("from types import SimpleNamespace", "SimpleNamespace", str(algo))
                fields = ", ".join(f"{a}={flat[resolve_from(target[1], a)[1:]]}" for a in used)
                tail.append(
                    f"{bound} = SimpleNamespace({fields})  # the names of {target[1]} used here"
                )

    # Packages for the pip line.
    # Packages for the pip line: every third-party import, at module level or inside a function
    # (h5py, minari, tyro and tensorboard are imported where they are used).
    dotted = {t.split()[1] for t in ext.values()} | local_imports
    tops = {d.split(".")[0] for d in dotted} | {PIP_EXTRA[d] for d in dotted if d in PIP_EXTRA}
    tops = {t for t in tops if t and t not in sys.stdlib_module_names and t != "__future__"}
    # Optional: what only some inputs or flags import (OPTIONAL), and what pyproject lists only in
    # an optional extra (wandb for --track is imported inside a function, as h5py is, but h5py is
    # needed by every run that reads a file).
    extras = {t: f"extra '{e}'" for t, e in optional_extras().items()}
    why_of = {**extras, **OPTIONAL}
    packages = sorted(PIP_NAMES.get(t, t) for t in tops - set(why_of))
    optional = sorted(PIP_NAMES.get(t, t) for t in tops & set(why_of))
    why = "; ".join(why_of[t] for t in sorted(tops & set(why_of)))

    rel = algo.relative_to(ROOT) if algo.is_relative_to(ROOT) else algo
    out = [
        f"# Exported from ocrl {source_commit(ROOT) or 'unknown'}: {rel} and the ocrl pieces it uses.",
        f"# Made by: {command}",
        f"# Needs: pip install {' '.join(packages)}",
        *([f"# Optional: pip install {' '.join(optional)} ({why})"] if optional else []),
        "# Edit freely: nothing here imports ocrl. The library pieces come first, grouped by module;",
        "# the algorithm follows as in ocrl's algos/.",
    ]
    out += [f"# Note: {n}" for n in notes]
    if docstring:
        doc = docstring
        if notes:  # shown by the file's --help through the CLI's description
            doc = doc[:-3].rstrip() + "\n\n" + "\n".join(notes) + "\n" + doc[-3:]
        out.append(doc)
    out.append("")
    out.append("from __future__ import annotations")
    out.append("")
    out += sorted(set(ext.values()))
    out.append("")
    for m in ordered:
        out.append("")
        out.append(f"# {'-' * 20} {m} {'-' * max(3, 73 - len(m))}")
        out.append("")
        for p in sorted((p for p in pieces if p.module == m), key=lambda p: p.node.lineno):
            out.append(texts[id(p.node)])
            out.append("")
            out.append("")
    if tail:
        out.append("")
        out.append(
            f"# {'-' * 20} set-up (ocrl.envs ids, and names as {rel} imports them) {'-' * 10}"
        )
        out.append("")
        out += tail
    out.append("")
    out.append(f"# {'-' * 20} {rel} {'-' * max(3, 73 - len(str(rel)))}")
    out.append("")
    for p in algo_pieces:
        lines = main.source.split(b"\n")
        out.append(segment(main, p.node, []))
        nxt = p.node.end_lineno
        blank = 0
        while nxt < len(lines) and not lines[nxt].strip():
            blank += 1
            nxt += 1
        out += [""] * blank
    return "\n".join(out).rstrip() + "\n"


def iter_algos() -> Iterator[Path]:
    yield from sorted(p for p in (ROOT / "algos").glob("*.py") if p.name != "__init__.py")


@dataclass
class Args:
    """Write algos/<name>.py and the ocrl pieces it uses as one file that runs without ocrl."""

    algo: tyro.conf.Positional[Path]
    """the algorithm file, e.g. algos/td3_bc.py"""
    out: Path | None = None
    """where to write the exported file"""
    check: Path | None = None
    """instead of writing: exit 1 unless this file is what --out would write now (the commit aside)"""
    formats: tuple[str, ...] = DEFAULT_FORMATS
    """the dataset inputs the copy reads: hdf5 (D4RL-layout files), d4rl (D4RL names, downloaded), minari (Minari folders and ids); the others give a one-line error naming this flag"""
    features: tuple[str, ...] = ()
    """optional features the copy carries: track (--track), video (--capture-video), policy (policy.pt2)"""


def main(args: Args) -> int:
    if (args.out is None) == (args.check is None):
        return usage("pass exactly one of --out FILE and --check FILE")
    if not args.algo.is_file():
        return usage(f"{args.algo}: no such file; pass an algorithm file from algos/")
    target = args.out or args.check
    algo = args.algo.resolve()
    shown = algo.relative_to(ROOT) if algo.is_relative_to(ROOT) else algo
    command = f"python scripts/export.py {shown.as_posix()} --out {target.name}"
    if tuple(args.formats) != DEFAULT_FORMATS:
        command += f" --formats {' '.join(args.formats)}"
    if args.features:
        command += f" --features {' '.join(args.features)}"
    try:
        text = export(args.algo, command, tuple(args.formats), tuple(args.features))
    except ExportError as e:
        return usage(str(e))
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    ruff_tidy(tmp)
    if args.check:
        fresh = tmp.read_text().split("\n", 1)[1]
        tmp.unlink()
        old = args.check.read_text().split("\n", 1)[1] if args.check.is_file() else ""
        if fresh != old:
            print(f"{args.check}: out of date with {args.algo}; re-run with --out", file=sys.stderr)
            return 1
        print(f"{args.check}: current")
        return 0
    tmp.replace(args.out)
    n = len(args.out.read_text().splitlines())
    print(f"wrote {args.out} ({n} lines)")
    return 0


def usage(message: str) -> int:
    print(f"error: export.py: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
