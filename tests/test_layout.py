"""The package's layout, checked from the source with ``ast`` so that it stays true (DESIGN.md):

- no module grows past ``MAX_LINES`` lines (it becomes a package with one file per question instead);
- no two modules import each other, at module level or lazily;
- no module below ``landscape/__init__.py`` imports the package face;
- one copy of each validation and JSON helper (``landscape/_checks.py``, ``landscape/_json.py``);
- a lower layer never imports a higher one, lazily or not.

Imports inside ``if TYPE_CHECKING:`` blocks are annotations only and never run: they are ignored. Work still in
progress is named in allow-lists that expire on their own: an entry that no longer applies fails the test, so the
lists only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "landscape"
MAX_LINES = 700

# Files allowed over the limit while a split is under way (empty: every split of issue 19 has landed). A file that is
# gone is skipped; one that is no longer over the limit fails, so that the list cannot go stale.
STILL_SPLITTING: tuple[str, ...] = ()

# The layers of DESIGN.md, lowest first. A module may import modules of its own layer and of the layers below.
SHARED, STORAGE, PROBLEM, MEMORY, OPERATORS, ESTIMATORS, ANALYSES, PLOTS, FRONT, FACE = range(10)
LAYER_NAMES = ("shared", "storage", "problem + data", "memory", "operators", "estimators", "analyses", "plots")
LAYER_NAMES += ("cli / report", "package face")

#: Module prefix -> layer; a module takes the layer of its longest matching prefix (``landscape`` itself, the
#: package face, is above them all).
LAYERS = {
    "landscape._checks": SHARED,
    "landscape._json": SHARED,
    "landscape._version": SHARED,
    "landscape.progress": SHARED,
    # What a batch is and the data-parallel plumbing: the storage writes per rank, the problem moves batches.
    "landscape.batch": SHARED,
    "landscape.distributed": SHARED,
    # Where each rank's entries of a sharded flat vector lie and the reductions over ranks (problem and operators).
    "landscape.sharding": SHARED,
    # Norms of long vectors summed in float64 (torch's float32 norm kernel is 1.5% low at 10^8 entries).
    "landscape.reductions": SHARED,
    "landscape.cache": STORAGE,
    "landscape.store": STORAGE,
    "landscape.problem": PROBLEM,
    # Convolutions and eval-mode batch norms with cheaper second backward passes: the gradient graphs that the
    # operators build and that memory measures.
    "landscape.double_backward": PROBLEM,
    "landscape.losses": PROBLEM,
    "landscape.lm_head": PROBLEM,
    "landscape.data": PROBLEM,
    "landscape.checkpoint": PROBLEM,
    "landscape.attention": PROBLEM,
    "landscape.models": PROBLEM,
    "landscape.training": PROBLEM,
    "landscape.example_pool": PROBLEM,
    # The memory budget and the estimate of what an analysis holds: it measures a problem's gradient graphs (above
    # the problem) and the operators and estimators honour it (below them), so it owns the sizes it predicts (the
    # operators' graph cache and block defaults, the estimators' vector counts) and they import those from it.
    "landscape.memory": MEMORY,
    "landscape.operators": OPERATORS,
    "landscape.linalg": ESTIMATORS,
    "landscape.spectrum": ANALYSES,
    "landscape.layerwise": ANALYSES,
    "landscape.blocks": ANALYSES,
    "landscape.roughness": ANALYSES,
    "landscape.sharpness": ANALYSES,
    "landscape.stability": ANALYSES,
    "landscape.scaling": ANALYSES,
    "landscape.surface": ANALYSES,
    "landscape.plot": PLOTS,
    "landscape.cli": FRONT,
    "landscape.report": FRONT,
    "landscape.__main__": FRONT,
}

# Upward imports waiting for a decision or for another helper's work, as (importer, imported) module prefixes: an
# entry covers every import from a module under the first to one under the second. An entry that no longer matches
# any import fails, so the list only shrinks.
KNOWN_UPWARD: dict[tuple[str, str], str] = {
    # A result that draws itself (``.plot()``, DESIGN.md's API) imports the plot layer lazily.
    ("landscape.linalg.slq", "landscape.plot"): "SpectralDensity.plot()",
    ("landscape.surface.grid", "landscape.plot"): "Surface.plot() and friends",
    ("landscape.layerwise", "landscape.plot"): "LayerwiseCurvature's figure",
    ("landscape.blocks", "landscape.plot"): "BlockSpectra's figures",
    ("landscape.scaling", "landscape.plot"): "ScalingReport's figure",
    ("landscape.stability", "landscape.plot"): "EdgeOfStabilityTracker's figure",
}

#: Validation and JSON helpers that exist once: no function of these names outside their homes.
ONE_COPY = {
    "_check_int": ("landscape._checks",),
    "_check_seed": ("landscape._checks",),
    "_check_positive": ("landscape._checks",),
    "_check_problem": ("landscape._checks",),
    "_check_batch_size": ("landscape._checks",),
    "_jsonable": ("landscape._json",),
    "jsonable": ("landscape._json",),
    "strict_json": ("landscape._json",),
    "finite_population_factor": ("landscape.scaling",),
}

# Copies (file, function name) still to be replaced by the one copy, in modules no helper has taken on yet. Each must
# still exist, so the list only shrinks.
KNOWN_COPIES: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    """One ``import`` statement's target inside the package: the importer, the imported module, where it is."""

    importer: str
    target: str
    path: Path
    line: int
    lazy: bool

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}" + (" (lazy)" if self.lazy else "")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def covers(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def related(a: str, b: str) -> bool:
    """A package and a module inside it (a package's ``__init__`` imports its parts; parts may use each other)."""
    return covers(a, b) or covers(b, a)


