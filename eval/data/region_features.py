"""Cached region features for ViLBERT: one `<image file stem>.safetensors` per image holding box_features
f32 [n, 1024] and box_coordinates f32 [n, 4] (x1, y1, x2, y2 in resized-image pixels), n <= 100, with
image_id, height and width in the metadata."""
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

MAX_BOXES = 100


def feature_path(features_dir: Path, image_path: Path) -> Path:
    return features_dir / f"{image_path.stem}.safetensors"


class RegionFeatureDataset(torch.utils.data.Dataset):
    """Boxes padded to MAX_BOXES (features and coordinates 0, mask False); a missing or unreadable file
    yields None and its error."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, position):
        path = self.paths[position]
        try:
            with safe_open(str(path), "pt") as handle:
                features, coordinates = handle.get_tensor("box_features"), handle.get_tensor("box_coordinates")
        except (FileNotFoundError, SafetensorError, OSError, KeyError) as err:
            return position, None, f"{path}: {type(err).__name__}: {err}"
        return position, pad_regions(features, coordinates), None


def pad_regions(features: torch.Tensor, coordinates: torch.Tensor):
    """(features [MAX_BOXES, F], coordinates [MAX_BOXES, 4], mask [MAX_BOXES]) in fp32, zero/False beyond the boxes."""
    boxes = min(len(features), MAX_BOXES)
    padded = (torch.zeros(MAX_BOXES, features.shape[1]), torch.zeros(MAX_BOXES, 4), torch.zeros(MAX_BOXES, dtype=torch.bool))
    padded[0][:boxes], padded[1][:boxes], padded[2][:boxes] = features[:boxes].float(), coordinates[:boxes].float(), True
    return padded


def collate_regions(items):
    good = [(position, boxes) for position, boxes, _ in items if boxes is not None]
    failed = [(position, error) for position, _, error in items if error is not None]
    if not good:
        return [], None, failed
    stacked = tuple(torch.stack([boxes[i] for _, boxes in good]) for i in range(3))
    return [position for position, _ in good], stacked, failed


# --- extraction: the reference's image pipeline feeding torchvision's Faster R-CNN (ResNet-50-FPN, COCO) ----------
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SHORT_SIDE, LONG_SIDE_CAP, SIZE_DIVISOR = 800, 1333, 32
SCORE_THRESHOLD, NMS_IOU, MIN_BOX_SIDE = 0.05, 0.5, 0.01


def load_detector_image(path: Path) -> torch.Tensor:
    """The reference loader: read_image (uint8 CHW), then detector_image."""
    from torchvision.io import ImageReadMode, read_image

    return detector_image(read_image(str(path), ImageReadMode.UNCHANGED))


def decode_detector_image(data: bytes) -> torch.Tensor:
    """An image file's bytes (a server's request) as load_detector_image reads the file."""
    from torchvision.io import ImageReadMode, decode_image

    return detector_image(decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED))


def detector_image(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 CHW / 256, normalised, then resized so the short side is 800 (long side at most 1333), bilinear. A
    greyscale image broadcasts to three channels at normalisation."""
    image = pixels.float() / 256
    image = (image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    height, width = image.shape[-2:]
    scale = min(SHORT_SIDE / min(height, width), LONG_SIDE_CAP / max(height, width))
    return torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="bilinear", align_corners=False,
                                           recompute_scale_factor=True)[0]


class RegionFeatureExtractor:
    """Faster R-CNN detections with the 1024-d box-head feature of the proposal each one came from."""

    def __init__(self, detector_weights: Path | None, device: torch.device, detector=None):
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        from npu_models.checkpoints.io import read_state_dict

        if detector is None:
            detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
            detector.load_state_dict(read_state_dict(detector_weights))
        self.detector = detector.eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from torchvision.models.detection.image_list import ImageList
        from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

        sizes = [tuple(image.shape[-2:]) for image in images]
        height = -(-max(h for h, _ in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
        width = -(-max(w for _, w in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
        weight = next(self.detector.parameters())
        batch = torch.zeros(len(images), 3, height, width, device=self.device, dtype=weight.dtype)
        for i, image in enumerate(images):
            batch[i, :, : image.shape[1], : image.shape[2]] = image.to(self.device)
        detector = self.detector
        features = detector.backbone(batch)
        proposals, _ = detector.rpn(ImageList(batch, sizes), features)
        heads = detector.roi_heads
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, sizes))  # fc7, after ReLU
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes = heads.box_coder.decode(box_regression, proposals)                     # [P, classes, 4]
        scores = class_logits.softmax(-1)
        results, start = [], 0
        for proposal_boxes, size in zip(proposals, sizes):
            count = len(proposal_boxes)
            image_boxes = clip_boxes_to_image(boxes[start:start + count], size)[:, 1:]  # background dropped
            image_scores = scores[start:start + count, 1:]
            classes = torch.arange(1, image_scores.shape[1] + 1, device=self.device).expand_as(image_scores)
            proposal = torch.arange(count, device=self.device)[:, None].expand_as(image_scores)
            image_boxes, image_scores = image_boxes.reshape(-1, 4), image_scores.reshape(-1)
            classes, proposal = classes.reshape(-1), proposal.reshape(-1)
            keep = (image_scores > SCORE_THRESHOLD).nonzero().flatten()
            small = remove_small_boxes(image_boxes[keep], MIN_BOX_SIDE)
            keep = keep[small]
            keep = keep[batched_nms(image_boxes[keep], image_scores[keep], classes[keep], NMS_IOU)][:MAX_BOXES]
            results.append({"box_coordinates": image_boxes[keep].cpu(), "scores": image_scores[keep].cpu(),
                            "labels": classes[keep].cpu(),
                            "box_features": box_features[start:start + count][proposal[keep]].cpu(),
                            "height": size[0], "width": size[1]})
            start += count
        return results


def write_features(path: Path, result: dict, image_id: int) -> None:
    """One image's features, written atomically so an interrupted extraction leaves no half file."""
    import os

    from safetensors.torch import save_file

    staging = path.with_name(f".{path.name}.partial")
    save_file({"box_features": result["box_features"].float().contiguous(),
               "box_coordinates": result["box_coordinates"].float().contiguous()}, str(staging),
              metadata={"image_id": str(image_id), "height": str(result["height"]), "width": str(result["width"])})
    os.replace(staging, path)


def extract_missing_features(image_paths: list[Path], features_dir: Path, detector_weights: Path,
                             device: torch.device, batch_size: int = 2) -> list[dict]:
    """Compute and cache the features of every image that has none yet; returns the unreadable images."""
    import sys

    from tqdm import tqdm

    features_dir.mkdir(parents=True, exist_ok=True)
    todo = sorted({p for p in image_paths if not feature_path(features_dir, p).is_file()})
    if not todo:
        return []
    extractor = RegionFeatureExtractor(detector_weights, device)
    failed = []
    for start in tqdm(range(0, len(todo), batch_size), desc="region features", unit="batch", disable=None):
        images, paths = [], []
        for path in todo[start:start + batch_size]:
            try:
                images.append(load_detector_image(path))
                paths.append(path)
            except (RuntimeError, OSError, ValueError) as err:
                failed.append({"image": str(path), "error": f"{type(err).__name__}: {err}"})
                print(f"skipped unreadable image {path}: {err}", file=sys.stderr)
        for path, result in zip(paths, extractor(images) if images else []):
            image_id = int(path.stem.rsplit("_", 1)[-1]) if path.stem.rsplit("_", 1)[-1].isdigit() else -1
            write_features(feature_path(features_dir, path), result, image_id)
    return failed
