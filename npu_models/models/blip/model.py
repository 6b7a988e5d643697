"""BLIP image-text retrieval (COCO fine-tune): ViT-B/16 image encoder, BERT text encoder with
cross-attention in every layer, ITC projections and the ITM head."""
import functools
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from npu_models.models.bert.model import Bert, BertConfig
from npu_models.tokenizer import TextInput
from npu_models.transforms import ImageTransform
from npu_models.models.vit.model import ViT, ViTConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
UNSELECTED_SCORE = -100.0  # what the reference fills outside each query's top-k


def blip_vision(image_size: int = 384) -> ViTConfig:
    """ViT-B/16 without a head; the eval transform squashes to size x size with CLIP statistics."""
    return ViTConfig(image_size=image_size, patch_size=16, num_classes=0, crop_pct=None, mean=CLIP_MEAN, std=CLIP_STD)


def blip_text() -> BertConfig:
    """bert-base-uncased with [DEC] and [ENC] appended (vocab 30524), no token types, no pooler."""
    return BertConfig(vocab_size=30524, type_vocab_size=0, with_pooler=False, labels=[], cross_attention_dim=768,
                      do_lower_case=True)


@dataclass
class BlipConfig:
    vision: ViTConfig = field(default_factory=blip_vision)
    text: BertConfig = field(default_factory=blip_text)
    itc_dim: int = 256           # ITC projection width
    max_text_len: int = 35       # tokens per caption, always padded to this
    max_words: int = 30          # pre_caption keeps this many words
    k_test: int = 256            # candidates re-ranked by ITM per query

    def __post_init__(self):  # from JSON (our converted config.json)
        if isinstance(self.vision, dict):
            self.vision = ViTConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = BertConfig(**self.text)

    @property
    def enc_token_id(self) -> int:
        """[ENC], appended last to the vocabulary; it replaces [CLS] for ITM."""
        return self.text.vocab_size - 1

    @property
    def transform(self) -> ImageTransform:
        return self.vision.transform

    @property
    def text_input(self) -> TextInput:
        """Captions cleaned as the reference does, padded to max_text_len."""
        return TextInput(self.text.do_lower_case, self.max_text_len, clean=functools.partial(pre_caption,
                                                                                          max_words=self.max_words))


def pre_caption(caption: str, max_words: int = 30) -> str:
    """The reference's caption clean-up: lower-case, some punctuation to spaces, at most max_words words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


class Blip(nn.Module):
    """The three inference parts (image encoder, text encoder, ITM) as methods of one model."""

    def __init__(self, config: BlipConfig):
        super().__init__()
        self.config = config
        self.visual_encoder = ViT(config.vision)
        self.text_encoder = Bert(config.text)
        self.vision_proj = nn.Linear(config.vision.embed_dim, config.itc_dim)
        self.text_proj = nn.Linear(config.text.embed_dim, config.itc_dim)
        self.itm_head = nn.Linear(config.text.embed_dim, 2)

    def init_weights(self, seed: int = 0) -> "Blip":
        from npu_models.layers.init import init_weights_
        return init_weights_(self, seed)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] -> image_feat [B, 1 + patches, D], final-normed (the ITM memory)."""
        return self.visual_encoder.forward_features(images)

    def image_embeds(self, image_feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(image_feat[:, 0]), dim=-1)

    def text_embeds(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Unimodal text encoder (cross-attention skipped) -> L2-normalised ITC embedding."""
        return F.normalize(self.text_proj(self.text_encoder.forward_features(text_ids, text_mask, cls_only=True)[:, 0]), dim=-1)

    def with_enc_token(self, text_ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(text_ids[:, :1], self.config.enc_token_id), text_ids[:, 1:]], dim=1)

    def itm_logits(self, image_feat: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Pairs (image_feat[i], text i) -> [B, 2] match logits; [CLS] is replaced by [ENC] here."""
        hidden = self.text_encoder.forward_features(self.with_enc_token(text_ids), text_mask, context=image_feat,
                                                    cls_only=True)
        return self.itm_head(hidden[:, 0])

    def forward(self, image_feat, text_ids, text_mask):
        """The retrieval re-ranking score: the raw ITM logit of "match"."""
        return self.itm_logits(image_feat, text_ids, text_mask)[:, 1]


@torch.no_grad()
def rerank(model: Blip, sims, image_feats, text_ids, text_masks, direction: str, rows, k: int):
    """ITM re-ranking of the top-k ITC candidates of each query row, all rows' pairs in one ITM pass.

    direction "i2t": rows are images, candidates texts; "t2i": rows are texts, candidates images.
    Returns (candidate indices [R, k], scores [R, k]) with score = ITM match logit + ITC similarity.
    """
    rows = torch.as_tensor(list(rows), device=sims.device)
    row_sims = sims[rows] if direction == "i2t" else sims.T[rows]
    top_sims, top_idx = row_sims.topk(k, dim=1)
    queries = rows.repeat_interleave(k)
    candidates = top_idx.flatten()
    images, texts = (queries, candidates) if direction == "i2t" else (candidates, queries)
    itm = model(image_feats[images], text_ids[texts], text_masks[texts]).float()
    return top_idx, itm.view(len(rows), k) + top_sims.float()


def blip_retrieval_coco() -> BlipConfig:
    return BlipConfig()
