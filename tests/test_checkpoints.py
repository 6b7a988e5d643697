"""The converter mechanism (npu_models.checkpoints): rename tables, official names in every key error,
and reading an archive's answers without its weights."""
import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from npu_models import registry
from npu_models.models.vilbert import checkpoint as vilbert_weights
from npu_models.checkpoints.io import unwrap
from npu_models.checkpoints.rename import apply, fused, official_names, prefixed
from npu_models.errors import UserError
from tests.conftest import FIXTURES

REFERENCE = FIXTURES / "reference"
TABLE = {
    "emb.norm": "embeddings.norm",
    "layer.{i}.out.dense": "blocks.{i}.attn.proj",
    fused("layer.{i}.self", "query", "key", "value"): "blocks.{i}.attn.qkv",
}


def test_a_rename_table_renames_fuses_and_names_official_keys_back():
    qkv = {f"layer.3.self.{n}.weight": torch.full((1, 2), float(i)) for i, n in enumerate(("query", "key", "value"))}
    state = {"emb.norm.weight": torch.ones(2), "layer.3.out.dense.bias": torch.zeros(2), "stray": torch.zeros(1), **qkv}
    ours, origin, unexpected = apply(TABLE, state)
    assert sorted(ours) == ["blocks.3.attn.proj.bias", "blocks.3.attn.qkv.weight", "embeddings.norm.weight"]
    assert ours["blocks.3.attn.qkv.weight"].tolist() == [[0, 0], [1, 1], [2, 2]]  # q, k, v along the output
    assert unexpected == ["stray"]
    name = official_names(TABLE, origin)
    assert name("blocks.3.attn.proj.bias") == "layer.3.out.dense.bias"
    assert name("blocks.7.attn.proj.weight") == "layer.7.out.dense.weight"  # absent from the checkpoint
    assert name("blocks.7.attn.qkv.bias") == "layer.7.self.query.bias + ...self.key.bias + ...self.value.bias"
    assert name("something.else") == "something.else"


def test_a_fused_group_with_a_part_missing_is_left_out_and_names_the_part():
    state = {"layer.0.self.query.weight": torch.ones(1, 2), "layer.0.self.value.weight": torch.ones(1, 2)}
    ours, origin, _ = apply(TABLE, state)
    assert ours == {}
    assert origin["blocks.0.attn.qkv.weight"].endswith("(absent: layer.0.self.key.weight)")


def test_prefixed_tables_nest_a_layout():
    table = prefixed(TABLE, "bert.", "text.")
    ours, _, _ = apply(table, {"bert.layer.1.out.dense.weight": torch.ones(1)})
    assert list(ours) == ["text.blocks.1.attn.proj.weight"]
    assert official_names(table, {})("text.blocks.2.attn.proj.bias") == "bert.layer.2.out.dense.bias"


def test_unwrap_follows_the_documented_wrapper_order():
    tensor = torch.ones(1)
    assert unwrap({"state_dict": {"a": tensor}, "model": {"b": tensor}}, "f") == {"a": tensor}
    assert unwrap({"module": {"module.a": tensor, "step": 3}}, "f") == {"a": tensor}
    assert unwrap({"state_dict": {"model": {"a": tensor}}}, "f") == {"a": tensor}
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        unwrap([tensor], "f")


def load_errors(model: str, checkpoint) -> str:
    with pytest.raises(UserError) as info:
        registry.load_weights(registry.get_entry(model), checkpoint)
    return str(info.value)


def bert_without(tmp_path, *keys):
    shutil.copytree(REFERENCE / "bert" / "checkpoint", tmp_path / "ckpt")
    state = torch.load(tmp_path / "ckpt" / "pytorch_model.bin", weights_only=True)
    for key in keys:
        del state[key]
    torch.save(state, tmp_path / "ckpt" / "pytorch_model.bin")
    return tmp_path / "ckpt"


def vit_without(tmp_path, *keys):
    state = load_file(str(REFERENCE / "vit" / "checkpoint_timm.safetensors"))
    save_file({k: v for k, v in state.items() if k not in keys}, str(tmp_path / "model.safetensors"))
    shutil.copy(REFERENCE / "vit" / "config.json", tmp_path / "config.json")
    return tmp_path / "model.safetensors"


