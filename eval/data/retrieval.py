"""COCO Karpathy retrieval splits: Karpathy's `dataset_coco.json` or BLIP's `coco_karpathy_<split>.json`."""
from dataclasses import dataclass, field
from pathlib import Path

from eval.data.fields import required
from npu_models.checkpoints.io import read_json
from npu_models.errors import UserError


@dataclass
class RetrievalSplit:
    image_paths: list[Path]
    texts: list[str]
    text_to_image: list[int]                                   # the image row of each caption
    image_to_texts: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        self.image_to_texts = [[] for _ in self.image_paths]
        for text, image in enumerate(self.text_to_image):
            self.image_to_texts[image].append(text)


def caption_list(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def read_retrieval(root, split: str = "test") -> RetrievalSplit:
    """Images in file order, every caption kept, captions numbered image by image (as both references do)."""
    root = Path(root)
    karpathy, per_split = root / "dataset_coco.json", root / f"coco_karpathy_{split}.json"  # per_split: BLIP's files
    if per_split.is_file():
        entries = read_json(per_split)
        if not isinstance(entries, list):
            raise UserError(f"{per_split} must hold a list of {{\"image\", \"caption\"}} entries.")
        records = [(root / required(e, "image", per_split, f"entry {n}"), caption_list(required(e, "caption", per_split, f"entry {n}")))
                   for n, e in enumerate(entries)]
    elif karpathy.is_file():
        images = read_json(karpathy).get("images", [])
        records = [(root / e.get("filepath", "") / required(e, "filename", karpathy, f"image {n}"),
                    [required(s, "raw", karpathy, f"image {n}") for s in required(e, "sentences", karpathy, f"image {n}")])
                   for n, e in enumerate(images) if e.get("split") == split]
    else:
        raise UserError(f"no retrieval annotations in {root}: expected coco_karpathy_{split}.json (BLIP) or "
                        "dataset_coco.json (Karpathy's split file) beside the val2014/ images.")
    if not records:
        raise UserError(f"the {split} split in {root} has no images.")
    texts, text_to_image = [], []
    for row, (_, captions) in enumerate(records):
        if not captions:
            raise UserError(f"image {records[row][0].name} has no captions in the {split} split.")
        texts += captions
        text_to_image += [row] * len(captions)
    return RetrievalSplit([path for path, _ in records], texts, text_to_image)
