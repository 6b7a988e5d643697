import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import npu_models
from npu_models.errors import UserError
from npu_models.models.vlmo.model import VLMo, VLMoConfig, relative_position_indices, vlmo_base_coco_retrieval, vlmo_base_vqa
from tests.conftest import FIXTURES
from npu_models.models.vlmo import checkpoint as vlmo_weights
from npu_models.checkpoints.io import check_state_dict, expected_shapes
from weights_tools.verify import verify

VLMO_FIXTURE = FIXTURES / "reference" / "vlmo"


def tiny_config(**overrides) -> VLMoConfig:
    values = dict(image_size=32, embed_dim=24, depth=3, num_heads=2, mlp_dim=96, vlffn_start_layer_index=2, max_text_len=6,
                  max_text_len_of_initckpt=20, vocab_size=50, num_answers=5)
    return VLMoConfig(**{**values, **overrides})


def tiny_inputs(config, batch=2):
    image = torch.randn(batch, 3, config.image_size, config.image_size)
    text_ids = torch.randint(1, config.vocab_size, (batch, config.max_text_len))
    text_masks = torch.ones_like(text_ids)
    text_masks[1, 3:] = 0
    return image, text_ids, text_masks


def test_fixture_parity_for_both_checkpoints():
    rows = verify("vlmo", VLMO_FIXTURE)
    expected = set(load_file(str(VLMO_FIXTURE / "outputs.safetensors")))
    produced = {r["name"].split("/", 1)[1] for r in rows}
    assert produced == expected  # every reference tensor, hidden states included, is compared
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


@pytest.mark.parametrize("section, config", [("vqa_base_480", vlmo_base_vqa()),
                                              ("coco_retrieval_base_384", vlmo_base_coco_retrieval())])
def test_every_official_key_maps_onto_the_full_size_model(section, config):
    official = json.loads((VLMO_FIXTURE / "official_keys.json").read_text())[section]
    keys = official["keys"] + official["possibly_present_extra_keys"]
    with torch.device("meta"):
        state, origin, unexpected = vlmo_weights.rename({k["key"]: torch.empty(k["shape"]) for k in keys})
        model = VLMo(config)
    check_state_dict(state, expected_shapes(model), lambda key: origin.get(key, key), unexpected, section)
    assert sum(p.numel() for p in model.parameters()) + 40 * 768 == official["num_parameters"]  # + unused text positions


def test_large_config_builds_with_its_sizes():
    from npu_models.models.vlmo.model import vlmo_large
    with torch.device("meta"):
        model = VLMo(vlmo_large(480, "vqa"))
    assert len(model.blocks) == 24 and model.relative_position_bias_table.shape == (3878, 24 * 16)
    assert [sorted(b.ffn.mlps) for b in model.blocks].count(["image", "text", "vl"]) == 3


def test_index_matrices_follow_the_config():
    config = tiny_config(max_text_len_of_initckpt=7)
    indices = relative_position_indices(config)
    w, rows = config.window, config.table_rows
    assert rows == (2 * w - 1) ** 2 + 3 + 2 * 7 + 2
    assert indices["text"][0, 0] == rows - 1 and indices["text"][1, 0] == rows - 2 and indices["text"][0, 1] == rows - 3
    assert indices["text"][2, 4] - indices["text"][2, 3] == 1  # one step right, one table row further
    assert indices["joint"].max() < rows and indices["joint"][0, config.max_text_len] == config.image_distances


def test_each_expert_sees_only_its_own_tokens():
    config = tiny_config(head="retrieval")
    model = VLMo(config).init_weights().eval()
    rows = Counter()
    for i, block in enumerate(model.blocks):
        for name, mlp in block.ffn.mlps.items():
            mlp.fc1.register_forward_hook(lambda m, inp, out, key=(i, name): rows.update({key: inp[0].shape[0] * inp[0].shape[1]}))
    image, text_ids, text_masks = tiny_inputs(config, batch=2)
    with torch.no_grad():
        model.joint_features(image, text_ids, text_masks)
    text, image_tokens = 2 * config.max_text_len, 2 * config.num_image_tokens
    assert rows == {(0, "text"): text, (0, "image"): image_tokens, (1, "text"): text, (1, "image"): image_tokens,
                    (2, "vl"): text + image_tokens}
    rows.clear()
    with torch.no_grad():
        model.text_embeds(text_ids, text_masks)  # text-only path: the text expert also in the VL blocks
    assert rows == {(0, "text"): text, (1, "text"): text, (2, "text"): 2}  # the last block: each [CLS] row only


