"""Checkpoint I/O shared by every layout: safe reading, unwrapping, the sidecar config, the strict
key/shape check, the converter result, and our own converted layout."""
import dataclasses
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from npu_models.errors import UserError, arg

OUR_FORMAT = "npu_models"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; check the path.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); the file may be truncated: fetch it again.") from None


def load_torch_file(path: Path):
    """torch.load without running code, memory-mapped: tensors are read from the page cache as they are
    used, not all copied up front. Files in torch's pre-1.6 (non-zip) format cannot be mapped: read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch pickle, never executing code from the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file {path} does not exist; check the path.")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return load_torch_file(path)
    except pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        if not reason:  # a pickle torch could not parse, not one naming a class: damaged bytes, not objects
            raise UserError(f"{path} is not a readable checkpoint ({unpickler_detail(err)}); the file is probably "
                            "corrupt or truncated: download it again.") from None
        raise UserError(
            f"{path} holds Python objects beyond tensors ({reason or 'not a plain state dict'}); they are not "
            "unpickled, since unpickling can run code. If you trust the file, re-save its state dict once and pass "
            "the new file: python -c \"import torch; c = torch.load('IN', weights_only=False); "
            "torch.save({'state_dict': c['state_dict']}, 'OUT')\" (or save c itself when it is a bare state dict)."
        ) from None
    except (SafetensorError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); "
                        "the file is probably corrupt or truncated: download it again.") from None


def unpickler_detail(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler found wrong, without its advice to load with weights_only=False."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    marker = next((i for i, line in enumerate(lines) if "WeightsUnpickler error" in line), None)
    if marker is None:
        return f"UnpicklingError: {lines[0] if lines else err!r}"
    detail = lines[marker].split("WeightsUnpickler error:", 1)[1].strip() or (lines[marker + 1:] or ["?"])[0]
    return f"UnpicklingError: {detail}"


# Wrappers around a state dict, outermost first: Lightning ('state_dict'), DeepSpeed ('module', whose keys
# carry a 'module.' prefix), then timm/BLIP/VLMo training scripts ('model'). The VLMo reference loads in
# this order; a file may nest them (a Lightning file around a 'model'), so unwrapping repeats.
WRAPPERS = ("state_dict", "module", "model")


def unwrap(checkpoint, path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict that a training script saved inside a wrapper dict (see WRAPPERS);
    non-tensor entries (epoch counters, hyper-parameters) are dropped."""
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.")
    while wrapper := next((key for key in WRAPPERS if isinstance(checkpoint.get(key), dict)), None):
        checkpoint = checkpoint[wrapper]
        if wrapper == "module":
            checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def read_sidecar(checkpoint, config_file=None, section: str = "model") -> dict:
    """What the weights cannot tell (heads, image size), from --config or a config.json beside the
    checkpoint file: its `section` (how the reference fixtures nest it), or the whole file when flat.
    No sidecar gives {}."""
    sidecar = Path(config_file) if config_file else Path(checkpoint).parent / CONFIG_FILE
    if not sidecar.is_file():
        return {}
    document = read_json(sidecar)
    return document.get(section, document)


@dataclass
class Converted:
    """What a converter makes of an official checkpoint."""
    config: Any                                  # the model's config dataclass
    state: dict[str, torch.Tensor]               # our layout, not yet checked against the model
    official_name: Callable[[str], str]          # our key -> the official key(s) it is made from, for errors
    unexpected: list[str]                        # official keys that map to nothing of ours
    quant: Any = None                            # checkpoints.quantized.QuantInfo of a quantized checkpoint


