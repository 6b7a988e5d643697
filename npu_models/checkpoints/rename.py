"""The one converter mechanism: a rename table per official layout, declared as data.

A table maps official names to ours. A name is a module path (its parameters follow it: `.weight`,
`.bias`) or a bare parameter (`cls_token`), and `{i}` stands for a layer index:

    BERT = {
        "embeddings.LayerNorm": "embeddings.norm",
        "encoder.layer.{i}.attention.output.dense": "blocks.{i}.attn.proj",
        fused("encoder.layer.{i}.attention.self", "query", "key", "value"): "blocks.{i}.attn.qkv",
    }

A tuple of official names is a fused group: their tensors are concatenated along dim 0 (the output
features) into one of ours, in the tuple's order, so the runtime never fuses q/k/v itself. The same table,
read backwards, names the official key behind each of ours, also for keys the checkpoint lacks.
"""
import re
from typing import Callable, NamedTuple

import torch

LAYER = "{i}"
OfficialName = str | tuple[str, ...]
RenameTable = dict[OfficialName, str]


class Renamed(NamedTuple):
    state: dict[str, torch.Tensor]   # our keys
    origin: dict[str, str]           # our key -> the official key(s) it was made from
    unexpected: list[str]            # official keys the table maps nowhere


def fused(module: str, *names: str) -> tuple[str, ...]:
    """The official modules `module.name`, fused in this order into one of ours."""
    return tuple(f"{module}.{name}" for name in names)


def prefixed(table: RenameTable, official: str, ours: str) -> RenameTable:
    """The same table for a model nested in another (BLIP's `text_encoder.`, HF's `bert.`)."""
    def on(name):
        return tuple(official + n for n in name) if isinstance(name, tuple) else official + name
    return {on(name): ours + target for name, target in table.items()}


def pattern(template: str, with_param: bool) -> re.Pattern:
    """`{i}` matches a layer index; a module path is followed by one parameter name."""
    body = re.escape(template).replace(re.escape(LAYER), r"(?P<i>\d+)")
    return re.compile(f"^{body}\\.(?P<param>[^.]+)$" if with_param else f"^{body}$")


def fill(template: str, i: str | None, param: str | None) -> str:
    name = template.replace(LAYER, i) if i is not None else template
    return f"{name}.{param}" if param else name


def group_name(parts: tuple[str, ...], i: str | None, param: str | None) -> str:
    """`a.0.attention.self.query.weight + ...attention.self.key.weight + ...`: the parts after the
    first are written from the layer index on, which is where they differ."""
    later = [("..." + fill(p.partition(LAYER)[2][1:], None, param)) if LAYER in p else fill(p, i, param)
             for p in parts[1:]]
    return " + ".join([fill(parts[0], i, param), *later])


def compile_rules(templates_and_payloads) -> list:
    """(exact pattern, module pattern, payload) per template."""
    return [(pattern(template, False), pattern(template, True), payload)
            for template, payload in templates_and_payloads]


def match(rules: list, key: str):
    """(payload, layer index, parameter) of the first rule naming `key` itself, else of the first naming
    its module: exact names first, so `attn.q_bias` is never read as module `attn` + parameter `q_bias`."""
    for as_module in (False, True):
        for exact, module, payload in rules:
            if found := (module if as_module else exact).match(key):
                groups = found.groupdict()
                return payload, groups.get("i"), groups.get("param")
    return None


def apply(table: RenameTable, state: dict[str, torch.Tensor]) -> Renamed:
    """Our state dict from an official one. A fused group with a part missing is left out, for the
    shape check to report under the official names recorded in origin."""
    rules = compile_rules((part, (name, part, target)) for name, target in table.items()
                          for part in (name if isinstance(name, tuple) else (name,)))
    ours, origin, unexpected, groups = {}, {}, [], {}
    for key, tensor in state.items():
        hit = match(rules, key)
        if hit is None:
            unexpected.append(key)
            continue
        (name, part, target), i, param = hit
        our_key = fill(target, i, param)
        if isinstance(name, tuple):
            groups.setdefault((name, our_key, i, param), {})[part] = tensor
        else:
            ours[our_key], origin[our_key] = tensor, key
    for (parts, our_key, i, param), found in groups.items():
        absent = [fill(p, i, param) for p in parts if p not in found]
        origin[our_key] = group_name(parts, i, param) + (f" (absent: {', '.join(absent)})" if absent else "")
        if not absent:
            ours[our_key] = torch.cat([found[p] for p in parts], dim=0)
    return Renamed(ours, origin, unexpected)


def official_names(table: RenameTable, origin: dict[str, str]) -> Callable[[str], str]:
    """our key -> official name(s): where it came from, or, for a key the checkpoint lacks, the table
    read backwards. A key no table entry produces keeps its own name."""
    rules = compile_rules((target, name) for name, target in table.items())

    def official_name(our_key: str) -> str:
        if our_key in origin:
            return origin[our_key]
        hit = match(rules, our_key)
        if hit is None:
            return our_key
        name, i, param = hit
        return group_name(name, i, param) if isinstance(name, tuple) else fill(name, i, param)
    return official_name
