"""The served model and what its requests need beside it: the tokenizer's vocabulary, the image transform, the
answer list; found where the eval commands find them (beside or inside the checkpoint, or given), and for the
demo (no checkpoint) in the bundled samples, with random weights said loudly."""
import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import npu_models
from eval.data.region_features import RegionFeatureExtractor
from eval.data.vqa import read_answer2label
from eval.samples import sample_path
from npu_models import parallel, registry
from npu_models.errors import UserError, arg
from npu_models.quantization import scheme_of
from npu_models.serve.adapters import TextEncoder
from npu_models.tokenizer import check_vocab_fits

@dataclass
class Served:
    """A loaded model and its request-side pieces."""
    name: str
    model: torch.nn.Module
    task: object
    device: torch.device
    dtype: torch.dtype
    graph: bool
    max_batch_size: int
    encoder: TextEncoder | None
    transform_spec: object | None
    answers: list[str] | None
    checkpoint: Path | None
    tp: int = 1
    extractor: object | None = None  # region-feature models: the detector eval.vqa runs on each image

    def __post_init__(self):
        self.transform = None if self.transform_spec is None else self.transform_spec.build()

    @property
    def quant(self) -> str:
        return scheme_of(self.model)


def beside(checkpoint: Path | None, name: str) -> Path | None:
    """`name` inside a checkpoint directory or beside a checkpoint file."""
    if checkpoint is None:
        return None
    directory = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return directory / name if (directory / name).is_file() else None


def find_answers(entry, checkpoint: Path | None, answers: Path | None) -> list[str] | None:
    if entry.task.name != "vqa":
        return None
    path = answers or beside(checkpoint, "answer2label.txt")
    if path is None and checkpoint is not None and entry.task.answers_in_checkpoint:
        return entry.task.answers_in_checkpoint(checkpoint)
    if path is None and checkpoint is None:
        path = sample_path("vqa", "answer2label.txt")
    if path is None:
        raise UserError(f"no answer2label.txt beside {checkpoint}: pass {arg('answers')} with the answer list made "
                        "for this checkpoint.")
    return read_answer2label(Path(path))


def find_vocab(entry, checkpoint: Path | None, vocab: Path | None) -> Path | None:
    if entry.task.name == "imagenet":
        return None
    found = vocab or beside(checkpoint, "vocab.txt")
    if found is None and checkpoint is None:
        found = sample_path(entry.task.name, "vocab.txt")  # the demo: the sample eval runs on
    if found is None:
        raise UserError(f"no vocab.txt beside {checkpoint}: pass {arg('vocab')} with the vocab.txt the model was "
                        "trained with (bert-base-uncased's for BLIP, VLMo and ViLBERT).")
    return Path(found)


def check_detector(entry, detector_weights) -> bool:
    """Whether the model answers from detected regions (ViLBERT), refused without the detector's weights."""
    if getattr(entry.task, "visual", None) != "regions":
        return False
    if detector_weights is None:
        raise UserError(f"{entry.name} answers from detected regions: pass {arg('detector_weights')} with "
                        "torchvision's COCO Faster R-CNN weights (fasterrcnn_resnet50_fpn_coco-258fb6c6.pth), as "
                        "eval.vqa takes them.")
    return True


def load_served(name: str, checkpoint=None, device: str = "auto", dtype: str | None = None, graph: bool = False,
                tp: int = 1, max_batch_size: int = 32, vocab=None, answers=None, config_file=None,
                compile_cache=None, detector_weights=None) -> Served:
    """The model `name` from `checkpoint` (which decides among a family's tasks: VLMo's VQA or retrieval) with its
    vocabulary and answer list; without a checkpoint, the demo: random weights, the bundled samples' files."""
    checkpoint = None if checkpoint is None else Path(checkpoint)
    entry, config, answer_list = registry.get_entry(name), None, None
    check_detector(entry, detector_weights)  # before the model is read
    if checkpoint is None:
        if parallel.is_main_process():
            print(f"{'=' * 78}\nDEMO SERVER: {entry.name} with RANDOM weights; its answers are meaningless. Pass "
                  f"--checkpoint for a real model.\n{'=' * 78}", file=sys.stderr, flush=True)
        answer_list = find_answers(entry, None, answers)
        if answer_list is not None:  # random weights: one logit per answer of the list
            config = dataclasses.replace(entry.default_config(), num_answers=len(answer_list))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", npu_models.RandomWeightsWarning)  # the banner above said it, louder
        model = npu_models.load_model(name, checkpoint, device, dtype, graph, tp, config=config,
                                      config_file=config_file, compile_cache=compile_cache)
    entry = registry.entry_for_config(entry, model.config)
    if checkpoint is not None:
        answer_list = find_answers(entry, checkpoint, answers)
    vocab_file = find_vocab(entry, checkpoint, vocab)
    config, parameter = model.config, next(model.parameters())
    if answer_list is not None and config.num_answers != len(answer_list):
        raise UserError(f"{checkpoint} predicts {config.num_answers} answers but the answer list has "
                        f"{len(answer_list)}; pass the {arg('answers')} file made for this checkpoint.")
    encoder = None
    if vocab_file is not None:
        check_vocab_fits(vocab_file, model)
        text_input = getattr(config, "text_input", None)
        encoder = (TextEncoder.for_text_input(vocab_file, text_input) if text_input is not None
                   else TextEncoder(vocab_file, config.do_lower_case, config.max_positions))
    extractor = None
    if check_detector(entry, detector_weights):
        extractor = RegionFeatureExtractor(Path(detector_weights), parameter.device)
    return Served(entry.name, model, entry.task, parameter.device, parameter.dtype, graph, max_batch_size, encoder,
                  getattr(config, "transform", None), answer_list, checkpoint, tp, extractor)