def expected_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def check_state_dict(converted: dict, expected: dict, describe, unexpected: list[str], source) -> None:
    """Fail with one message naming every missing, unexpected and mis-shaped key.

    `describe` maps each of our keys to the official key(s) it is made from (Converted.official_name), so
    messages use official names, also for keys the checkpoint lacks.
    """
    missing = [key for key in expected if key not in converted]
    extra = sorted(unexpected) + sorted(describe(key) for key in converted if key not in expected)
    misshaped = [key for key in expected if key in converted and converted[key].shape != expected[key]]
    if not (missing or extra or misshaped):
        return
    lines = [f"checkpoint {source} does not match the model:"]
    for key in missing:
        lines.append(f"  missing: {describe(key)}  (needed for {key}, shape {list(expected[key])})")
    for key in extra:
        lines.append(f"  unexpected: {key}")
    for key in misshaped:
        lines.append(f"  wrong shape: {describe(key)} has {list(converted[key].shape)}, "
                     f"the model expects {list(expected[key])}")
    lines.append("Check that the checkpoint is the one this model name expects, and that the config "
                 "beside it (config.json) describes it.")
    raise UserError("\n".join(lines))


def is_converted_dir(path) -> bool:
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        return False
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("format") == OUR_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def shard_file(rank: int, tp: int) -> str:
    """The weights file of one tensor-parallel rank (tp = 1: the whole model)."""
    return WEIGHTS_FILE if tp == 1 else f"model-rank{rank}-of-{tp}.safetensors"


def save_converted(out_dir, model_name: str, config, state_dicts: list[dict], assets: dict[str, Path],
                   source: dict | None = None, extra: dict | None = None, files: dict[str, str] | None = None) -> None:
    """Write config.json + one weights file per tensor-parallel rank (model.safetensors when there is one)
    (+ assets such as vocab.txt) atomically into `out_dir`; `source` identifies what they were cut from,
    `extra` adds config.json fields and `files` text files by name (a quantized model's "quant" and its
    quant_model_description.json)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tp = len(state_dicts)
    try:
        document = {"format": OUR_FORMAT, "model": model_name, "config": dataclasses.asdict(config), "tp": tp,
                    "source": source, **(extra or {})}
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
        for rank, state_dict in enumerate(state_dicts):
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(staging / shard_file(rank, tp)))
        for name, source in assets.items():
            shutil.copyfile(source, staging / name)
        for name, text in (files or {}).items():
            (staging / name).write_text(text)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_converted(path, rank: int = 0, tp: int = 1, model: str | None = None) -> tuple[dict, dict]:
    """(config.json's document, the state dict this rank reads) from a directory written by save_converted: its
    own file when the directory was cut for `tp` ranks, the whole model when it holds one (the caller cuts it).
    A directory of another model (when `model` is given) or cut for another degree is refused."""
    path = Path(path)
    document = read_json(path / CONFIG_FILE)
    if "model" not in document or "config" not in document:
        raise UserError(f"{path / CONFIG_FILE} lacks 'model' or 'config'; convert the checkpoint again.")
    if model is not None and document["model"] != model:
        raise UserError(f"{path} holds a converted '{document['model']}' model, not '{model}'; "
                        f"pass {arg('name_or_path', document['model'])} or another checkpoint.")
    cut_for = document.get("tp", 1)
    if cut_for not in (1, tp):
        raise UserError(f"{path} holds {document['model']} cut for {arg('tp', cut_for)}, and this run uses "
                        f"{arg('tp', tp)}: cut it again for {arg('tp', tp)} with weights_tools.shard, or pass the full "
                        "checkpoint (it is cut on the fly).")
    return document, read_state_dict(path / shard_file(rank, cut_for) if cut_for > 1 else path / WEIGHTS_FILE)


def cut_degree(path) -> int:
    """The tensor-parallel degree our directory was cut for: 1 when it holds the whole model (or is not ours)."""
    return read_json(Path(path) / CONFIG_FILE).get("tp", 1) if is_converted_dir(path) else 1


def file_identity(path) -> dict | None:
    """What identifies a checkpoint cheaply: its name and, for it or every file under it, size and
    modification time (hashing gigabytes would cost more than the run); None for random weights."""
    if path is None:
        return None
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"name": path.name, "files": {str(p.relative_to(path)) if path.is_dir() else p.name:
                                         [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}
