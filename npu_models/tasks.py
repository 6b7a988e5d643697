"""What the eval commands call on a model, declared once in its spec (ModelSpec.task).

The eval commands read datasets, batch, time and score; everything that differs between models (which
inputs the model takes, how its outputs become answers or rankings) is one of these adapters. Each names
the eval command that runs it (`name`). Text preprocessing is the config's `text_input`, image
preprocessing its `transform`.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class TextClassification:
    """Sentence classification (eval.sst2): model(token ids [B, S], attention mask, token type ids) -> logits
    [B, num_labels], labels named by config.labels."""
    name: ClassVar[str] = "sst2"


@dataclass(frozen=True)
class ImageClassification:
    """Image classification (eval.imagenet): model(pixels [B, 3, S, S]) -> logits [B, num_classes] over the
    ImageNet-1k classes in the devkit's order."""
    name: ClassVar[str] = "imagenet"


@dataclass(frozen=True)
class VQATask:
    """Visual question answering: answer logits [B, num_answers] over the model's answer list.

    visual: "pixels" (images through config.transform, one tensor) or "regions" (detected boxes: region
        features [B, R, F], box coordinates [B, R, 4], box mask [B, R]).
    answer_logits(model, visual tensors, token ids, attention mask) -> logits; `model` may be compiled. The
        mask is None when no question of the batch is padded (attention then runs without one).
    multi_label: the head was trained with a multi-label loss: every answer whose logit passes 0.5 is a
        positive, and the reference scores by the answer's label weight (precision/recall/F1 over answers).
    answers_in_checkpoint: reads the answer list a checkpoint carries (else --answers / answer2label.txt).
    """
    name: ClassVar[str] = "vqa"
    visual: str
    answer_logits: Callable[..., Tensor]
    multi_label: bool = False
    answers_in_checkpoint: Callable[[Path], list[str]] | None = None


@dataclass(frozen=True)
class RetrievalTask:
    """Image-text retrieval: L2-normalised embeddings ranked by similarity, optionally re-ranked.

    encode_images(model, pixels) -> (embeddings [B, E], memory or None): memory is what `rerank` needs
        of each image (e.g. BLIP's image tokens for its ITM head).
    encode_texts(model, token ids, attention mask) -> embeddings [B, E].
    rerank(model, sims, memory, ids, masks, direction, rows, k) -> (candidate indices [R, k], scores [R, k])
        for query rows of sims ("i2t": images, "t2i": texts); None ranks by similarity alone.
    rerank_k(config): how many candidates each query re-ranks by default.
    unselected_score: what the reference's score matrix holds outside each query's re-ranked candidates.
    """
    name: ClassVar[str] = "retrieval"
    encode_images: Callable[..., tuple[Tensor, Tensor | None]]
    encode_texts: Callable[..., Tensor]
    rerank: Callable[..., tuple[Tensor, Tensor]] | None = None
    rerank_k: Callable[[object], int] | None = None
    unselected_score: float = float("-inf")


Task = TextClassification | ImageClassification | VQATask | RetrievalTask  # one per eval command


def score_matrix(ranked: tuple[Tensor, Tensor], shape, fill: float) -> Tensor:
    """Re-ranked (indices [R, k], scores [R, k]) as a [R, N] score matrix, `fill` outside the candidates."""
    indices, scores = ranked
    matrix = torch.full(shape, fill, dtype=scores.dtype, device=scores.device)
    return matrix.scatter_(1, indices, scores)
