"""Work the optimised paths skip must not change a result: the [CLS]-only last block of every model whose
head reads only the first token, and text without padding (trimmed, no mask) in VLMo and ViLBERT."""
import pytest
import torch
import torch.nn.functional as F

from npu_models import runtime
from tests.test_ascend import blip_case, bert_case, padded, vilbert_case, vit_case, vlmo_case

TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def full_last_layer(model, method, args):
    """The same head on every row of the last block, through the encoders' own methods."""
    if method == "forward" and hasattr(model, "pooler"):  # BERT
        return model.forward_head(model.forward_features(*args))
    if method == "forward":  # ViT
        return model.forward_head(model.forward_features(*args))
    if method == "vqa_logits":
        return model.vqa_head(torch.tanh(model.pooler(model.joint_features(*args)[:, 0])))
    if method == "image_embeds" and hasattr(model, "image_proj"):  # VLMo
        return F.normalize(model.image_proj(model.encode(model.embed_image(*args), "image")[:, 0]), dim=-1)
    if method == "text_embeds" and hasattr(model, "text_proj") and hasattr(model, "embed_text"):  # VLMo
        ids, mask = args
        return F.normalize(model.text_proj(model.encode(model.embed_text(ids), "text", mask)[:, 0]), dim=-1)
    if method == "text_embeds":  # BLIP
        return F.normalize(model.text_proj(model.text_encoder.forward_features(*args)[:, 0]), dim=-1)
    if method == "itm_logits":
        features, ids, mask = args
        hidden = model.text_encoder.forward_features(model.with_enc_token(ids), mask, context=features)
        return model.itm_head(hidden[:, 0])
    return None


CASES = {"bert": bert_case, "vit": vit_case, "vlmo-vqa": lambda: vlmo_case("vqa"),
         "vlmo-retrieval": lambda: vlmo_case("retrieval"), "blip": blip_case}


@pytest.mark.parametrize("name", CASES)
def test_cls_only_last_block_equals_the_full_one(name):
    torch.manual_seed(0)
    model, methods = CASES[name]()
    model = model.init_weights(seed=2).eval()
    checked = 0
    with torch.no_grad():
        if hasattr(model, "relative_position_bias_table"):
            model.relative_position_bias_table.normal_()  # distinct per offset: the [CLS] bias row must be used
        for method, args, _ in methods:
            full = full_last_layer(model, method, args)
            if full is None:
                continue
            torch.testing.assert_close(getattr(model, method)(*args), full, **TOLERANCE)
            checked += 1
    assert checked


def test_classifier_last_block_computes_only_the_cls_row():
    model, [(_, args, _)] = bert_case()
    model = model.init_weights().eval()
    rows = []
    model.blocks[-1].register_forward_hook(lambda module, inputs, output: rows.append(output.shape[1]))
    with torch.no_grad():
        model(*args)
        model.forward_features(*args)
    assert rows == [1, args[0].shape[1]]


def vlmo_inputs(model, lengths):
    """Questions of the given token lengths, padded to max_text_len with their mask."""
    ids, mask = padded(len(lengths), model.config.max_text_len, model.config.vocab_size)
    mask = (torch.arange(model.config.max_text_len) < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("prepared", [False, True], ids=["gathered-per-forward", "prepared-once"])
@pytest.mark.parametrize("head", ["vqa", "retrieval"])
def test_vlmo_trimmed_text_equals_text_padded_to_max_len(head, prepared):
    torch.manual_seed(0)
    model = vlmo_case(head)[0].init_weights(seed=3).eval()
    with torch.no_grad():
        model.relative_position_bias_table.normal_()  # distinct bias per offset: a wrong index shows
        if prepared:  # as load_model leaves it: biases gathered once, then cut per text length
            model = runtime.prepare_model(model, torch.device("cpu"), torch.float32)
            assert hasattr(model, "joint_position_biases" if head == "vqa" else "text_position_biases")
        image = torch.randn(3, 3, 32, 32)
        ids, mask = vlmo_inputs(model, [4, 4, 4])  # max_text_len is 6
        run = model.vqa_logits if head == "vqa" else model.text_embeds
        inputs = (image,) if head == "vqa" else ()
        padded_to_max = run(*inputs, ids, mask)
        if head == "vqa":  # all the same length: trimmed, no mask at all
            torch.testing.assert_close(run(*inputs, ids[:, :4], None), padded_to_max, **TOLERANCE)
        torch.testing.assert_close(run(*inputs, ids[:, :4], mask[:, :4]), padded_to_max, **TOLERANCE)
        ids, mask = vlmo_inputs(model, [2, 5, 3])  # mixed lengths: trimmed to the longest, masked
        torch.testing.assert_close(run(*inputs, ids[:, :5], mask[:, :5]), run(*inputs, ids, mask), **TOLERANCE)


def test_vlmo_refuses_text_longer_than_its_table():
    model = vlmo_case("vqa")[0].eval()
    with pytest.raises(ValueError, match="at most 6 text tokens"):
        model.vqa_logits(torch.randn(1, 3, 32, 32), torch.ones(1, 7, dtype=torch.long))


def test_vilbert_without_a_text_mask_equals_an_all_ones_mask():
    model, [(_, args, _)] = vilbert_case()
    model = model.init_weights(seed=4).eval()
    boxes, coordinates, box_mask, ids, _, types = args
    with torch.no_grad():
        torch.testing.assert_close(model(boxes, coordinates, box_mask, ids, None, types),
                                   model(boxes, coordinates, box_mask, ids, torch.ones_like(ids).bool(), types),
                                   **TOLERANCE)


def test_prepared_vlmo_gathers_no_bias_in_its_forward(monkeypatch):
    model = vlmo_case("vqa")[0].init_weights(seed=3).eval()
    with torch.no_grad():
        model.relative_position_bias_table.normal_()
        ids, mask = vlmo_inputs(model, [6, 4, 5])
        image = torch.randn(3, 3, 32, 32)
        expected = model.vqa_logits(image, ids, mask)
        model = runtime.prepare_model(model, torch.device("cpu"), torch.float32)
        monkeypatch.setattr(type(model), "position_biases", lambda *a: pytest.fail("gathered in the forward"))
        torch.testing.assert_close(model.vqa_logits(image, ids, mask), expected, **TOLERANCE)
