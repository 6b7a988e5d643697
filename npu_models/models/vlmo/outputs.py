"""The named outputs weights_tools.verify compares with the VLMo reference fixture
(tests/fixtures/reference/vlmo): the VQA checkpoint's under "vqa.", the retrieval checkpoint's under "irtr."."""
from npu_models.parallel import gather_heads
from npu_models.recording import recording


def vlmo_outputs(model, image, text_ids, text_masks):
    p = "vqa" if model.config.head == "vqa" else "irtr"
    embeddings = {f"{p}.text_embeddings_bert": "text_embeddings", f"{p}.patch_embed": "patch_embed"}
    with recording(model, embeddings) as out:
        out[f"{p}.text_input_embeds"], out[f"{p}.image_input_embeds"] = model.embed_text(text_ids), model.embed_image(image)
    out[f"{p}.visual_embed"] = out[f"{p}.image_input_embeds"] - model.modality_embeddings.weight[1]  # before the modality
    blocks = {f"{p}.joint.hidden.layer{i}": f"blocks.{i}" for i in range(len(model.blocks))} if p == "vqa" else {}
    with recording(model, blocks) as joint:
        out[f"{p}.joint.final_norm"] = model.joint_features(image, text_ids, text_masks)
    out.update(joint)
    out[f"{p}.joint.cls_feats"] = model.joint_cls_feats(image, text_ids, text_masks)
    out[f"{p}.joint.raw_cls_feats"] = out[f"{p}.joint.final_norm"][:, 0]
    for layer in (0, len(model.blocks) - 1):
        biases = model.position_biases(model.position_index("joint"))
        out[f"{p}.joint.rel_pos_bias.layer{layer}"] = gather_heads(biases[layer], model)
    out.update({"debug.relative_position_index": model.image_position_index,
                "debug.text_relative_position_index": model.text_position_index,
                "debug.text_imag_relative_position_index": model.joint_position_index})
    if p == "vqa":
        out["vqa.logits"] = model.vqa_logits(image, text_ids, text_masks)
        return out
    for kind, embed, args in (("image", model.image_embeds, (image,)), ("text", model.text_embeds, (text_ids, text_masks))):
        out[f"irtr.{kind}_embeds"] = embed(*args)
        points = {f"irtr.{kind}.hidden.layer{i}": f"blocks.{i}" for i in range(len(model.blocks))}
        tokens, key_mask = (model.embed_image(image), None) if kind == "image" else (model.embed_text(text_ids), text_masks)
        with recording(model, points) as encoded:
            out[f"irtr.{kind}.final_norm"] = model.encode(tokens, kind, key_mask)
        out.update(encoded)
        biases = model.position_biases(model.position_index(kind))
        out[f"irtr.{kind}.rel_pos_bias.layer0"] = gather_heads(biases[0], model)
    out["irtr.similarity"] = out["irtr.image_embeds"] @ out["irtr.text_embeds"].T
    out["irtr.logits_per_image"] = out["irtr.similarity"] * model.logit_scale.exp()
    return out
