"""The toy's "official" layout (a .safetensors file under other names) -> ours: a rename table and the
sizes read from the weights."""
from pathlib import Path

from npu_models.checkpoints.io import Converted, read_sidecar, read_state_dict
from npu_models.checkpoints.rename import RenameTable, apply, official_names
from tests.toy_family.model import ToyConfig

TABLE: RenameTable = {
    "tok_embed": "embeddings",
    "layers.{i}.ln1": "blocks.{i}.attn_norm",
    "layers.{i}.attn.in_proj": "blocks.{i}.attn.qkv",
    "layers.{i}.attn.out_proj": "blocks.{i}.attn.proj",
    "layers.{i}.ln2": "blocks.{i}.mlp_norm",
    "layers.{i}.ff.0": "blocks.{i}.mlp.fc1",
    "layers.{i}.ff.2": "blocks.{i}.mlp.fc2",
    "ln_f": "norm",
    "classifier": "head",
}


def read_toy(path, config_file=None) -> Converted:
    path = Path(path)
    state, origin, unexpected = apply(TABLE, read_state_dict(path))
    vocab_size, dim = state["embeddings.weight"].shape
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    config = ToyConfig(vocab_size=vocab_size, embed_dim=dim, depth=depth,
                       num_heads=read_sidecar(path, config_file).get("num_heads", ToyConfig.num_heads),
                       mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
                       labels=[f"LABEL_{i}" for i in range(state["head.weight"].shape[0])])
    return Converted(config, state, official_names(TABLE, origin), unexpected)
