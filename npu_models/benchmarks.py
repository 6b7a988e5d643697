"""What eval.bench times for each model: inputs shaped as the Ascend ModelZoo guides feed them, the part
of the model that is timed, and the peer implementation (transformers, timm) loaded with the same weights.

eval.bench looks a model's benchmarks up here by registry name ("name" or "name/part"); it never names a
model itself.
"""
from dataclasses import dataclass
from typing import Callable

import torch

from npu_models.models.bert import model as bert
from npu_models.errors import UserError


@dataclass(frozen=True)
class Benchmark:
    make_inputs: Callable          # (config, batch_size, seq_len, device) -> (inputs tuple, sequence length)
    make_peer: Callable | None = None  # checkpoint -> (peer module, peer fn, our config, our state dict)
    timed_part: Callable = lambda model: model  # which entry point of our model is timed
    graph: bool = True             # False where data-dependent shapes (detections) rule out a static graph


def bert_peer(checkpoint):
    """transformers' BertForSequenceClassification, and its weights in our layout with our config."""
    try:
        import transformers
    except ImportError:
        raise UserError("the BERT peer needs transformers: `pip install -e .[test]`, or pass --no-peer "
                        "to time ours alone.") from None
    from npu_models.models.bert import checkpoint as hf_bert

    if checkpoint is not None:
        peer = transformers.BertForSequenceClassification.from_pretrained(checkpoint)
    else:
        torch.manual_seed(0)
        config = bert.bert_base_cased_sst2()
        peer = transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=config.vocab_size, hidden_size=config.embed_dim, num_hidden_layers=config.depth,
            num_attention_heads=config.num_heads, intermediate_size=config.mlp_dim,
            max_position_embeddings=config.max_positions, num_labels=config.num_labels))
    state = peer.state_dict()
    config = hf_bert.config_from_hf(peer.config.to_dict(), {k.removeprefix("bert."): v for k, v in state.items()},
                                    {}, "peer config")
    def run(input_ids, attention_mask, token_type_ids):
        return peer(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    return peer, run, config, hf_bert.convert_state_dict(state).state


def bert_inputs(config, batch_size, seq_len, device):
    """All-valid token ids at min(seq_len, max positions), as ais_bench feeds them; returns (inputs, seq_len)."""
    seq_len = min(seq_len, config.max_positions)
    generator = torch.Generator().manual_seed(batch_size)
    input_ids = torch.randint(1, config.vocab_size, (batch_size, seq_len), generator=generator)
    mask, types = torch.ones_like(input_ids), torch.zeros_like(input_ids)
    return (input_ids.to(device), mask.to(device), types.to(device)), seq_len


def vit_peer(checkpoint):
    """timm's VisionTransformer (npz converted to its layout), and its weights in our layout with our config."""
    try:
        import timm
    except ImportError:
        raise UserError("the ViT peer needs timm: `pip install -e .[test]`, or pass --no-peer "
                        "to time ours alone.") from None
    from npu_models.models.vit import checkpoint as vit_weights
    from npu_models.checkpoints.io import read_sidecar, read_state_dict

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


def vit_inputs(config, batch_size, seq_len, device):
    """Normalised random pixels at the model's input size; the sequence is its patch tokens + class token."""
    generator = torch.Generator().manual_seed(batch_size)
    pixels = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    return (pixels.to(device),), config.grid_size ** 2 + 1


def vlmo_vqa_inputs(config, batch_size, seq_len, device):
    """Images at the model's size and max_text_len-token questions, all valid: eval.vqa groups questions by
    length, so a batch has no padding and runs without a text mask. The joint sequence is text + image."""
    generator = torch.Generator().manual_seed(batch_size)
    image = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    text_ids = torch.randint(1, config.vocab_size, (batch_size, config.max_text_len), generator=generator)
    return (image.to(device), text_ids.to(device)), config.max_text_len + config.num_image_tokens


def vlmo_image_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    image = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    return (image.to(device),), config.num_image_tokens


def blip_image_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    size = config.vision.image_size
    return (torch.randn(batch_size, 3, size, size, generator=generator).to(device),), config.vision.grid_size ** 2 + 1


def blip_text_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    ids = torch.randint(1000 % config.text.vocab_size, config.text.vocab_size - 2, (batch_size, config.max_text_len),
                        generator=generator)
    return (ids.to(device), torch.ones_like(ids).to(device)), config.max_text_len


def blip_itm_inputs(config, batch_size, seq_len, device):
    (ids, mask), length = blip_text_inputs(config, batch_size, seq_len, device)
    generator = torch.Generator().manual_seed(batch_size)
    image_feat = torch.randn(batch_size, config.vision.grid_size ** 2 + 1, config.vision.embed_dim, generator=generator)
    return (image_feat.to(device), ids, mask), length


def blip_image_part(model):
    """The ModelZoo guide's image OM: image_feat and the ITC image_embeds."""
    def image_encoder(images):
        features = model.image_features(images)
        return torch.cat([model.image_embeds(features), features[:, 0]], dim=-1)
    return image_encoder


def vilbert_inputs(config, batch_size, seq_len, device):
    """100 precomputed regions per image (as the ModelZoo guide times it) and 32-token questions."""
    generator = torch.Generator().manual_seed(batch_size)
    features = torch.relu(torch.randn(batch_size, 100, config.image_feature_dim, generator=generator))
    corners = torch.rand(batch_size, 100, 2, generator=generator) * 600
    coordinates = torch.cat([corners, corners + 200], dim=-1)
    ids = torch.randint(1, config.text.vocab_size, (batch_size, 32), generator=generator)
    inputs = (features, coordinates, torch.ones(batch_size, 100, dtype=torch.bool), ids, torch.ones_like(ids).bool(),
              torch.zeros_like(ids))
    return tuple(t.to(device) for t in inputs), 32 + 100


# Per registry entry, its parts by name ("": the whole model). VLMo has no peer outside its training
# repository (pytorch_lightning, fairscale): ours is timed alone. For retrieval the image encoder is timed;
# the caption side is a short text-only pass.
BERT = {"": Benchmark(bert_inputs, bert_peer)}
VIT = {"": Benchmark(vit_inputs, vit_peer)}
VLMO_VQA = {"": Benchmark(vlmo_vqa_inputs)}
VLMO_RETRIEVAL = {"": Benchmark(vlmo_image_inputs, timed_part=lambda model: model.image_embeds)}
# BLIP's three inference parts, as the ModelZoo guide splits them into OM files.
BLIP = {"image": Benchmark(blip_image_inputs, timed_part=blip_image_part),
        "text": Benchmark(blip_text_inputs, timed_part=lambda model: model.text_embeds),
        "itm": Benchmark(blip_itm_inputs)}
# ViLBERT from cached region features (the ModelZoo guide's figure); eval.bench adds the run from images
# through the detector for every region-feature model.
VILBERT = {"": Benchmark(vilbert_inputs)}
