"""The reference implementations eval.bench times beside ours (transformers, timm), loaded with the same
weights: by registry name, `make_peer(checkpoint or None) -> (peer module, peer fn, our config, our state
dict)`. A model without one here is timed alone. The one place in eval/ that names models: a peer is
another library's model of that name."""
from pathlib import Path

import torch

from npu_models.checkpoints.io import read_sidecar, read_state_dict
from npu_models.errors import UserError
from npu_models.models.bert import checkpoint as hf_bert
from npu_models.models.bert.model import bert_base_cased_sst2
from npu_models.models.vit import checkpoint as vit_weights


def bert_peer(checkpoint):
    """transformers' BertForSequenceClassification, and its weights in our layout with our config."""
    try:
        import transformers
    except ImportError:
        raise UserError('the BERT peer needs transformers: `pip install -e ".[test]"`, or pass --no-peer '
                        "to time ours alone.") from None

    if checkpoint is not None:
        peer = transformers.BertForSequenceClassification.from_pretrained(checkpoint)
    else:
        torch.manual_seed(0)
        config = bert_base_cased_sst2()
        peer = transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=config.vocab_size, hidden_size=config.embed_dim, num_hidden_layers=config.depth,
            num_attention_heads=config.num_heads, intermediate_size=config.mlp_dim,
            max_position_embeddings=config.max_positions, num_labels=config.num_labels))
    state = peer.state_dict()
    # The checkpoint's casing (tokenizer_config.json) as eval.sst2 reads it; without it a cased model was
    # lower-cased here, in both flows alike, and only a whole-process run (eval.sst2 itself) told them apart
    tokenizer_config = {} if checkpoint is None else hf_bert.read_tokenizer_config(Path(checkpoint))
    config = hf_bert.config_from_hf(peer.config.to_dict(), {k.removeprefix("bert."): v for k, v in state.items()},
                                    tokenizer_config, "peer config")
    def run(input_ids, attention_mask, token_type_ids):
        return peer(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    return peer, run, config, hf_bert.convert_state_dict(state).state


def vit_peer(checkpoint):
    """timm's VisionTransformer (npz converted to its layout), and its weights in our layout with our config."""
    try:
        import timm
    except ImportError:
        raise UserError('the ViT peer needs timm: `pip install -e ".[test]"`, or pass --no-peer '
                        "to time ours alone.") from None

    if checkpoint is None:
        torch.manual_seed(0)
        timm_state = timm.create_model("vit_base_patch32_224", pretrained=False).state_dict()
        num_heads, sidecar = None, {}
    elif checkpoint.suffix == ".npz":
        arrays = vit_weights.read_npz(checkpoint)
        timm_state, num_heads = vit_weights.npz_to_timm(arrays).state, vit_weights.npz_num_heads(arrays)
        sidecar = read_sidecar(checkpoint, section="model")
    else:
        timm_state = vit_weights.timm_state(read_state_dict(checkpoint), checkpoint)
        num_heads, sidecar = None, read_sidecar(checkpoint, section="model")
    state = vit_weights.timm_to_ours(timm_state).state
    # The peer runs at the checkpoint's own resolution: only the head count comes from the sidecar.
    config = vit_weights.infer_config(state, num_heads, {k: v for k, v in sidecar.items() if k == "num_heads"},
                                      checkpoint)
    peer = timm.models.vision_transformer.VisionTransformer(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, mlp_ratio=config.mlp_dim / config.embed_dim, num_classes=config.num_classes)
    peer.load_state_dict(timm_state)
    return peer, peer, config, state


PEERS = {"bert-base-cased-sst2": bert_peer, "vit-base-patch32-224": vit_peer}
