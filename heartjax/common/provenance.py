"""Where a result comes from: the code (git commit, dirty tree, a fingerprint of the code that computes results),
the libraries, the machine and the command line. A leaf: standard library only, nothing here imports jax.

    provenance.collect()   {"commit", "dirty", "fingerprint", "versions", "machine", "command", "date"}
    provenance.fingerprint()   "ast1-" + 16 hex digits: the code-fingerprint of this copy of heartjax

The fingerprint is a hash of the library code that can change results, normalised so that a refactor which cannot
change what the code computes keeps it:

- scope: every module of the heartjax package except those that cannot change a run's numbers (EXCLUDED: the run
  folder's file names and atomic writes, the error type, this module, the entry points and `serve` (prediction
  for users), the report, figures, reference figures and TensorBoard writers, the ablation layer (it aggregates
  records; the settings of each run are checked separately, as the preset and overrides a record keeps) and the
  command line's path checks);
- each module is parsed (`ast`); docstrings and other bare string statements, imports, type annotations,
  `__all__` / `__version__`-style dunder assignments and `if __name__ == "__main__"` blocks are dropped, and a
  first-party module prefix (`postprocess.apply`, `config_lib.get`) is dropped from the names it qualifies, so
  that `apply` reads the same whether imported by name or reached through its module;
- every top-level function, class header, method and module-level statement becomes one entry: its qualified name
  inside its module (no module path: `Plan.to_json`, `score_case`) and a canonical dump of its normalised syntax
  tree (node types and fields, empty ones left out, no line numbers);
- the fingerprint is the SHA-256 of the sorted entries (a multiset over all modules), cut to 16 hex digits.

So comments, docstrings, formatting, import order, type hints, the order of definitions and moving a function,
class or constant to another module (or renaming a module) keep the fingerprint; a changed constant, default,
expression or statement in the scope changes it. Limits, by design or not: renaming a function, class or variable
changes it (a false "changed", whose only cost is a rerun); so does a change in behaviour-free code inside the
scope (a log message). It does not see what lies outside heartjax's source: the versions of jax, XLA, numpy,
the CPU model or accelerator (recorded beside it; results move at the third decimal between CPU models), the data
on disk, environment variables (XLA_FLAGS, thread counts), a study's own definition (its overrides are kept and
checked per record), or a misclassified module in EXCLUDED. Python's parser may change the tree of the same
source between Python versions (rarely for unchanged syntax; the dump leaves empty fields out for that reason).
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

PACKAGE = Path(__file__).resolve().parents[1]
SCHEME = "ast1"
UNKNOWN = "unknown"
# Modules (dotted, relative to the package; a package name covers its modules) that cannot change a run's numbers.
EXCLUDED = ("__init__", "common.provenance", "common.paths", "common.atomic", "common.errors",
            "predict", "evaluate", "segment", "phantom",
            "serve", "ablation", "eval.report", "eval.figures", "eval.references", "train.tensorboard",
            "data.io.cli_paths")
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy")


def _modules(root: Path, exclude: Sequence[str]) -> dict[str, Path]:
    """{dotted name relative to root: path} of every module under root that is not excluded."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        if not any(name == e or name.startswith(e + ".") for e in exclude):
            out[name] = path
    return out


class _Normalise(ast.NodeTransformer):
    """Drops what cannot change what the code computes; `aliases` maps a local name to the first-party module it
    is bound to, `is_module` says whether a dotted first-party name is a module."""

    def __init__(self, aliases: Mapping[str, str], is_module):
        self.aliases, self.is_module = aliases, is_module

    def _module_of(self, node) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._module_of(node.value)
            return f"{base}.{node.attr}" if base and self.is_module(f"{base}.{node.attr}") else None
        return None

    def visit_Attribute(self, node):
        self.generic_visit(node)
        if self._module_of(node.value) and not self._module_of(node):
            return ast.copy_location(ast.Name(id=node.attr, ctx=node.ctx), node)
        return node

    def visit_Import(self, node):
        return None

    visit_ImportFrom = visit_Import

    def visit_Expr(self, node):  # a docstring or other bare string: no effect
        return None if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) else \
            self.generic_visit(node)

    def visit_arg(self, node):
        node.annotation = None
        return node

    def visit_FunctionDef(self, node):
        node.returns = None
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        for child in node.body:  # an annotation in a class body can declare a field (dataclasses): kept
            if isinstance(child, ast.AnnAssign):
                child.in_class = True
        return self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self.generic_visit(node)
        if getattr(node, "in_class", False) or not node.simple:
            node.annotation = ast.Constant(None)
            return node
        if node.value is None:  # a bare declaration outside a class: no effect
            return None
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)


def _canon(node) -> str:
    """A canonical dump of a syntax tree: node types and non-empty fields, no positions."""
    if isinstance(node, ast.AST):
        fields = ((f, getattr(node, f, None)) for f in node._fields)
        return f"{type(node).__name__}(" + ",".join(f"{f}={_canon(v)}" for f, v in fields
                                                   if v is not None and v != []) + ")"
    if isinstance(node, list):
        return "[" + ",".join(_canon(v) for v in node) + "]"
    return repr(node)


