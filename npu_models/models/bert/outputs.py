"""The named outputs weights_tools.verify compares with the BERT reference fixture (tests/fixtures/reference/bert)."""
from npu_models.recording import recording


# A classifier's last block computes only the [CLS] row; the fixtures' full last hidden states come from the
# encoder method (forward_features), the logits and pooled vectors from the classifier path.
def bert_outputs(model, input_ids, attention_mask, token_type_ids):
    with recording(model, {"embeddings_output": "embeddings", "pooler_output": "classifier:input"}) as out:
        out["logits"] = model(input_ids, attention_mask, token_type_ids)
    out["last_hidden_state"] = model.forward_features(input_ids, attention_mask, token_type_ids)
    out["probs"] = out["logits"].float().softmax(dim=-1)
    return out
