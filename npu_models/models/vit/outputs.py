"""The named outputs weights_tools.verify compares with the ViT reference fixture (tests/fixtures/reference/vit)."""
from npu_models.recording import recording


# The classifier's last block computes only the class token's row; the full final-norm tokens come from
# forward_features.
def vit_outputs(model, pixel_values):
    with recording(model, {"patch_embed": "patch_embed", "pooled": "head:input"}) as out:
        out["logits"] = model(pixel_values)
    out["features"] = model.forward_features(pixel_values)
    out["probs"] = out["logits"].float().softmax(dim=-1)
    return out
