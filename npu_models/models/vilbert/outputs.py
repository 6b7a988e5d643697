"""The named outputs weights_tools.verify compares with the ViLBERT reference fixture
(tests/fixtures/reference/vilbert): every stream's layers, the co-attention layers, the poolers and the answers."""
import torch

from npu_models.recording import recording


def vilbert_outputs(model, box_features, box_coordinates, box_mask, token_ids, mask, type_ids):
    last = len(model.co_layers) - 1
    points = {"text_embeddings": "text_embeddings", "image_embeddings": "image_embeddings",
              **{f"text_layer_{i}_out": f"text_layers.{i}" for i in range(len(model.text_layers))},
              **{f"image_layer_{i}_out": f"image_layers.{i}" for i in range(len(model.image_layers))},
              **{f"coattn_{k}_{stream}_out": f"co_layers.{k}.{stream}" for k in range(last + 1)
                 for stream in ("text", "image")}}
    with recording(model, points) as out:  # layers after the last co-attention never run: nothing recorded
        out["logits"] = model(box_features, box_coordinates, box_mask, token_ids, mask, type_ids)
    out["encoded_text_final"], out["encoded_image_final"] = out[f"coattn_{last}_text_out"], out[f"coattn_{last}_image_out"]
    out["pooled_text"], out["pooled_image"], out["pooled_fused"] = model.fuse(out["encoded_text_final"],
                                                                              out["encoded_image_final"])
    out["probs"] = torch.sigmoid(out["logits"])
    return out
