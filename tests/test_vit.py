import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import npu_models
from npu_models.errors import UserError
from npu_models.transforms import ImageTransform, preprocess
from npu_models.models.vit.model import ViT, ViTConfig
from tests.conftest import FIXTURES
from npu_models.models.vit import checkpoint as vit_weights
from npu_models.checkpoints.adapt import resample_position_embedding
from npu_models.checkpoints.io import check_state_dict, expected_shapes
from weights_tools.verify import verify

timm = pytest.importorskip("timm")
VIT_FIXTURE = FIXTURES / "reference" / "vit"


def test_fixture_parity_for_both_checkpoint_layouts():
    rows = verify("vit", VIT_FIXTURE)
    assert {r["name"] for r in rows} == {f"{ckpt}/{name}" for ckpt in ("checkpoint.npz", "checkpoint_timm.safetensors")
                                         for name in ("patch_embed", "features", "pooled", "logits", "probs")}
    assert all(r["ok"] for r in rows), rows


def test_every_official_key_maps_onto_the_full_size_model():
    official = json.loads((VIT_FIXTURE / "official_keys.json").read_text())["timm_state_dict"]
    with torch.device("meta"):
        state, origin, unexpected = vit_weights.timm_to_ours({k: torch.empty(s) for k, (s, _) in official.items()})
        model = ViT(ViTConfig())
    assert len(official) == 152
    check_state_dict(state, expected_shapes(model), lambda key: origin.get(key, key), unexpected, "official_keys.json")


def test_preprocessing_equals_the_reference_tensor_and_timm():
    expected = load_file(str(VIT_FIXTURE / "preprocessed.safetensors"))["pixel_values"][0]
    ours = preprocess(VIT_FIXTURE / "image.png", ViTConfig().transform)
    assert torch.equal(ours, expected)
    timm_transform = timm.data.create_transform(input_size=(3, 96, 96), crop_pct=0.9, interpolation="bicubic",
                                                mean=(0.5,) * 3, std=(0.5,) * 3)
    small = ImageTransform(96, (0.5,) * 3, (0.5,) * 3, crop_pct=0.9)
    assert torch.equal(preprocess(VIT_FIXTURE / "image.png", small), timm_transform(Image.open(VIT_FIXTURE / "image.png")))


def random_timm_vit(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=3, num_classes=7):
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        num_classes=num_classes).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model


def test_random_config_matches_timm(tmp_path):
    reference = random_timm_vit()
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model": {"num_heads": 3}}))
    ours = npu_models.load_model("vit", tmp_path / "model.safetensors", device="cpu")
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), reference(pixels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.forward_features(pixels), reference.forward_features(pixels), atol=1e-5, rtol=1e-5)


def test_position_embedding_resampling_matches_timm():
    pos_embed = torch.randn(1, 1 + 7 * 7, 16)
    ours = resample_position_embedding(pos_embed, 12)
    expected = timm.layers.resample_abs_pos_embed(pos_embed, new_size=(12, 12), num_prefix_tokens=1)
    torch.testing.assert_close(ours, expected)


def test_other_input_size_from_the_sidecar_config_resamples_and_matches_timm(tmp_path):
    reference = random_timm_vit(img_size=64)
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model": {"num_heads": 3, "img_size": 96}}))
    ours = npu_models.load_model("vit", tmp_path / "model.safetensors", device="cpu")
    assert ours.config.image_size == 96 and ours.pos_embed.shape[1] == 1 + 6 * 6
    resized = random_timm_vit(img_size=96)
    resized.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(reference.state_dict(), resized))
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), resized(pixels), atol=1e-5, rtol=1e-5)


def test_graph_mode_matches_eager(compiled_graphs):
    model = ViT(ViTConfig(image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_dim=128,
                          num_classes=5)).init_weights()
    compiled = npu_models.runtime.compile_model(model.eval(), torch.device("cpu"))
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixels), model(pixels), atol=1e-5, rtol=1e-5)
    assert compiled_graphs() == (1, 0)


def test_unknown_layout_lists_what_was_found(tmp_path):
    save_file({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(UserError, match=r"Found keys: decoder.bias, encoder.weight. Expected a Google AugReg .npz"):
        npu_models.load_model("vit", tmp_path / "x.safetensors", device="cpu")


def test_head_count_that_cannot_be_known_is_asked_for(tmp_path):
    save_file(random_timm_vit().state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="does not record the number of attention heads"):
        npu_models.load_model("vit", tmp_path / "model.safetensors", device="cpu")


def test_corrupt_npz_is_named(tmp_path):
    (tmp_path / "bad.npz").write_bytes((VIT_FIXTURE / "checkpoint.npz").read_bytes()[:4000])
    with pytest.raises(UserError, match="bad.npz is not a readable .npz checkpoint"):
        npu_models.load_model("vit", tmp_path / "bad.npz", device="cpu")
