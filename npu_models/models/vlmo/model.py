"""VLMo (unified vision-language transformer with mixture-of-modality experts) for VQAv2 and retrieval."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from npu_models.layers import MultiwayBlock, PatchEmbed, TextEmbeddings
from npu_models.layers.init import init_weights_
from npu_models.tokenizer import TextInput
from npu_models.transforms import ImageTransform

TEXT, IMAGE = 0, 1  # modality-type embedding rows


@dataclass
class VLMoConfig:
    image_size: int = 480
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    vlffn_start_layer_index: int = 10   # blocks from here on own a vision-language expert
    max_text_len: int = 40              # the longest text; shorter ones keep their positions (position_index)
    max_text_len_of_initckpt: int = 196  # sizes the text part of the relative-position table
    vocab_size: int = 30522
    type_vocab_size: int = 2
    head: str = "vqa"                   # "vqa" (pooler + answer classifier) or "retrieval" (ITC projections)
    num_answers: int = 3129
    norm_eps: float = 1e-6
    do_lower_case: bool = True           # bert-base-uncased tokenisation

    @property
    def task(self) -> str:
        """The eval task this head serves (it tells vlmo-base-vqa from vlmo-base-coco-retrieval)."""
        return "vqa" if self.head == "vqa" else "retrieval"

    @property
    def text_input(self) -> TextInput:
        """Questions and captions up to max_text_len tokens; batches pad only to a length bucket (a shorter text
        keeps its relative positions: see position_index)."""
        return TextInput(self.do_lower_case, self.max_text_len, pad_to_max=False)

    @property
    def window(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.window ** 2 + 1

    @property
    def image_distances(self) -> int:
        """Relative-position table rows for the image: 2-D offsets plus the three CLS entries."""
        return (2 * self.window - 1) ** 2 + 3

    @property
    def table_rows(self) -> int:
        """Rows of the shared relative-position table: image entries, text offsets, three text CLS entries."""
        return self.image_distances + 2 * self.max_text_len_of_initckpt + 2

    @property
    def transform(self) -> ImageTransform:
        # PIL bicubic squash to S x S (no crop), mean/std 0.5.
        return ImageTransform(self.image_size, (0.5,) * 3, (0.5,) * 3, crop_pct=None, interpolation="bicubic")


def relative_position_indices(config: VLMoConfig) -> dict[str, torch.Tensor]:
    """Index matrices into the shared relative-position table for the image, text and joint sequences.

    Image (BEiT): 2-D offsets between patches, plus three constants for CLS->patch, patch->CLS, CLS->CLS.
    Text: 1-D offsets shifted past the image entries, plus its own three CLS constants. Joint: the two
    matrices on the diagonal and one constant per direction between the modalities.
    """
    w, text_len = config.window, config.max_text_len
    image_distances, table_rows = config.image_distances, config.table_rows
    # Always built on the CPU: they are constants, also when the model is being built on the meta device.
    cpu = torch.device("cpu")

    rows, cols = torch.meshgrid(torch.arange(w, device=cpu), torch.arange(w, device=cpu), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])                 # [2, P]
    delta = coords[:, :, None] - coords[:, None, :] + (w - 1)             # [2, P, P]
    image = torch.empty(w * w + 1, w * w + 1, dtype=torch.long, device=cpu)
    image[1:, 1:] = delta[0] * (2 * w - 1) + delta[1]
    image[0, :] = image_distances - 3
    image[:, 0] = image_distances - 2
    image[0, 0] = image_distances - 1

    positions = torch.arange(text_len, device=cpu)
    text = positions[None, :] - positions[:, None] + config.max_text_len_of_initckpt - 2 + image_distances + 2
    text[0, :] = table_rows - 3
    text[:, 0] = table_rows - 2
    text[0, 0] = table_rows - 1

    joint = torch.empty(text_len + w * w + 1, text_len + w * w + 1, dtype=torch.long, device=cpu)
    joint[:text_len, :text_len] = text
    joint[text_len:, text_len:] = image
    joint[:text_len, text_len:] = image_distances
    joint[text_len:, :text_len] = image_distances + 1
    return {"image": image, "text": text, "joint": joint}


class VLMo(nn.Module):
    def __init__(self, config: VLMoConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image size {config.image_size} is not a multiple of patch size {config.patch_size}")
        if config.head not in ("vqa", "retrieval"):
            raise ValueError(f"head must be 'vqa' or 'retrieval', not {config.head!r}")
        self.config = config
        dim, depth = config.embed_dim, config.depth
        self.text_embeddings = TextEmbeddings(config.vocab_size, dim, 0, config.type_vocab_size, 1e-12)
        self.modality_embeddings = nn.Embedding(2, dim)
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # One table for all layers; columns are layer-major, head-minor.
        self.relative_position_bias_table = nn.Parameter(torch.zeros(config.table_rows, config.num_heads * depth))
        for name, index in relative_position_indices(config).items():
            self.register_buffer(f"{name}_position_index", index, persistent=False)
        self.blocks = nn.ModuleList(
            MultiwayBlock(dim, config.num_heads, config.mlp_dim, config.norm_eps,
                          ("text", "image", "vl") if i >= config.vlffn_start_layer_index else ("text", "image"))
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.pooler = nn.Linear(dim, dim)
        if config.head == "vqa":
            self.vqa_head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim, eps=1e-5), nn.GELU(),
                                          nn.Linear(2 * dim, config.num_answers))
        else:
            self.text_proj = nn.Linear(dim, dim, bias=False)
            self.image_proj = nn.Linear(dim, dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def init_weights(self, seed: int = 0) -> "VLMo":
        init_weights_(self, seed)
        with torch.no_grad():
            for block in self.blocks:
                block.gamma_attn.fill_(0.1)
                block.gamma_ffn.fill_(0.1)
        return self

    # --- embeddings -------------------------------------------------------------------------------------
    def embed_text(self, text_ids) -> torch.Tensor:
        """BERT word + token-type(0) embedding and LayerNorm (no absolute positions), plus modality 0."""
        return self.text_embeddings(text_ids, torch.zeros_like(text_ids)) + self.modality_embeddings.weight[TEXT]

    def embed_image(self, image) -> torch.Tensor:
        """Patch tokens with the class token in front (no absolute positions), plus modality 1."""
        if image.shape[-1] != self.config.image_size or image.shape[-2] != self.config.image_size:
            raise ValueError(f"VLMo expects {self.config.image_size}x{self.config.image_size} images, got "
                             f"{tuple(image.shape[-2:])}")
        patches = self.patch_embed(image)
        tokens = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        return tokens + self.modality_embeddings.weight[IMAGE]

    def position_index(self, kind: str) -> torch.Tensor:
        """[n, n] rows of the relative-position table for the 'image', 'text' or 'joint' sequence at full
        text length (max_text_len)."""
        return getattr(self, f"{kind}_position_index")

    def position_biases(self, index: torch.Tensor) -> torch.Tensor:
        """[depth, heads, n, n] relative-position bias of every layer for the sequence `index` describes, in
        one gather from the transposed table (each layer's slice is then contiguous, as attention takes it)."""
        depth = self.config.depth
        heads = self.relative_position_bias_table.shape[1] // depth  # this rank's, under TP
        by_column = self.relative_position_bias_table.t()  # [depth * heads, rows], layer-major
        return by_column[:, index].view(depth, heads, *index.shape)

    def prepare_for_inference(self) -> None:
        """Gather the bias of each path this head runs, once, where the model now lives and in its dtype
        (runtime.prepare_model calls this after moving the model). It depends on the weights alone; gathering
        it in every forward took 0.75 s of a 2 s VQA forward on a 2-core CPU. Memory: depth x heads x n x n,
        255 MB in bf16 for VLMo-Base's joint path at 480 px."""
        for kind in ("joint",) if self.config.head == "vqa" else ("image", "text"):
            biases = self.position_biases(self.position_index(kind)).detach()
            self.register_buffer(f"{kind}_position_biases", biases, persistent=False)

    def layer_biases(self, kind: str, text_len: int) -> torch.Tensor:
        """[depth, heads, n, n] for this path with text_len text tokens: the prepared biases (else gathered
        now) cut to the text. Text positions count from 0, so a shorter text keeps the leading rows and
        columns of its part: trimming padding changes no valid token's bias."""
        biases = getattr(self, f"{kind}_position_biases", None)
        if biases is None:
            biases = self.position_biases(self.position_index(kind))
        full = self.config.max_text_len
        if kind == "image" or text_len == full:
            return biases
        if text_len > full:
            raise ValueError(f"VLMo takes at most {full} text tokens, got {text_len}")
        if kind == "text":
            return biases[..., :text_len, :text_len]
        rows = torch.cat([biases[..., :text_len, :], biases[..., full:, :]], dim=-2)
        return torch.cat([rows[..., :text_len], rows[..., full:]], dim=-1)

    # --- the three paths --------------------------------------------------------------------------------
    def encode(self, x, kind: str, key_mask=None, cls_only: bool = False):
        """Run the blocks on 'text' / 'image' tokens with their own expert everywhere, or on 'joint' tokens
        (text expert on the text tokens in front and image expert on the rest, the VL expert from
        vlffn_start_layer_index on). Returns the final-normed tokens; with cls_only the last block computes
        only the first token's row, all the heads read ([B, 1, D])."""
        image_len = self.config.num_image_tokens
        text_len = x.shape[1] - image_len if kind == "joint" else x.shape[1]
        biases = self.layer_biases(kind, text_len)
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        for i, block in enumerate(self.blocks):
            if kind != "joint":
                route = ((kind, x.shape[1]),)
            elif i < self.config.vlffn_start_layer_index:
                route = (("text", text_len), ("image", image_len))
            else:
                route = (("vl", text_len + image_len),)
            if cls_only and i == len(self.blocks) - 1:  # the first token, of the route's first expert
                x = block(x, ((route[0][0], 1),), mask, biases[i][..., :1, :], queries=x[:, :1])
            else:
                x = block(x, route, mask, biases[i])
        return self.norm(x)

    def joint_features(self, image, text_ids, text_masks=None, cls_only: bool = False):
        """Text [B, T] (T <= max_text_len) then image tokens through the joint path. text_masks None: every
        text token is valid, and attention takes the bias alone (no [B, heads, n, n] bias + mask tensor)."""
        text = self.embed_text(text_ids)
        image_tokens = self.embed_image(image)
        key_mask = None if text_masks is None else torch.cat(
            [text_masks, text_masks.new_ones(text_masks.shape[0], image_tokens.shape[1])], dim=1)
        return self.encode(torch.cat([text, image_tokens], dim=1), "joint", key_mask, cls_only)

    def joint_cls_feats(self, image, text_ids, text_masks=None):
        """The pooled image-text representation: tanh(pooler(joint class token))."""
        return torch.tanh(self.pooler(self.joint_features(image, text_ids, text_masks, cls_only=True)[:, 0]))

    def vqa_logits(self, image, text_ids, text_masks=None):
        return self.vqa_head(self.joint_cls_feats(image, text_ids, text_masks))

    def image_embeds(self, image):
        """L2-normalised ITC embedding of the image class token (image expert in every block)."""
        return F.normalize(self.image_proj(self.encode(self.embed_image(image), "image", cls_only=True)[:, 0]), dim=-1)

    def text_embeds(self, text_ids, text_masks):
        """L2-normalised ITC embedding of the text class token (text expert in every block)."""
        features = self.encode(self.embed_text(text_ids), "text", text_masks, cls_only=True)
        return F.normalize(self.text_proj(features[:, 0]), dim=-1)

    def forward(self, image, text_ids, text_masks=None):
        """VQA answer logits [B, num_answers] (the VQA head); retrieval models use image_embeds/text_embeds."""
        return self.vqa_logits(image, text_ids, text_masks)


def vlmo_base_vqa() -> VLMoConfig:
    return VLMoConfig(image_size=480, head="vqa")


def vlmo_base_coco_retrieval() -> VLMoConfig:
    return VLMoConfig(image_size=384, head="retrieval")


def vlmo_large(image_size: int, head: str) -> VLMoConfig:
    """vlmo_large_patch16: 24 blocks of width 1024 with 16 heads, the VL expert in the last three."""
    return VLMoConfig(image_size=image_size, embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, vlffn_start_layer_index=21,
                      head=head)
