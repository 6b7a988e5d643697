"""The registry is each model's whole public face: the eval commands know no model."""
import ast
from pathlib import Path

import pytest

from eval import vqa
from npu_models import registry
from npu_models.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
# eval/peers.py is the one exception: a peer is another library's implementation of a named model.
MODEL_AGNOSTIC = sorted(p for p in (ROOT / "eval").rglob("*.py") if p != ROOT / "eval" / "peers.py")


def identifiers(path: Path) -> set[str]:
    """Every name, attribute, imported module and non-docstring string constant of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(alias.name for alias in node.names)
            found.add(getattr(node, "module", None) or "")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.add(node.value)
    return found


@pytest.mark.parametrize("path", MODEL_AGNOSTIC, ids=lambda p: str(p.relative_to(ROOT)))
def test_eval_code_names_no_model_config_or_checkpoint_format(path):
    models = {e.short_name for e in registry.REGISTRY.values()} | set(registry.REGISTRY)
    configs = {e.config_class.__name__ for e in registry.REGISTRY.values()}
    named = [n for n in identifiers(path) if n in models or n in configs or any(
        f"npu_models.{m}" in n or f"models.{m}" in n or f"checkpoints.{m}" in n for m in models)]
    assert named == [], f"{path.name} names models: {named}; the registry entry should carry that knowledge"


def test_each_task_defaults_to_its_first_registered_model():
    assert {task: registry.default_entry(task).name for task in ("sst2", "imagenet", "vqa", "retrieval")} == {
        "sst2": "bert-base-cased-sst2", "imagenet": "vit-base-patch32-224", "vqa": "vlmo-base-vqa",
        "retrieval": "vlmo-base-coco-retrieval"}


def test_a_model_of_another_task_is_refused_by_name(capsys):
    with pytest.raises(UserError, match="blip-retrieval-coco is a model for retrieval, not vqa; the vqa evaluation "
                                        "runs vlmo-base-vqa, vilbert-vqa"):
        registry.get_entry("blip", task="vqa")
    with pytest.raises(SystemExit):
        vqa.main(["--model", "blip", "--device", "cpu"])
    assert "is a model for retrieval" in capsys.readouterr().err


def test_every_model_names_its_task_by_the_eval_command_that_runs_it():
    commands = {path.stem for path in (ROOT / "eval").glob("*.py")}
    for entry in registry.REGISTRY.values():
        assert entry.task.name in commands, entry.name
        assert entry.task.name not in ("vqa", "retrieval") or entry.default_config().text_input.max_length > 0


@pytest.mark.parametrize("name", ["bert", "vlmo-base-vqa"])
def test_random_weights_are_built_without_memory_then_drawn_once_with_the_same_recipe(name):
    import torch
    entry = registry.get_entry(name)
    config = entry.default_config()
    for field, value in dict(depth=1, embed_dim=32, num_heads=2, mlp_dim=64).items():
        setattr(config, field, value)
    if name.startswith("vlmo"):
        config.image_size, config.vlffn_start_layer_index = 32, 1
    built = registry.build_model(entry, config=config, device=torch.device("cpu"))
    eager = entry.build(config).init_weights()  # built and initialised the plain way
    assert not any(p.is_meta for p in built.parameters())
    for (key, ours), (_, plain) in zip([*built.state_dict().items(), *built.named_buffers()],
                                       [*eager.state_dict().items(), *eager.named_buffers()]):
        assert torch.equal(ours, plain), key  # constant buffers (VLMo's position indices) included
