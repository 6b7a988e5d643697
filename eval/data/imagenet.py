"""ImageNet-1k validation in the layouts users have: the flat ILSVRC2012 release (ILSVRC2012_val_*.JPEG +
the devkit's ground-truth file and meta.mat) or one folder per class named by WordNet id.

Labels are the index of the class's WordNet id in the sorted list of the 1000 ids, as the models use;
the devkit numbers classes differently (ILSVRC2012_ID), so its ids are mapped through meta.mat.
"""
import re
from dataclasses import dataclass
from pathlib import Path

from npu_models.errors import UserError

# The 1000 ImageNet-1k WordNet ids in sorted order (the same list timm ships as imagenet_synsets.txt).
WNIDS_FILE = Path(__file__).parent / "imagenet_wnids.txt"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
VAL_IMAGE = re.compile(r"^ILSVRC2012_val_(\d{8})\.(JPEG|jpeg|jpg|JPG|png)$")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


@dataclass
class ImageExample:
    file: str            # path relative to the dataset root: the key of a prediction
    path: Path
    label: int | None


def sorted_wnids() -> list[str]:
    return WNIDS_FILE.read_text().split()


def find_devkit_file(root: Path, name: str) -> Path | None:
    """The devkit files may sit beside the images, in the devkit tree, or one level up."""
    for directory in (root, root / "data", root / "ILSVRC2012_devkit_t12" / "data", root.parent,
                      root.parent / "ILSVRC2012_devkit_t12" / "data"):
        if (directory / name).is_file():
            return directory / name
    return None


def ilsvrc_id_to_index(meta_path: Path) -> dict[int, int]:
    """ILSVRC2012_ID (1..1000) -> index of its wnid among the sorted 1000 leaf wnids, from devkit meta.mat."""
    try:
        import scipy.io
    except ImportError:
        raise UserError("reading the devkit's meta.mat needs scipy: `pip install scipy`.") from None
    try:
        synsets = scipy.io.loadmat(str(meta_path), squeeze_me=True)["synsets"]
        leaves = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["ILSVRC2012_ID"]) <= 1000}
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise UserError(f"{meta_path} is not the ILSVRC2012 devkit meta.mat (a 'synsets' struct with "
                        f"ILSVRC2012_ID and WNID fields): {err}.") from None
    if len(leaves) != 1000:
        raise UserError(f"{meta_path} lists {len(leaves)} classes with ILSVRC2012_ID <= 1000, not 1000.")
    order = {wnid: index for index, wnid in enumerate(sorted(leaves.values()))}
    return {ilsvrc_id: order[wnid] for ilsvrc_id, wnid in leaves.items()}


def read_flat_layout(root: Path, images: list[Path]) -> list[ImageExample]:
    ground_truth = find_devkit_file(root, GROUND_TRUTH)
    labels = None
    if ground_truth is not None:
        meta = find_devkit_file(root, META)
        if meta is None:
            raise UserError(f"found {ground_truth} but no {META} to map its ILSVRC2012 ids onto class indices; "
                            f"put the devkit's data/{META} beside it.")
        to_index = ilsvrc_id_to_index(meta)
        try:
            labels = [to_index[int(line)] for line in ground_truth.read_text().split()]
        except (ValueError, KeyError) as err:
            raise UserError(f"{ground_truth}: {err} is not an ILSVRC2012_ID between 1 and 1000.") from None
    examples = []
    for path in images:
        number = int(VAL_IMAGE.match(path.name).group(1))
        if labels is not None and number > len(labels):
            raise UserError(f"{path.name} has no line in {ground_truth} ({len(labels)} lines).")
        examples.append(ImageExample(path.name, path, labels[number - 1] if labels is not None else None))
    return examples


def read_folder_layout(root: Path, folders: list[Path]) -> list[ImageExample]:
    index = {wnid: i for i, wnid in enumerate(sorted_wnids())}
    unknown = [f.name for f in folders if f.name not in index]
    if unknown:
        raise UserError(f"{root}: class folders must be named by ImageNet-1k WordNet id (n01440764, ...); "
                        f"these are not: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}.")
    return [ImageExample(f"{folder.name}/{path.name}", path, index[folder.name])
            for folder in folders for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]


def read_imagenet(root) -> list[ImageExample]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"ImageNet directory {root} does not exist; pass --data with the validation images.")
    flat = sorted(p for p in root.iterdir() if VAL_IMAGE.match(p.name))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and re.match(r"^n\d{8}$", p.name))
    examples = read_flat_layout(root, flat) if flat else read_folder_layout(root, folders) if folders else []
    if not examples:
        raise UserError(f"no ImageNet images in {root}: expected ILSVRC2012_val_*.JPEG files (with the devkit's "
                        f"{GROUND_TRUTH} and {META}) or one folder per class named by WordNet id.")
    return examples