def is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def walk_runtime(tree: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """Every node that runs, with whether it sits inside a function (a lazy import); ``if TYPE_CHECKING:`` bodies
    are skipped (their ``else`` is kept)."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, lazy = stack.pop()
        yield node, lazy
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        children = node.orelse if is_type_checking(node) else list(ast.iter_child_nodes(node))
        stack.extend((child, inner) for child in reversed(children))


def targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """The package's modules an import statement loads: ``from a import b`` is module ``a.b`` when that is one,
    else ``a`` itself."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = importer.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [f"{module}.{a.name}" if f"{module}.{a.name}" in modules() else module for a in node.names]


@cache
def imports() -> tuple[Import, ...]:
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, lazy in walk_runtime(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in dict.fromkeys(targets(node, name, path.name == "__init__.py")):
                    if covers("landscape", target):
                        found.append(Import(name, target, path, node.lineno, lazy))
    return tuple(found)


def layer(name: str) -> int:
    if name == "landscape":
        return FACE
    prefix = max((p for p in LAYERS if covers(p, name)), key=len, default=None)
    assert prefix is not None, f"module {name} has no layer: add it to LAYERS in tests/test_layout.py (DESIGN.md)"
    return LAYERS[prefix]


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_module_is_longer_than_the_limit():
    offenders = [
        f"{relative(path)}: {line_count(path)} lines"
        for path in modules().values()
        if line_count(path) > MAX_LINES and relative(path) not in STILL_SPLITTING
    ]
    assert not offenders, (
        f"modules over {MAX_LINES} lines (a module answers one question; past ~600 lines it becomes a package with "
        f"one file per question, DESIGN.md): {offenders}"
    )


def test_still_splitting_list_is_not_stale():
    stale = [
        f"{entry} ({line_count(ROOT / entry)} lines)"
        for entry in STILL_SPLITTING
        if (ROOT / entry).is_file() and line_count(ROOT / entry) <= MAX_LINES
    ]
    assert not stale, (
        f"not over {MAX_LINES} lines any more: remove {stale} from STILL_SPLITTING in tests/test_layout.py"
    )


def dependencies(keep) -> dict[str, dict[str, Import]]:
    """``importer -> {imported module: first such import}`` over the imports for which ``keep(importer, target)``."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules()}
    for imp in imports():
        if imp.target in modules() and imp.target != imp.importer and keep(imp.importer, imp.target):
            graph[imp.importer].setdefault(imp.target, imp)
    return graph


def test_no_two_modules_import_each_other():
    graph = dependencies(lambda a, b: not related(a, b))
    pairs = sorted(
        f"{a} <-> {b} ({graph[a][b].where()} and {graph[b][a].where()})"
        for a in graph
        for b in graph[a]
        if a < b and a in graph[b]
    )
    assert not pairs, (
        "modules importing each other (DESIGN.md: no two modules import each other, lazily or not; move the shared "
        f"piece down into a lower module): {pairs}"
    )


def find_cycle(graph: dict[str, dict[str, Import]]) -> list[str]:
    """One cycle of ``graph`` as the list of its modules (the first repeated at the end), or ``[]``."""
    done: set[str] = set()
    for root in graph:
        path, stack = [root], [iter(graph[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                done.add(path.pop())
                stack.pop()
            elif nxt in path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return []


def test_imports_form_no_longer_cycle():
    # A package's __init__ importing its parts counts; a part importing its own package's face does not.
    graph = dependencies(lambda a, b: not covers(b, a))
    cycle = find_cycle(graph)
    steps = [f"{a} -> {b} ({graph[a][b].where()})" for a, b in pairwise(cycle)]
    assert not cycle, f"an import cycle (DESIGN.md: a lower layer never imports a higher one): {steps}"


def test_no_module_imports_the_package_face():
    face = [
        f"{imp.where()}: {imp.importer} imports the package face (`import landscape` or `from landscape import X` "
        "with X not a module); import X from the module that defines it"
        for imp in imports()
        if imp.target == "landscape" and imp.importer != "landscape"
    ]
    assert not face, face


def defined_functions() -> Iterator[tuple[str, str, Path, int]]:
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node.name, path, node.lineno


def test_validation_and_json_helpers_exist_once():
    copies = {
        (relative(path), function): line
        for module, function, path, line in defined_functions()
        if function in ONE_COPY and not any(covers(home, module) for home in ONE_COPY[function])
    }
    offenders = [
        f"{file}:{line}: {function} (the one copy lives in {' / '.join(ONE_COPY[function])}; import it from there)"
        for (file, function), line in sorted(copies.items())
        if (file, function) not in KNOWN_COPIES
    ]
    assert not offenders, f"a second copy of a validation or JSON helper: {offenders}"
    stale = sorted(KNOWN_COPIES - set(copies))
    assert not stale, f"KNOWN_COPIES of tests/test_layout.py names copies that are gone: remove {stale}"


def test_lower_layers_never_import_higher_ones():
    upward = [imp for imp in imports() if imp.target != "landscape" and layer(imp.target) > layer(imp.importer)]
    known = {
        pair for pair in KNOWN_UPWARD for imp in upward if covers(pair[0], imp.importer) and covers(pair[1], imp.target)
    }
    offenders = [
        f"{imp.where()}: {imp.importer} ({LAYER_NAMES[layer(imp.importer)]}) imports {imp.target} "
        f"({LAYER_NAMES[layer(imp.target)]})"
        for imp in upward
        if not any(covers(a, imp.importer) and covers(b, imp.target) for a, b in KNOWN_UPWARD)
    ]
    assert not offenders, f"a lower layer imports a higher one (DESIGN.md; no lazy imports upward either): {offenders}"
    stale = sorted(set(KNOWN_UPWARD) - known)
    assert not stale, f"KNOWN_UPWARD of tests/test_layout.py names imports that are gone: remove {stale}"


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)
