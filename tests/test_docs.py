"""The docs stay usable: every `python algos/<x>.py` / `python scripts/<x>.py` / `python -m scripts.bench
<benchmark>` command in a fenced shell block of README.md or docs/**/*.md names only flags (and presets) its
file (or benchmark) takes, and every relative link points at a file of the repository that exists (and at
a heading that exists, for `page.md#anchor`)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
import shlex
import sys
import typing
from pathlib import Path

import pytest
import tyro

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&"}
REDIRECTS = re.compile(r"^\d*(<|>|>>|<<|<&|>&|&>)$")
KEYWORDS = {"do", "done", "then", "else", "elif", "fi", "time", "!", "{", "}"}
SCRIPT = re.compile(r"^(?:\./)?((?:algos|scripts)/[A-Za-z0-9_]+\.py)$")
BENCH = "scripts.bench"  # the benchmark package, run as `python -m scripts.bench <benchmark> ...`
VAR = re.compile(r"^\$(?:\{(\w+)\}|(\w+))$")
ASSIGN = re.compile(r"^([A-Za-z_]\w*)=(.*)$", re.S)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of every ```bash / ```sh / ```shell block."""
    blocks, body, start, lang = [], None, 0, None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if body is None and fence:
            lang, body, start = fence.group(1).lower(), [], number + 1
        elif body is not None and fence and not fence.group(1):
            if lang in SHELL:
                blocks.append((start, "\n".join(body)))
            body = None
        elif body is not None:
            body.append(line)
    return blocks


def commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block as word lists: line continuations joined, comments dropped,
    split at ; && || | & and loop keywords, leading VAR=value prefixes (and `env`) removed, redirections
    dropped, and a word that is exactly $VAR or ${VAR} replaced by the words of an earlier bare VAR=...
    line of the block (how the docs pass a shared set of flags)."""
    variables: dict[str, list[str]] = {}
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lex.whitespace_split = True
        lex.commenters = "#"
        segments, segment = [], []
        for word in [*lex, ";"]:
            if word in SEPARATORS:
                segments.append(segment)
                segment = []
            else:
                segment.append(word)
        for segment in segments:
            while segment and (segment[0] in KEYWORDS or segment[0] == "env"):
                segment = segment[1:]
            if segment and segment[0] in ("for", "while", "until", "if", "case", "select"):
                continue  # `for S in 1 2 3` and friends: no command to check
            assigns = []
            while segment and ASSIGN.match(segment[0]):
                assigns.append(ASSIGN.match(segment[0]).groups())
                segment = segment[1:]
            if not segment:  # bare assignments set shell variables for the lines below
                variables.update({name: shlex.split(value) for name, value in assigns})
                continue
            cmd, redirect = [], False
            for word in segment:
                var = VAR.match(word)
                name = var and (var.group(1) or var.group(2))
                if redirect:
                    redirect = False
                elif REDIRECTS.match(word):
                    redirect = True  # the next word is the file
                elif name in variables:
                    cmd += variables[name]
                else:
                    cmd.append(word)
            out.append(cmd)
    return out


def script_of(cmd: list[str]) -> tuple[str, list[str]] | None:
    """(`algos/x.py` or `scripts/x.py`, its arguments) when the command runs one with python; for
    `python -m scripts.bench` ("scripts.bench", [benchmark, its arguments])."""
    if not cmd or not Path(cmd[0]).name.startswith("python"):
        return None
    rest = cmd[1:]
    while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
        rest = rest[2:] if rest[0] in ("-W", "-X") else rest[1:]  # python's own options
    if rest[:2] == ["-m", BENCH]:
        return BENCH, rest[2:]
    m = SCRIPT.match(rest[0]) if rest else None
    return (m.group(1), rest[1:]) if m else None


@functools.cache
def module_of(script: str):
    """The file's module, imported once (algos/x.py as ocrl.algos.x; scripts by path; scripts.bench as
    the package it is, from the repository root as `python -m` finds it)."""
    path = ROOT / script
    if script == BENCH:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        return importlib.import_module(BENCH)
    if script.startswith("algos/"):
        return importlib.import_module(f"ocrl.algos.{path.stem}")
    name = f"_docs_{path.parent.name}_{path.stem}"
    if (
        str(path.parent) not in sys.path
    ):  # as `python scripts/x.py` has it: modules beside the script import
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@functools.cache
def flags_of(script: str, benchmark: str | None = None) -> frozenset[str]:
    """What tyro makes of the file's `Args` dataclass (or the benchmark module's, for scripts.bench):
    --kebab-case per field (positional fields have no flag), --no-<name> for booleans, and --help. (Every
    file parses `Args` with tyro, directly or through ocrl.experiment.cli; that this equals tyro's own
    parser was checked when this test was written.)"""
    module = module_of(script)
    args_cls = module.benchmark(benchmark).Args if benchmark else module.Args
    hints = typing.get_type_hints(args_cls, include_extras=True)
    positional = typing.get_args(tyro.conf.Positional[int])[1]
    flags = {"--help"}
    for field in dataclasses.fields(args_cls):
        hint = hints[field.name]
        if positional in getattr(hint, "__metadata__", ()):
            continue
        name = field.name.replace("_", "-")
        flags.add(f"--{name}")
        if hint is bool:
            flags.add(f"--no-{name}")
    return frozenset(flags)


def values(args: list[str], flag: str) -> list[str]:
    """The words after `flag` up to the next --flag (or its --flag=value)."""
    out = []
    for i, word in enumerate(args):
        if word.startswith(flag + "="):
            out.append(word.split("=", 1)[1])
        elif word == flag:
            for value in args[i + 1 :]:
                if value.startswith("--"):
                    break
                out.append(value)
    return out


def problems(cmd: list[str]) -> list[str]:
    """What is wrong with one command: a missing file, an unknown flag, an unknown --preset, and for
    scripts/sweep.py an unknown algorithm or an --flags name that one of its --algos lacks."""
    found = script_of(cmd)
    if found is None:
        return []
    script, args = found
    benchmark = None
    if script == BENCH:
        benchmarks = module_of(BENCH).BENCHMARKS
        if not args or args[0] not in benchmarks:
            return [f"{BENCH} has no benchmark {args[0] if args else '(none given)'}"]
        benchmark, args = args[0], args[1:]
        script = f"{BENCH} {benchmark}"
    elif not (ROOT / script).is_file():
        return [f"{script} does not exist"]
    known = flags_of(found[0], benchmark)
    out = []
    for word in args:
        if word.startswith("--") and word != "--":
            flag = word.split("=", 1)[0]
            if flag not in known:
                out.append(f"{script} has no flag {flag}")
    presets = getattr(module_of(found[0]), "PRESETS", None)
    if isinstance(presets, dict):
        out += [
            f"{script} has no --preset {p}" for p in values(args, "--preset") if p not in presets
        ]
    if script == "scripts/sweep.py":
        for algo in values(args, "--algos"):
            if not (ROOT / "algos" / f"{algo}.py").is_file():
                out.append(f"--algos {algo}: algos/{algo}.py does not exist")
                continue
            fields = {f.name for f in dataclasses.fields(module_of(f"algos/{algo}.py").Args)}
            for item in values(args, "--flags"):
                if item.split("=", 1)[0] not in fields:
                    out.append(f"--flags {item}: algos/{algo}.py has no field {item.split('=')[0]}")
    return out


def doc_commands() -> list[tuple[str, list[str]]]:
    """('file:line', command) of every algos/scripts command in the docs."""
    out = []
    for doc in DOCS:
        for start, block in shell_blocks(doc.read_text()):
            out += [(f"{rel(doc)}:{start}", c) for c in commands(block) if script_of(c)]
    return out


def test_the_docs_have_commands_to_check():
    cmds = doc_commands()
    files = {script_of(c)[0] for _, c in cmds}
    # The README's quickstart and the pages of every algorithm file are among them.
    assert "algos/td3_bc.py" in files and "scripts/sweep.py" in files, files
    # And every benchmark of scripts/bench/.
    runs = [script_of(c) for _, c in cmds]
    benchmarks = {args[0] for script, args in runs if script == BENCH and args}
    assert set(module_of(BENCH).BENCHMARKS) <= benchmarks, sorted(benchmarks)
    algos = {f"algos/{p.stem}.py" for p in (ROOT / "algos").glob("*.py") if p.stem != "__init__"}
    assert algos <= files, sorted(algos - files)


def test_every_algorithm_has_a_page_that_the_readme_links():
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "algos").glob("*.py")):
        if path.stem != "__init__":
            assert (ROOT / "docs" / "algos" / f"{path.stem}.md").is_file(), path.stem
            assert f"(docs/algos/{path.stem}.md)" in readme, path.stem


def test_every_flag_in_the_docs_exists():
    bad = [
        f"{where}: {msg}  [{shlex.join(c)}]" for where, c in doc_commands() for msg in problems(c)
    ]
    assert not bad, "\n".join(bad)


def test_the_command_check_can_fail():
    block = (
        "# a comment with an apostrophe's worth\n"
        'F="--batch-size 8 \\\n    --no-such-flag"\n'
        "for S in 1 2; do OMP_NUM_THREADS=1 python algos/td3_bc.py --seed $S $F && echo ok; done\n"
        "env OMP_NUM_THREADS=1 python -u algos/td3_bc.py --no-progress --total-steps=5 > log.txt\n"
        "python algos/td3_bc.py --no-total-steps --preset no-such-preset\n"
        "python algos/no_such_file.py --x 1\n"
        "python scripts/sweep.py --algos td3_bc sac --flags total_steps=5 no_such_field=1\n"
        "python -m scripts.bench ggd_td --updates 5 --utd 2 --threads=1 --no-compile\n"
        "python -m scripts.bench no_such_benchmark --rounds 1\n"
        "python -m scripts.bench expo --utd 2 --no-compile && python -m pytest -q tests\n"
    )
    cmds = commands(block)
    assert ["echo", "ok"] in cmds  # split at && and ;, the loop keywords dropped
    runs = [c for c in cmds if script_of(c)]
    assert [script_of(c)[0] for c in runs] == [
        "algos/td3_bc.py", "algos/td3_bc.py", "algos/td3_bc.py", "algos/no_such_file.py",
        "scripts/sweep.py", "scripts.bench", "scripts.bench", "scripts.bench",
    ]  # fmt: skip
    # $F holds the flags of the continued assignment; $S is a value and stays as it is.
    assert runs[0] == ["python", "algos/td3_bc.py", "--seed", "$S", "--batch-size", "8",
                       "--no-such-flag"]  # fmt: skip
    assert problems(runs[0]) == ["algos/td3_bc.py has no flag --no-such-flag"]
    # env and python's own options skipped; --no-<bool>, --flag=value; the redirection is no argument.
    assert problems(runs[1]) == []
    assert problems(runs[2]) == [
        "algos/td3_bc.py has no flag --no-total-steps",  # --no- only for booleans
        "algos/td3_bc.py has no --preset no-such-preset",
    ]
    assert problems(runs[3]) == ["algos/no_such_file.py does not exist"]
    assert problems(runs[4]) == [
        "--flags no_such_field=1: algos/td3_bc.py has no field no_such_field",
        "--flags no_such_field=1: algos/sac.py has no field no_such_field",
    ]
    # A benchmark's flags are its own module's: expo's --utd is not ggd_td's; --no-compile is a
    # boolean of expo's Args only. `python -m pytest` is no script to check.
    assert problems(runs[5]) == [
        "scripts.bench ggd_td has no flag --utd",
        "scripts.bench ggd_td has no flag --no-compile",
    ]
    assert problems(runs[6]) == ["scripts.bench has no benchmark no_such_benchmark"]
    assert problems(runs[7]) == []
    assert script_of(["python", "-m", "pytest", "-q"]) is None
    # Positional arguments are not flags; a script's own flags are read from its Args.
    assert "--env-id" not in flags_of("scripts/collect_dataset.py")
    assert problems(["python", "scripts/report.py", "runs/x", "--out-dir", "y"]) == []


# Links: [text](target) and ![alt](target), outside code spans and fenced blocks.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """The text without fenced blocks and inline code spans."""
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(doc: Path) -> set[str]:
    """GitHub's heading ids of a Markdown file."""
    out = set()
    for line in prose(doc.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            title = re.sub(r"[^\w\- ]", "", m.group(1).lower().replace("`", ""))
            out.add(title.replace(" ", "-"))
    return out


def link_problems(doc: Path) -> list[str]:
    out = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if ROOT not in (dest, *dest.parents):
            out.append(f"{rel(doc)}: {target} points outside the repository")
        elif not dest.exists():
            out.append(f"{rel(doc)}: {target} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{rel(doc)}: {target}: no heading #{anchor} in {rel(dest)}")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_relative_links_resolve(doc):
    assert not link_problems(doc), "\n".join(link_problems(doc))


def test_the_link_check_can_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A title\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#a-title) ![ok](docs/a.md) `[code](x.md)` [web](https://x.org)\n"
        "[gone](docs/b.md) [anchor](docs/a.md#nope) [out](../shared/x.md)\n"
    )
    assert link_problems(doc) == [
        "README.md: docs/b.md does not exist",
        "README.md: docs/a.md#nope: no heading #nope in docs/a.md",
        "README.md: ../shared/x.md points outside the repository",
    ]
