"""Our top-level packages import each other one way only, read from the source (every import statement,
including those inside functions): npu_kernels <- npu_models <- eval <- weights_tools (weights_tools.quantize
calibrates through the eval commands)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> the packages of ours it may import besides itself
ALLOWED = {
    "npu_kernels": set(),
    "npu_models": {"npu_kernels"},
    "eval": {"npu_models", "npu_kernels"},
    "weights_tools": {"npu_models", "npu_kernels", "eval"},
}


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in a module."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def layer_violations(root: Path) -> list[str]:
    """'file imports package' for each import that points against the allowed direction."""
    violations = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            others = imported_packages(path.read_text(encoding="utf-8")) & set(ALLOWED)
            wrong = sorted(others - allowed - {package})
            violations += [f"{path.relative_to(root)} imports {other}" for other in wrong]
    return violations


def test_packages_import_one_way():
    assert layer_violations(ROOT) == []


def test_relative_imports_are_not_used():
    """Relative imports would hide a package edge from the check above."""
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), path


def test_the_check_catches_an_import_against_the_direction(tmp_path):
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "npu_models" / "registry.py").write_text("from weights_tools import hf_bert\n")
    (tmp_path / "npu_kernels" / "plan.py").write_text("def f():\n    import npu_models.errors\n")
    (tmp_path / "eval" / "bench.py").write_text("from weights_tools.verify import verify\nimport npu_models\n")
    (tmp_path / "weights_tools" / "quantize.py").write_text("from eval.commands import run_eval_command\n")
    assert layer_violations(tmp_path) == ["npu_kernels/plan.py imports npu_models",
                                          "npu_models/registry.py imports weights_tools",
                                          "eval/bench.py imports weights_tools"]
