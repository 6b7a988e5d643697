"""Image preprocessing specs shared by the vision models: decode -> resize -> (crop) -> normalise."""
import math
from dataclasses import dataclass

import torch
from PIL import Image


@dataclass(frozen=True)
class ImageTransform:
    """size: the model's input side. crop_pct: resize the shorter side to floor(size / crop_pct) and
    center-crop (timm's eval transform); None squashes the whole image to size x size, no crop."""
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float | None = None
    interpolation: str = "bicubic"

    def build(self):
        """A callable PIL image -> normalised float tensor [3, size, size]. torchvision is imported here, when an
        image is about to be transformed: a text-only command never pays for it (nor for torch._dynamo, which
        torchvision.ops brings in)."""
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        interpolation = InterpolationMode(self.interpolation)
        if self.crop_pct is None:
            resize = [transforms.Resize((self.size, self.size), interpolation=interpolation)]
        else:
            resize = [transforms.Resize(math.floor(self.size / self.crop_pct), interpolation=interpolation),
                      transforms.CenterCrop(self.size)]
        return transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])


def load_rgb(path) -> Image.Image:
    """Decode an image file to RGB (greyscale, CMYK and palette images included)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def preprocess(path, spec: ImageTransform) -> torch.Tensor:
    return spec.build()(load_rgb(path))
