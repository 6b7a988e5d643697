"""Builds ImageNet validation directories in the real ILSVRC2012 layout, for tests and the bundled sample."""
import random
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from eval.data.imagenet import GROUND_TRUTH, META, sorted_wnids


def ilsvrc_ids(seed: int = 0) -> dict[str, int]:
    """wnid -> ILSVRC2012_ID: a fixed shuffle, as in the devkit the ids do not follow wnid order."""
    wnids = sorted_wnids()
    ids = list(range(1, 1001))
    random.Random(seed).shuffle(ids)
    return dict(zip(wnids, ids))


def write_meta_mat(path: Path, wnid_to_id: dict[str, int]) -> None:
    """The devkit's data/meta.mat: a 'synsets' struct array; ids above 1000 are non-leaf synsets."""
    rows = [(ilsvrc_id, wnid, f"class {wnid}", 0) for wnid, ilsvrc_id in wnid_to_id.items()]
    rows += [(1001, "n00001740", "entity", 3), (1002, "n00002684", "physical object", 2)]
    synsets = np.zeros((len(rows), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                                              ("num_children", "O")])
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    scipy.io.savemat(str(path), {"synsets": synsets})


def synthetic_image(seed: int, size=(120, 90)) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        draw.ellipse([x0, y0, x0 + rng.randrange(10, 60), y0 + rng.randrange(10, 60)],
                     fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def make_flat_layout(root: Path, labels: list[int], devkit_dir: Path | None = None) -> list[Path]:
    """ILSVRC2012_val_0000000N.JPEG images, ground truth and meta.mat; labels are sorted-wnid indices."""
    root.mkdir(parents=True, exist_ok=True)
    devkit_dir = devkit_dir or root
    devkit_dir.mkdir(parents=True, exist_ok=True)
    wnid_to_id = ilsvrc_ids()
    wnids = sorted_wnids()
    write_meta_mat(devkit_dir / META, wnid_to_id)
    (devkit_dir / GROUND_TRUTH).write_text("".join(f"{wnid_to_id[wnids[y]]}\n" for y in labels))
    paths = []
    for number, _ in enumerate(labels, start=1):
        path = root / f"ILSVRC2012_val_{number:08d}.JPEG"
        synthetic_image(number).save(path, quality=90)
        paths.append(path)
    return paths
