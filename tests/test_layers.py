"""Our layers import each other one way only, read from the source (every import statement, including those
inside functions): npu_kernels <- npu_models <- eval <- weights_tools (weights_tools.quantize calibrates through
the eval commands), and npu_models.serve above eval (it prepares inputs and finds a checkpoint's files as the eval
commands do). Within and across them no two modules import each other, directly or around a circle: a lazy
import inside a function is still an edge of the circle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# layer (a package, or a subpackage that sits higher than its parent) -> the layers of ours it may import
ALLOWED = {
    "npu_kernels": set(),
    "npu_models": {"npu_kernels"},
    "eval": {"npu_models", "npu_kernels"},
    "weights_tools": {"npu_models", "npu_kernels", "eval"},
    "npu_models.serve": {"npu_models", "npu_kernels", "eval"},
}
PACKAGES = sorted({layer.split(".")[0] for layer in ALLOWED})


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to: the longest layer name it starts with."""
    matches = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(source: str) -> set[str]:
    """The dotted names of every absolute import in a module (`from a.b import c` names a.b.c: it may be one)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layer_violations(root: Path) -> list[str]:
    """'file imports layer' for each import that points against the allowed direction."""
    violations = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            here = layer_of(".".join(path.relative_to(root).with_suffix("").parts))
            imported = {layer_of(name) for name in imported_modules(path.read_text(encoding="utf-8"))} - {None}
            wrong = sorted(imported - ALLOWED[here] - {here})
            violations += [f"{path.relative_to(root)} imports {other}" for other in wrong]
    return violations


def test_packages_import_one_way():
    assert layer_violations(ROOT) == []


def test_relative_imports_are_not_used():
    """Relative imports would hide a package edge from the check above."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), path


def test_the_check_catches_an_import_against_the_direction(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "npu_models" / "serve").mkdir()
    (tmp_path / "npu_models" / "registry.py").write_text("from weights_tools import hf_bert\n")
    (tmp_path / "npu_models" / "verify.py").write_text("from eval.data.vqa import read_answer2label\n")
    (tmp_path / "npu_models" / "serve" / "model.py").write_text("from eval.data.vqa import read_answer2label\n")
    (tmp_path / "npu_kernels" / "plan.py").write_text("def f():\n    import npu_models.errors\n")
    (tmp_path / "eval" / "bench.py").write_text("from weights_tools.verify import verify\nimport npu_models\n")
    (tmp_path / "eval" / "cli.py").write_text("from npu_models.serve import app\n")
    (tmp_path / "weights_tools" / "quantize.py").write_text("from eval.commands import run_eval_command\n")
    assert sorted(layer_violations(tmp_path)) == ["eval/bench.py imports weights_tools",
                                                  "eval/cli.py imports npu_models.serve",
                                                  "npu_kernels/plan.py imports npu_models",
                                                  "npu_models/registry.py imports weights_tools",
                                                  "npu_models/verify.py imports eval"]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of our packages (a package by its __init__.py)."""
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of ours it imports anywhere in its source. `from a.b import c` is an edge to a.b.c
    when that is a module, else to a.b; a name no module of ours holds goes to its nearest enclosing module."""
    modules = module_names(root)
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """Each circle of modules that import each other (a strongly connected component of two or more), sorted."""
    graph, order, low, stack, cycles = import_graph(root), {}, {}, [], []

    def visit(node):  # Tarjan's algorithm
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return sorted(cycles)


def test_no_modules_import_each_other():
    assert import_cycles(ROOT) == []


def test_the_check_catches_a_circle_closed_by_a_lazy_import(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "npu_models" / "runtime").mkdir()
    (tmp_path / "npu_models" / "errors.py").write_text("def f():\n    from npu_models import parallel\n")
    (tmp_path / "npu_models" / "parallel.py").write_text("from npu_models.layers import quant\n")
    (tmp_path / "npu_models" / "layers.py").write_text("")
    (tmp_path / "npu_models" / "quant.py").write_text("")
    (tmp_path / "npu_models" / "runtime" / "__init__.py").write_text("")
    (tmp_path / "npu_models" / "runtime" / "device.py").write_text(
        "import torch\ndef g():\n    import npu_models.runtime.settings\n")
    (tmp_path / "npu_models" / "runtime" / "settings.py").write_text(
        "from npu_models.runtime.device import g\nfrom npu_models.errors import f\n")
    (tmp_path / "npu_models" / "layers.py").write_text("from npu_models.errors import f\n")
    assert import_cycles(tmp_path) == [["npu_models.errors", "npu_models.layers", "npu_models.parallel"],
                                       ["npu_models.runtime.device", "npu_models.runtime.settings"]]
