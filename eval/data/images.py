"""Image decoding in DataLoader workers, shared by every image evaluation."""
import torch
from PIL import Image, UnidentifiedImageError

from npu_models.transforms import ImageTransform, load_rgb


class ImageDataset(torch.utils.data.Dataset):
    """Decodes and transforms in DataLoader workers; an unreadable image yields None and its error."""

    def __init__(self, paths: list, transform: ImageTransform):
        self.paths, self.transform = paths, transform
        self._pipeline = None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, position):
        if self._pipeline is None:
            self._pipeline = self.transform.build()
        try:
            return position, self._pipeline(load_rgb(self.paths[position])), None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as err:
            return position, None, f"{type(err).__name__}: {err}"


def collate(items):
    """(positions, stacked pixels or None, [(position, error)]) for a batch that may hold failures."""
    good = [(position, pixels) for position, pixels, _ in items if pixels is not None]
    failed = [(position, error) for position, _, error in items if error is not None]
    pixels = torch.stack([p for _, p in good]) if good else None
    return [position for position, _ in good], pixels, failed