def test_graph_mode_matches_eager(compiled_graphs):
    model = VLMo(tiny_config()).init_weights().eval()
    inputs = tiny_inputs(model.config)
    compiled = npu_models.runtime.compile_model(model, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)
    retrieval = VLMo(tiny_config(head="retrieval")).init_weights().eval()
    embed = npu_models.runtime.compile_model(retrieval.image_embeds, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(embed(inputs[0]), retrieval.image_embeds(inputs[0]), atol=1e-5, rtol=1e-5)
    assert compiled_graphs() == (2, 0)


@pytest.mark.parametrize("layout", ["state_dict", "module", "model", "bare"])
def test_every_released_checkpoint_layout_loads(tmp_path, layout):
    state = torch.load(VLMO_FIXTURE / "vqa_checkpoint.pt", weights_only=True)["state_dict"]
    state = {**state, "relative_position_index": torch.zeros(17, 17, dtype=torch.long)}  # index buffers are ignored
    wrapped = {"state_dict": {"state_dict": state}, "module": {"module": {f"module.{k}": v for k, v in state.items()}},
               "model": {"model": state}, "bare": {k: v.half() for k, v in state.items()}}[layout]
    torch.save(wrapped, tmp_path / "ckpt.pt")
    (tmp_path / "config.json").write_text((VLMO_FIXTURE / "config.json").read_text())
    model = npu_models.load_model("vlmo", tmp_path / "ckpt.pt", device="cpu", task="vqa")
    reference = npu_models.load_model("vlmo", VLMO_FIXTURE / "vqa_checkpoint.pt", device="cpu", task="vqa")
    inputs = load_file(str(VLMO_FIXTURE / "inputs.safetensors"))
    args = inputs["image"], inputs["text_ids"], inputs["text_masks"]
    with torch.no_grad():
        tolerance = 2e-2 if layout == "bare" else 0  # the bare file was stored in fp16; it is cast to fp32
        torch.testing.assert_close(model(*args), reference(*args), atol=tolerance, rtol=tolerance)
    assert next(model.parameters()).dtype == torch.float32


def test_a_lightning_file_with_objects_is_refused_with_the_safe_way_out(tmp_path):
    import argparse
    state = torch.load(VLMO_FIXTURE / "vqa_checkpoint.pt", weights_only=True)["state_dict"]
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(config={})}, tmp_path / "pl.pt")
    with pytest.raises(UserError, match=r"Python objects beyond tensors.*state dict"):
        npu_models.load_model("vlmo", tmp_path / "pl.pt", device="cpu", task="vqa")


def test_image_size_the_checkpoint_cannot_tell_is_asked_for(tmp_path):
    (tmp_path / "vqa.pt").write_bytes((VLMO_FIXTURE / "vqa_checkpoint.pt").read_bytes())  # no config.json beside
    with pytest.raises(UserError, match="relative_position_bias_table has 446 rows, but image_size 480"):
        npu_models.load_model("vlmo", tmp_path / "vqa.pt", device="cpu", task="vqa")


def test_square_transform_reproduces_the_reference_images(tmp_path):
    inputs = load_file(str(VLMO_FIXTURE / "inputs.safetensors"))
    transform = VLMoConfig(image_size=64).transform.build()
    for i in range(3):
        image = Image.fromarray(np.asarray(inputs[f"raw_image_{i}"]))
        torch.testing.assert_close(transform(image), inputs["image"][i], atol=2 / 255 * 2, rtol=0)  # 1 LSB of PIL


def test_convert_names_the_model_by_the_checkpoint_head(tmp_path):
    from weights_tools.convert import convert
    for checkpoint, name in (("retrieval_checkpoint.pt", "vlmo-base-coco-retrieval"), ("vqa_checkpoint.pt", "vlmo-base-vqa")):
        out = convert("vlmo", VLMO_FIXTURE / checkpoint, tmp_path / name)
        assert json.loads((out / "config.json").read_text())["model"] == name
        model = npu_models.load_model(out, device="cpu")
        reference = npu_models.load_model("vlmo", VLMO_FIXTURE / checkpoint, device="cpu")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_retrieval_text_embeds_ignore_padded_tokens():
    """The text mask reaches every block of the retrieval text path: padded positions cannot move the
    embedding (dropping the mask moves the fixture's retrieval embeddings by up to 0.011)."""
    model = VLMo(tiny_config(head="retrieval")).init_weights().eval()
    _, text_ids, text_masks = tiny_inputs(model.config)
    other_padding = text_ids.masked_fill(text_masks == 0, 7)
    with torch.no_grad():
        torch.testing.assert_close(model.text_embeds(other_padding, text_masks), model.text_embeds(text_ids, text_masks))
        unmasked = model.text_embeds(other_padding, torch.ones_like(text_masks))
    assert (unmasked - model.text_embeds(text_ids, text_masks)).abs().max() > 1e-5  # fp32 noise is ~1e-7