def vit_npz_without(tmp_path, *keys):
    with np.load(REFERENCE / "vit" / "checkpoint.npz") as archive:
        np.savez(tmp_path / "model.npz", **{k: archive[k] for k in archive.files if k not in keys})
    shutil.copy(REFERENCE / "vit" / "config.json", tmp_path / "config.json")
    return tmp_path / "model.npz"


def torch_checkpoint_without(tmp_path, fixture: str, file: str, wrapper: str, keys):
    """A fixture's torch checkpoint ({wrapper: state dict}) again, without `keys`, its config.json beside it."""
    checkpoint = torch.load(REFERENCE / fixture / file, weights_only=True)
    checkpoint[wrapper] = {k: v for k, v in checkpoint[wrapper].items() if k not in keys}
    torch.save(checkpoint, tmp_path / file)
    shutil.copy(REFERENCE / fixture / "config.json", tmp_path / "config.json")
    return tmp_path / file


def vlmo_without(tmp_path, *keys):
    return torch_checkpoint_without(tmp_path, "vlmo", "vqa_checkpoint.pt", "state_dict", keys)


def blip_without(tmp_path, *keys):
    return torch_checkpoint_without(tmp_path, "blip", "checkpoint.pth", "model", keys)


def vilbert_without(tmp_path, *keys):
    """The archive again, its weights.th without `keys`."""
    with tarfile.open(REFERENCE / "vilbert" / "model.tar.gz", "r:gz") as source, \
            tarfile.open(tmp_path / "model.tar.gz", "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name == "weights.th":
                weights = torch.load(io.BytesIO(data), weights_only=True)
                buffer = io.BytesIO()
                torch.save({k: v for k, v in weights.items() if k not in keys}, buffer)
                data = buffer.getvalue()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    shutil.copy(REFERENCE / "vilbert" / "text_model_config.json", tmp_path / "text_model_config.json")
    return tmp_path / "model.tar.gz"


# (model, checkpoint writer, official keys to drop, what the error must say). Each layout drops one
# block's attention output weight, and one part of a fused q/k/v (or, where the official layout fuses
# q/k/v itself, the separate q bias).
MISSING_KEY_CASES = [
    ("bert", bert_without, ["bert.encoder.layer.1.attention.output.dense.weight"],
     "missing: bert.encoder.layer.1.attention.output.dense.weight  (needed for blocks.1.attn.proj.weight"),
    ("bert", bert_without, ["bert.encoder.layer.0.attention.self.value.weight"],
     "(absent: bert.encoder.layer.0.attention.self.value.weight)  (needed for blocks.0.attn.qkv.weight"),
    ("bert", bert_without, [f"bert.encoder.layer.1.attention.self.{n}.bias" for n in ("query", "key", "value")],
     "missing: bert.encoder.layer.1.attention.self.query.bias + ...attention.self.key.bias + "
     "...attention.self.value.bias  (needed for blocks.1.attn.qkv.bias"),
    ("vit", vit_without, ["blocks.1.attn.proj.weight"], "missing: blocks.1.attn.proj.weight  (needed for"),
    ("vit", vit_without, ["blocks.0.norm1.bias"], "missing: blocks.0.norm1.bias  (needed for blocks.0.attn_norm.bias"),
    ("vit", vit_npz_without, ["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel"],
     "missing: Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel  (needed for blocks.1.attn.proj"),
    ("vit", vit_npz_without, ["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/bias"],
     "(absent: Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/bias)  (needed for blocks.0.attn.qkv.bias"),
    ("vit", vit_npz_without, ["Transformer/encoderblock_1/LayerNorm_2/scale"],
     "missing: Transformer/encoderblock_1/LayerNorm_2/scale  (needed for blocks.1.mlp_norm.weight"),
    ("vlmo", vlmo_without, ["transformer.blocks.1.attn.proj.weight"],
     "missing: transformer.blocks.1.attn.proj.weight  (needed for blocks.1.attn.proj.weight"),
    ("vlmo", vlmo_without, ["transformer.blocks.0.attn.q_bias"],
     "missing: transformer.blocks.0.attn.q_bias  (needed for blocks.0.attn.q_bias"),
    ("blip", blip_without, ["visual_encoder.blocks.1.attn.proj.weight"],
     "missing: visual_encoder.blocks.1.attn.proj.weight  (needed for visual_encoder.blocks.1.attn.proj.weight"),
    ("blip", blip_without, ["text_encoder.encoder.layer.1.attention.output.dense.weight"],
     "missing: text_encoder.encoder.layer.1.attention.output.dense.weight  (needed for text_encoder.blocks.1.attn.proj"),
    ("blip", blip_without, ["text_encoder.encoder.layer.0.attention.self.key.weight"],
     "(absent: text_encoder.encoder.layer.0.attention.self.key.weight)  (needed for text_encoder.blocks.0.attn.qkv"),
    ("blip", blip_without, ["text_encoder.encoder.layer.1.crossattention.self.value.bias"],
     "(absent: text_encoder.encoder.layer.1.crossattention.self.value.bias)  (needed for "
     "text_encoder.blocks.1.cross_attn.kv.bias"),
    ("vilbert", vilbert_without, ["backbone.encoder.layers1.1.attention.output.dense.weight"],
     "missing: backbone.encoder.layers1.1.attention.output.dense.weight  (needed for text_layers.1.attn.proj"),
    ("vilbert", vilbert_without, ["backbone.encoder.layers2.0.attention.self.query.bias"],
     "(absent: backbone.encoder.layers2.0.attention.self.query.bias)  (needed for image_layers.0.attn.qkv.bias"),
    ("vilbert", vilbert_without, ["backbone.encoder.c_layer.0.bimodal_attention.key2.weight"],
     "(absent: backbone.encoder.c_layer.0.bimodal_attention.key2.weight)  (needed for "
     "co_layers.0.text.cross_attn.kv.weight"),
]


@pytest.mark.parametrize("model, write, dropped, expected", MISSING_KEY_CASES,
                         ids=[f"{case[0]}-{case[2][0]}" for case in MISSING_KEY_CASES])
def test_a_missing_official_key_is_named_in_the_error(tmp_path, model, write, dropped, expected):
    assert expected in load_errors(model, write(tmp_path, *dropped))


def test_a_misshaped_key_is_named_by_its_official_key(tmp_path):
    checkpoint = blip_without(tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    key = "text_encoder.encoder.layer.0.crossattention.output.dense.weight"
    state["model"][key] = state["model"][key][:, :-1].clone()
    torch.save(state, checkpoint)
    assert f"wrong shape: {key} has" in load_errors("blip", checkpoint)


def test_vilbert_answers_are_read_without_loading_the_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read_answers must not torch.load weights.th")

    monkeypatch.setattr(torch, "load", refuse)
    answers = vilbert_weights.read_answers(REFERENCE / "vilbert" / "model.tar.gz")
    assert answers[:2] == ["@@PADDING@@", "@@UNKNOWN@@"] and len(answers) > 2


def full_size_models():
    from npu_models.models.bert import checkpoint as hf_bert, model as bert
    from npu_models.models.blip import checkpoint as blip_weights, model as blip
    from npu_models.models.vilbert import model as vilbert
    from npu_models.models.vit import checkpoint as vit_weights, model as vit
    from npu_models.models.vlmo import checkpoint as vlmo_weights, model as vlmo
    return [(hf_bert.table_for({}), bert.Bert(bert.bert_base_cased_sst2())),
            (vit_weights.TIMM, vit.ViT(vit.vit_base_patch32_224())),
            (vlmo_weights.TABLE, vlmo.VLMo(vlmo.vlmo_base_vqa())),
            (vlmo_weights.TABLE, vlmo.VLMo(vlmo.vlmo_base_coco_retrieval())),
            (blip_weights.TABLE, blip.Blip(blip.blip_retrieval_coco())),
            (vilbert_weights.TABLE, vilbert.ViLBERT(vilbert.vilbert_vqa()))]


def test_every_key_of_every_model_is_named_by_a_table_that_maps_it_back():
    """The reverse names come from the same table: each official name they give renames to that key."""
    with torch.device("meta"):
        cases = full_size_models()
    for table, model in cases:
        name = official_names(table, {})
        for key, tensor in model.state_dict().items():
            first_part = name(key).split(" + ")[0]  # a fused group is named by its parts
            assert key in apply(table, {first_part: tensor}).origin, (type(model).__name__, key, name(key))
