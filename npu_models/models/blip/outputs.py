"""The named outputs weights_tools.verify compares with the BLIP reference fixture (tests/fixtures/reference/blip):
both encoders layer by layer, ITC, ITM and the re-ranked score matrices."""
from npu_models.models.blip.model import UNSELECTED_SCORE, rerank
from npu_models.recording import recording
from npu_models.spec import Ranking
from npu_models.tasks import score_matrix

# The re-ranked candidates are the top-k of each row (image) or column (text) of the ITC similarities; the
# score matrices hold the ITM scores at those candidates only (UNSELECTED_SCORE elsewhere).
BLIP_RANKINGS = {"topk_i2t_idx": Ranking("itc_sims", scattered=("score_matrix_i2t",)),
                 "topk_t2i_idx": Ranking("itc_sims", transposed=True, scattered=("score_matrix_t2i",))}


def blip_outputs(model, images, text_input_ids, text_attention_mask):
    vit, bert = model.visual_encoder, model.text_encoder
    ids, mask = text_input_ids, text_attention_mask
    points = {"vit.patch_embed_out": "patch_embed", "vit.embed_out": "blocks.0:input",
              **{f"vit.block{i}_out": f"blocks.{i}" for i in range(len(vit.blocks))}}
    with recording(vit, points) as out:
        image_feat = out["image_feat"] = model.image_features(images)
    out["image_embed"] = model.image_embeds(image_feat)
    points = {"text.embeddings_out": "embeddings", **{f"text.layer{i}_out": f"blocks.{i}" for i in range(len(bert.blocks))}}
    with recording(bert, points) as text:
        bert.forward_features(ids, mask)
    out["text_embed"] = model.text_embeds(ids, mask)
    out.update(text, text_last_hidden_state=text[f"text.layer{len(bert.blocks) - 1}_out"])
    sims = out["itc_sims"] = out["image_embed"] @ out["text_embed"].T

    texts, images_n = len(ids), len(images)
    with recording(bert, {"itm.layer0_selfattn_out_img0": "blocks.0.cross_attn:input",
                          "itm.layer0_crossattn_out_img0": "blocks.0.mlp:input"}) as layer0:
        model.itm_logits(image_feat[:1].expand(texts, -1, -1), ids, mask)  # layer 0 for image 0, step by step
    out.update(layer0)
    pairs = image_feat.repeat_interleave(texts, dim=0), ids.repeat(images_n, 1), mask.repeat(images_n, 1)
    logits = model.itm_logits(*pairs).view(images_n, texts, 2)
    last = bert.forward_features(model.with_enc_token(pairs[1]), pairs[2], context=pairs[0])
    out["itm.last_hidden_state"] = last.view(images_n, texts, *last.shape[1:])
    out["itm_logits"], out["itm_score"], out["itm_prob"] = logits, logits[..., 1], logits.softmax(dim=-1)[..., 1]
    k = min(model.config.k_test, texts, images_n)
    i2t = rerank(model, sims, image_feat, ids, mask, "i2t", range(images_n), k)
    t2i = rerank(model, sims, image_feat, ids, mask, "t2i", range(texts), k)
    out["topk_i2t_idx"], out["topk_t2i_idx"] = i2t[0], t2i[0]
    out["score_matrix_i2t"] = score_matrix(i2t, (images_n, texts), UNSELECTED_SCORE)
    out["score_matrix_t2i"] = score_matrix(t2i, (texts, images_n), UNSELECTED_SCORE)
    return out