def _aliases(tree: ast.Module, package: str, is_module) -> dict[str, str]:
    """{local name: first-party module} bound by the imports of a module of `package` (relative ones resolved)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update({a.asname: a.name for a in node.names if a.asname and is_module(a.name)})
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.update({a.asname or a.name: f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")})
    return out


def _is_main_block(node) -> bool:
    return isinstance(node, ast.If) and "__main__" in _canon(node.test) and "__name__" in _canon(node.test)


def _entries(body: list, prefix: str = "") -> Iterable[tuple[str, str]]:
    """(qualified name, dump) of every definition and statement of a module or class body."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, _canon(node)
        elif isinstance(node, ast.ClassDef):
            members = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            header = ast.ClassDef(**{**{f: getattr(node, f, None) for f in node._fields},
                                     "body": [n for n in node.body if n not in members]})
            yield prefix + node.name, _canon(header)
            yield from _entries(members, f"{prefix}{node.name}.")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            if not (names and all(n.startswith("__") and n.endswith("__") for n in names)):
                yield prefix + ",".join(names), _canon(node)
        elif not _is_main_block(node):
            yield prefix, _canon(node)


def source_entries(root: Path = PACKAGE, exclude: Sequence[str] = EXCLUDED) -> list[tuple[str, str]]:
    """The sorted (qualified name, normalised dump) entries the fingerprint hashes, over the package `root`."""
    root = Path(root)
    every = {root.name if n == "__init__" else f"{root.name}.{n}" for n in _modules(root, ())}
    out = []
    for name, path in _modules(root, exclude).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        full = root.name if name == "__init__" else f"{root.name}.{name}"
        package = full if path.name == "__init__.py" else full.rpartition(".")[0]
        tree = _Normalise(_aliases(tree, package, every.__contains__), every.__contains__).visit(tree)
        out += list(_entries(tree.body))
    return sorted(out)


@lru_cache(maxsize=8)
def _digest(root: Path, exclude: tuple[str, ...]) -> str:
    text = "\n".join(f"{k}\t{v}" for k, v in source_entries(root, exclude))
    return f"{SCHEME}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def fingerprint(root: Path = PACKAGE, exclude: Sequence[str] = EXCLUDED) -> str:
    """`ast1-` and 16 hex digits: the SHA-256 of `source_entries` (see the module docstring); computed once per
    process and package folder."""
    return _digest(Path(root).resolve(), tuple(exclude))


def _git(root: Path, *args: str) -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_state(root: Path = PACKAGE.parent) -> tuple[str, bool | str]:
    """(commit, dirty) of the checkout `root` is the top of; ("unknown", "unknown") outside one (a pip-installed
    copy, git missing), also when `root` only lies inside another repository (a virtual environment's)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():
        return UNKNOWN, UNKNOWN
    commit, status = _git(root, "rev-parse", "HEAD"), _git(root, "status", "--porcelain")
    return (commit or UNKNOWN), (UNKNOWN if status is None else bool(status))


def versions() -> dict[str, str]:
    """The versions of Python and of jax, jaxlib, flax, optax and numpy ("not installed" where absent)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, sysctl on macOS, else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "Hardware", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=10).stdout.strip() or UNKNOWN
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or UNKNOWN


def machine() -> dict:
    """CPU model and count, OS and architecture, and the accelerator (backend, device kind, count) as the running
    jax sees it: read only when the process has imported jax (every run has), "not loaded" otherwise."""
    out = {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": f"{platform.system()}-{platform.machine()}"}
    jax = sys.modules.get("jax")
    try:
        devices = jax.devices()
        out.update(backend=jax.default_backend(), accelerator=devices[0].device_kind, devices=len(devices))
    except Exception:  # noqa: BLE001 - jax absent or without a backend: the CPU facts stand alone
        out.update(backend="not loaded", accelerator="not loaded", devices=0)
    return out


def command() -> str:
    """The command line of this process, as typed (`python -m experiments.ablate ...`)."""
    return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def collect() -> dict:
    """Every provenance field of a result made now by this process."""
    commit, dirty = git_state()
    return {"commit": commit, "dirty": dirty, "fingerprint": fingerprint(), "versions": versions(),
            "machine": machine(), "command": command(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def fingerprint_of(prov: Mapping | None) -> str:
    """The code fingerprint a provenance dict names ("unknown" for none: made before provenance was recorded)."""
    return (prov or {}).get("fingerprint") or UNKNOWN


def commit_label(prov: Mapping | None) -> str:
    """`c13b632`, `c13b632+dirty`, `unknown` (no checkout) or `not recorded` (no provenance)."""
    if not prov:
        return "not recorded"
    commit = prov.get("commit") or UNKNOWN
    short = commit[:7] if commit != UNKNOWN else UNKNOWN
    return short + ("+dirty" if prov.get("dirty") is True else "")


def machine_label(m: Mapping) -> str:
    """`AMD EPYC 7B13 (2 CPUs)` or `NVIDIA H200 x1 (gpu); Intel Xeon (16 CPUs)`."""
    cpu = f"{m.get('cpu', UNKNOWN)} ({m.get('cpus', '?')} CPUs)"
    if m.get("backend") in (None, "cpu", "not loaded"):
        return cpu
    return f"{m.get('accelerator')} x{m.get('devices')} ({m.get('backend')}); {cpu}"


def describe(prov: Mapping | None) -> list[str]:
    """Markdown lines of one provenance dict (results.md)."""
    if not prov:
        return ["No provenance recorded (made before it was)."]
    v = prov.get("versions", {})
    tree = {True: "dirty tree", False: "clean tree"}.get(prov.get("dirty"), "tree state unknown")
    return [f"- code: commit {prov.get('commit')} ({tree}), code fingerprint `{prov.get('fingerprint')}` "
            "(docs/provenance.md)",
            "- libraries: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- machine: {machine_label(prov.get('machine', {}))}, {prov.get('machine', {}).get('platform', UNKNOWN)}",
            f"- command: `{prov.get('command')}` ({prov.get('date')})"]
