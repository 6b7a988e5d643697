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
        boxes = min(len(features), MAX_BOXES)
        padded = (torch.zeros(MAX_BOXES, features.shape[1]), torch.zeros(MAX_BOXES, 4),
                  torch.zeros(MAX_BOXES, dtype=torch.bool))
        padded[0][:boxes], padded[1][:boxes], padded[2][:boxes] = features[:boxes].float(), coordinates[:boxes].float(), True
        return position, padded, None


def collate_regions(items):
    good = [(position, boxes) for position, boxes, _ in items if boxes is not None]
    failed = [(position, error) for position, _, error in items if error is not None]
    if not good:
        return [], None, failed
    stacked = tuple(torch.stack([boxes[i] for _, boxes in good]) for i in range(3))
    return [position for position, _ in good], stacked, failed
