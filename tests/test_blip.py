import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import npu_models
from eval import retrieval
from eval.data.retrieval import read_retrieval
from npu_models.models.blip.model import Blip, BlipConfig, pre_caption
from npu_models.tokenizer import bert_tokenizer, encode_padded
from tests.conftest import FIXTURES
from npu_models.models.blip import checkpoint as blip_weights
from npu_models.checkpoints.io import check_state_dict, expected_shapes
from weights_tools.verify import verify

BLIP_FIXTURE = FIXTURES / "reference" / "blip"
RETRIEVAL_BLIP = FIXTURES / "reference" / "retrieval-blip"
CONFIG = json.loads((BLIP_FIXTURE / "config.json").read_text())


def test_fixture_parity_every_tensor_at_model_resolution():
    rows = verify("blip", BLIP_FIXTURE, atol=1e-5, rtol=1e-5)
    expected = {k for k in load_file(str(BLIP_FIXTURE / "outputs.safetensors")) if not k.startswith("hires.")}
    assert {r["name"] for r in rows} == expected
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


def test_position_embedding_interpolated_at_load_matches_the_reference(tmp_path):
    shutil.copy(BLIP_FIXTURE / "checkpoint.pth", tmp_path / "checkpoint.pth")
    sidecar = json.loads(json.dumps(CONFIG))
    sidecar["small_model"]["vit"]["image_size"] = CONFIG["small_model"]["hires_image_size"]
    (tmp_path / "config.json").write_text(json.dumps(sidecar))
    model = npu_models.load_model("blip", tmp_path / "checkpoint.pth", device="cpu")
    inputs, outputs = load_file(str(BLIP_FIXTURE / "inputs.safetensors")), load_file(str(BLIP_FIXTURE / "outputs.safetensors"))
    with torch.no_grad():
        image_feat = model.image_features(inputs["images_hires"])
        torch.testing.assert_close(model.visual_encoder.pos_embed, outputs["hires.pos_embed_interp"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(image_feat, outputs["hires.image_feat"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.image_embeds(image_feat), outputs["hires.image_embed"], atol=1e-5, rtol=1e-5)


def test_official_keys_inference_tensors_kept_training_state_dropped():
    official = json.loads((BLIP_FIXTURE / "official_keys.json").read_text())
    keys = official["keys"]
    kept = [k for k in keys if not blip_weights.is_training_only(k["key"]) and not k["key"].endswith("position_ids")]
    assert len(keys) == 949 and len(kept) == official["num_inference_keys"] == 472
    assert all(k["role"] != "training-only" for k in kept)
    with torch.device("meta"):
        model = Blip(BlipConfig())
        ours, origin, unexpected = blip_weights.rename({k["key"]: torch.empty(k["shape"]) for k in keys})
    check_state_dict(ours, expected_shapes(model), lambda key: origin.get(key, key), unexpected, "official_keys.json")
    assert sum(p.numel() for p in model.parameters()) == official["numel_inference_weights"]


def test_momentum_weights_are_not_used():
    checkpoint = torch.load(BLIP_FIXTURE / "checkpoint.pth", weights_only=True)["model"]
    model = npu_models.load_model("blip", BLIP_FIXTURE / "checkpoint.pth", device="cpu")
    assert torch.equal(model.vision_proj.weight, checkpoint["vision_proj.weight"])
    assert not torch.equal(model.vision_proj.weight, checkpoint["vision_proj_m.weight"])


def test_caption_cleanup_and_tokenisation_match_the_reference():
    captions = [c for entry in CONFIG["eval_annotation"] for c in entry["caption"]]
    cleaned = [pre_caption(c, 30) for c in captions]
    assert cleaned == CONFIG["eval_texts_after_pre_caption"]
    inputs = load_file(str(BLIP_FIXTURE / "inputs.safetensors"))
    ids, mask = encode_padded(bert_tokenizer(BLIP_FIXTURE / "toy_vocab.txt", True, 35), cleaned, 35)
    assert torch.equal(ids, inputs["text_input_ids"]) and torch.equal(mask, inputs["text_attention_mask"])
    model = npu_models.load_model("blip", BLIP_FIXTURE / "checkpoint.pth", device="cpu")
    assert torch.equal(model.with_enc_token(ids), inputs["itm_input_ids"])  # [ENC] = vocab_size - 1 replaces [CLS]


def test_image_transform_reproduces_the_reference_pixels():
    inputs = load_file(str(BLIP_FIXTURE / "inputs.safetensors"))
    transform = npu_models.load_model("blip", BLIP_FIXTURE / "checkpoint.pth", device="cpu").config.transform.build()
    for i in range(3):
        pixels = transform(Image.fromarray(np.asarray(inputs["raw_images_uint8"][i])))
        torch.testing.assert_close(pixels, inputs["images"][i], atol=2 / 255 / 0.26, rtol=0)  # 1 LSB of PIL


def test_graph_mode_matches_eager(compiled_graphs):
    model = npu_models.load_model("blip", BLIP_FIXTURE / "checkpoint.pth", device="cpu")
    inputs = load_file(str(BLIP_FIXTURE / "inputs.safetensors"))
    with torch.no_grad():
        features = model.image_features(inputs["images"])
        compiled_features = npu_models.runtime.compile_model(model.image_features, torch.device("cpu"))(inputs["images"])
        torch.testing.assert_close(compiled_features, features, atol=1e-5, rtol=1e-5)
        pairs = (features[[0, 1, 2, 0]], inputs["text_input_ids"], inputs["text_attention_mask"])
        compiled = npu_models.runtime.compile_model(model, torch.device("cpu"))
        torch.testing.assert_close(compiled(*pairs), model(*pairs), atol=1e-5, rtol=1e-5)
    assert compiled_graphs() == (2, 0)


def run_retrieval(tmp_path, *extra):
    out = tmp_path / "out.json"
    retrieval.main(["--model", "blip", "--checkpoint", str(RETRIEVAL_BLIP / "checkpoint.pth"), "--vocab",
                    str(RETRIEVAL_BLIP / "vocab.txt"), "--data", str(RETRIEVAL_BLIP), "--k-test", "4", "--device", "cpu",
                    "--num-workers", "0", "--output", str(out), *extra])
    return json.loads(out.read_text())


def test_eval_retrieval_reproduces_expected_json(tmp_path):
    predictions = tmp_path / "itm.jsonl"
    results = run_retrieval(tmp_path, "--predictions", str(predictions), "--batch-size", "8")
    expected = json.loads((RETRIEVAL_BLIP / "expected.json").read_text())
    for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean"):
        assert results[key] == pytest.approx(expected[key] / 100, abs=1e-12), key  # the reference prints percent
    for key in ("num_images", "num_texts", "k_test"):
        assert results[key] == expected[key], key
    records = {r["key"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    i2t_top1 = [records[f"i2t:{i}"]["indices"][int(np.argmax(records[f"i2t:{i}"]["scores"]))] for i in range(10)]
    t2i_top1 = [records[f"t2i:{t}"]["indices"][int(np.argmax(records[f"t2i:{t}"]["scores"]))] for t in range(50)]
    assert i2t_top1 == expected["i2t_top1"] and t2i_top1 == expected["t2i_top1"]
    # One line per query, in order, naming it and listing its top 10 by the score the metrics rank by: the k
    # re-ranked candidates by ITM + ITC score, then the rest.
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["key"] for r in lines] == [f"i2t:{i}" for i in range(10)] + [f"t2i:{t}" for t in range(50)]
    assert lines[10]["query"] == read_retrieval(RETRIEVAL_BLIP).texts[0]
    assert [r["top10"][0] for r in lines] == expected["i2t_top1"] + expected["t2i_top1"]
    for r in lines:
        reranked = [i for _, i in sorted(zip(r["scores"], r["indices"]), reverse=True)]
        assert len(r["top10"]) == 10 and r["top10"][:4] == reranked and not set(r["top10"][4:]) & set(reranked)


def test_interrupted_reranking_resumes(tmp_path, monkeypatch):
    predictions = tmp_path / "itm.jsonl"
    first = run_retrieval(tmp_path, "--predictions", str(predictions), "--batch-size", "8")
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines[:25]) + lines[25][:10])
    pairs = []
    real_forward = Blip.forward
    monkeypatch.setattr(Blip, "forward", lambda self, f, i, m: pairs.append(len(f)) or real_forward(self, f, i, m))
    second = run_retrieval(tmp_path, "--predictions", str(predictions), "--batch-size", "8")
    assert sum(pairs) == (60 - 25) * 4  # 10 image rows + 50 text rows, 25 of them already done, k = 4
    assert {k: second[k] for k in ("txt_r1", "img_r1", "r_mean")} == {k: first[k] for k in ("txt_r1", "img_r1", "r_mean")}
    resumed = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert resumed[:25] == [json.loads(line) for line in lines[:25]]
    for record, line in zip(resumed, lines):  # the re-ranked rows batch with other rows: float rounding only
        expected = json.loads(line)
        assert record["scores"] == pytest.approx(expected["scores"], abs=1e-5)
        assert {k: v for k, v in record.items() if k != "scores"} == {k: v for k, v in expected.items() if k != "scores"}


def hf_key(key: str) -> str:
    """Official BLIP key -> transformers' BlipForImageTextRetrieval key (text and head keys are the same)."""
    if not key.startswith("visual_encoder."):
        return key
    key = key.removeprefix("visual_encoder.")
    for ours, theirs in (("cls_token", "embeddings.class_embedding"), ("pos_embed", "embeddings.position_embedding"),
                         ("patch_embed.proj", "embeddings.patch_embedding"), ("blocks.", "encoder.layers."),
                         ("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.qkv", "self_attn.qkv"),
                         ("attn.proj", "self_attn.projection")):
        key = key.replace(ours, theirs)
    return "vision_model." + ("post_layernorm" + key[4:] if key.startswith("norm.") else key)


def test_same_weights_match_transformers_blip():
    transformers = pytest.importorskip("transformers")
    small = CONFIG["small_model"]
    vit, med = small["vit"], small["med_config"]
    config = transformers.BlipConfig(
        vision_config=transformers.BlipVisionConfig(
            hidden_size=vit["embed_dim"], intermediate_size=vit["mlp_hidden"], num_hidden_layers=vit["depth"],
            num_attention_heads=vit["num_heads"], image_size=vit["image_size"], patch_size=vit["patch_size"],
            layer_norm_eps=1e-6).to_dict(),  # transformers' default is 1e-5; BLIP's ViT uses 1e-6
        text_config=transformers.BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=med["encoder_width"],
            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
            bos_token_id=None).to_dict(),
        image_text_hidden_size=small["embed_dim"])
    reference = transformers.BlipForImageTextRetrieval(config).eval()
    official = torch.load(BLIP_FIXTURE / "checkpoint.pth", weights_only=True)["model"]
    state = {hf_key(k): v for k, v in official.items()
             if not blip_weights.is_training_only(k) and not k.endswith("position_ids")}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)

    ours = npu_models.load_model("blip", BLIP_FIXTURE / "checkpoint.pth", device="cpu")
    inputs = load_file(str(BLIP_FIXTURE / "inputs.safetensors"))
    images, ids, mask = inputs["images"], inputs["text_input_ids"][:3], inputs["text_attention_mask"][:3]
    with torch.no_grad():
        feats = ours.image_features(images)
        hf_itm = reference(input_ids=ours.with_enc_token(ids), pixel_values=images, attention_mask=mask).itm_score
        torch.testing.assert_close(ours.itm_logits(feats, ids, mask), hf_itm, atol=1e-4, rtol=1e-4)
        hf_itc = reference(input_ids=ids, pixel_values=images, attention_mask=mask, use_itm_head=False).itm_score
        torch.testing.assert_close(ours.image_embeds(feats) @ ours.text_embeds(ids, mask).T, hf_itc, atol=1e-5, rtol=1e-5)
