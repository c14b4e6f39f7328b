"""The layer order, enforced: every import of every module (function-local ones included) points down.

    leaves (heartjax.common: errors, rng, atomic, paths, provenance, cli)  <-  config  <-  data, conv  <-  model  <-  train, eval  <-  experiment
      <-  ablation, serve  <-  entry points (heartjax.predict, evaluate, segment, phantom)  <-  experiments/

A module may import its own package's modules and anything in a lower layer; never a higher layer and never a
peer package of its own layer (data and conv, train and eval, ablation and serve are independent). There is no
import cycle between modules, no private name (leading underscore) is taken from another module, and a
function-local import is only for an optional dependency (or a first-party module that needs one at import).
There is no list of exceptions.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("heartjax", "experiments")
OPTIONAL = ("torch", "monai")  # not in requirements.txt: imported where used, inside functions

# (group, layer): a module belongs to the group that is the longest prefix of its name.
GROUPS = {
    "heartjax": 0, "heartjax.common": 0,
    "heartjax.config": 1,
    "heartjax.data": 2, "heartjax.conv": 2,
    "heartjax.model": 3,
    "heartjax.train": 4, "heartjax.eval": 4,
    "heartjax.experiment": 5,
    "heartjax.ablation": 6, "heartjax.serve": 6,
    "heartjax.predict": 7, "heartjax.evaluate": 7, "heartjax.segment": 7, "heartjax.phantom": 7,
    "experiments": 8,
}
ENTRY_POINTS = ("heartjax.predict", "heartjax.evaluate", "heartjax.segment", "heartjax.phantom")


@dataclasses.dataclass
class Import:
    target: str          # the first-party module imported, or the top-level name of a third-party one
    names: tuple         # names taken with `from target import ...` that are not modules
    local: bool          # inside a function
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group_of(name: str) -> str:
    return max((g for g in GROUPS if name == g or name.startswith(g + ".")), key=len)


def _local_nodes(tree: ast.AST) -> set[int]:
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return local


def parse_imports(name: str, source: str, is_module) -> list[Import]:
    """Every import statement of a module. `is_module(dotted)` says whether a first-party dotted name is a module."""
    tree = ast.parse(source)
    local, out = _local_nodes(tree), []
    package = name if is_module(name + ".__init__") else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append(Import(a.name if a.name.split(".")[0] in FIRST_PARTY else a.name.split(".")[0], (),
                                  id(node) in local, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] not in FIRST_PARTY:
                out.append(Import(base.split(".")[0], (), id(node) in local, node.lineno))
                continue
            names = []
            for a in node.names:
                if is_module(f"{base}.{a.name}"):
                    out.append(Import(f"{base}.{a.name}", (), id(node) in local, node.lineno))
                else:
                    names.append(a.name)
            if names:
                out.append(Import(base, tuple(names), id(node) in local, node.lineno))
    return out


def private_attributes(source: str, imports_of_modules: dict[str, str]) -> list[tuple[str, str, int]]:
    """(module alias, attribute, line) for `alias._name` where alias is bound to a first-party module."""
    tree = ast.parse(source)
    hits = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imports_of_modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            hits.append((node.value.id, node.attr, node.lineno))
    return hits


def module_aliases(source: str, is_module) -> dict[str, str]:
    """{local name: first-party module} bound by `import a.b as c` or `from a import b` (b a module)."""
    aliases = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FIRST_PARTY:
            for a in node.names:
                if is_module(f"{node.module}.{a.name}"):
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in FIRST_PARTY and a.asname:
                    aliases[a.asname] = a.name
    return aliases


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(sources: dict[str, str]) -> list[str]:
    """Every broken rule of a set of first-party modules {dotted name: source}."""
    modules = set(sources)
    packages = {n for n in modules if any(m.startswith(n + ".") for m in modules)}

    def is_module(dotted: str) -> bool:
        return dotted in modules if not dotted.endswith(".__init__") else dotted[:-9] in packages

    parsed = {n: parse_imports(n, s, is_module) for n, s in sources.items()}
    needs_optional = {n for n, imps in parsed.items() if any(i.target in OPTIONAL and not i.local for i in imps)}
    problems, graph = [], {n: set() for n in modules}
    for name, imports in sorted(parsed.items()):
        mine = group_of(name)
        for imp in imports:
            first_party = imp.target.split(".")[0] in FIRST_PARTY
            where = f"{name}:{imp.line}"
            if imp.local and imp.target not in OPTIONAL and imp.target not in needs_optional:
                problems.append(f"{where} imports {imp.target} inside a function (only optional dependencies: "
                                f"{', '.join(OPTIONAL)})")
            if not first_party:
                continue
            if imp.target not in modules:
                problems.append(f"{where} imports {imp.target}, which is not a module of this repository")
                continue
            graph[name].add(imp.target)
            theirs = group_of(imp.target)
            if theirs != mine and GROUPS[theirs] >= GROUPS[mine]:
                problems.append(f"{where} ({mine}, layer {GROUPS[mine]}) imports {imp.target} ({theirs}, layer "
                                f"{GROUPS[theirs]}): against the layer order")
            for n in imp.names:
                if n.startswith("_") and not n.startswith("__"):
                    problems.append(f"{where} imports the private name {n} from {imp.target}")
        for alias, attr, line in private_attributes(sources[name], module_aliases(sources[name], is_module)):
            problems.append(f"{name}:{line} uses the private name {alias}.{attr} of another module")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return problems


def repository_sources() -> dict[str, str]:
    files = sorted(ROOT.glob("heartjax/**/*.py")) + sorted(ROOT.glob("experiments/**/*.py"))
    return {module_name(p): p.read_text() for p in files}


def test_every_module_has_a_layer():
    assert all(group_of(n) in GROUPS for n in repository_sources())


def test_the_layer_order_holds():
    problems = violations(repository_sources())
    assert not problems, "\n".join(problems)


def test_top_level_modules():
    """heartjax/ holds no top-level module with code of its own: only packages (the leaves in heartjax.common)
    and entry points of at most 20 lines that only import and call."""
    own = []
    for p in sorted((ROOT / "heartjax").glob("*.py")):
        name = module_name(p)
        if name in ENTRY_POINTS:
            tree = ast.parse(p.read_text())
            assert len(p.read_text().splitlines()) <= 20, name
            assert all(isinstance(n, (ast.Expr, ast.Import, ast.ImportFrom, ast.If, ast.Assign)) for n in tree.body), name
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(tree)), name
        elif name != "heartjax":
            own.append(name)
    assert not own, own


def test_module_and_function_sizes():
    """No module over 350 lines; no function over 60 lines (tests aside)."""
    long_modules, long_functions = [], []
    for name, source in repository_sources().items():
        if len(source.splitlines()) > 350:
            long_modules.append(name)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long_modules and not long_functions, (long_modules, long_functions)


# The checker itself must catch each kind of violation.

@pytest.mark.parametrize("sources, expected", [
    ({"heartjax.data.x": "from heartjax.model import y\n", "heartjax.model.y": ""}, "against the layer order"),
    ({"heartjax.train.x": "from heartjax.eval import y\n", "heartjax.eval.y": ""}, "against the layer order"),
    ({"heartjax.config.a": "from heartjax.config import b\n", "heartjax.config.b": "from heartjax.config import a\n"},
     "import cycle"),
    ({"heartjax.model.x": "from heartjax.data.y import _secret\n", "heartjax.data.y": "_secret = 1\n"}, "private name"),
    ({"heartjax.model.x": "from heartjax.data import y\nz = y._secret\n", "heartjax.data.y": "_secret = 1\n"},
     "private name y._secret"),
    ({"heartjax.model.x": "def f():\n    import scipy\n"}, "inside a function"),
    ({"heartjax.model.x": "def f():\n    from heartjax.data import y\n", "heartjax.data.y": ""}, "inside a function"),
])
def test_checker_catches(sources, expected):
    problems = violations(sources)
    assert any(expected in p for p in problems), problems


def test_checker_accepts_optional_and_downward_imports():
    sources = {"heartjax.model.x": "from heartjax.data import y\ndef f():\n    import torch\n",
               "heartjax.data.y": "from heartjax.common.errors import HeartjaxError\n", "heartjax.common.errors": "",
               "experiments.t": "import torch\n", "experiments.u": "def f():\n    from experiments import t\n"}
    assert violations(sources) == []
