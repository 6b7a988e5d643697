"""Named intermediate outputs, read with forward hooks on the production modules: how a model folder's
`outputs` (what weights_tools.verify compares with a reference fixture) sees inside the model. "path"
records a module's output, "path:input" its first input, so the model files carry no fixture-only code
paths."""
import contextlib

import torch


@contextlib.contextmanager
def recording(model: torch.nn.Module, points: dict[str, str]):
    """{fixture name: module path} -> a dict filled while the block runs (a module's last call wins)."""
    recorded, handles = {}, []
    for name, point in points.items():
        path, _, what = point.partition(":")
        module = model.get_submodule(path)
        if what == "input":
            hook = module.register_forward_pre_hook(lambda m, args, name=name: recorded.__setitem__(name, args[0]))
        else:
            hook = module.register_forward_hook(lambda m, args, out, name=name: recorded.__setitem__(name, out))
        handles.append(hook)
    try:
        yield recorded
    finally:
        for hook in handles:
            hook.remove()
