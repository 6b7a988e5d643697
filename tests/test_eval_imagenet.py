import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from eval import imagenet
from eval.data.imagenet import GROUND_TRUTH, read_imagenet, sorted_wnids
from tests.conftest import FIXTURES
from tests.imagenet_layout import ilsvrc_ids, make_flat_layout, synthetic_image

timm = pytest.importorskip("timm")
VIT_FIXTURE = FIXTURES / "reference" / "vit"
CHECKPOINT = VIT_FIXTURE / "checkpoint_timm.safetensors"  # 96 px, 4 heads, 10 classes (config.json beside it)


def timm_ranked_predictions(paths) -> list[list[int]]:
    model = timm.models.vision_transformer.VisionTransformer(img_size=96, patch_size=32, embed_dim=64, depth=3,
                                                             num_heads=4, num_classes=10).eval()
    model.load_state_dict(load_file(str(CHECKPOINT)))
    transform = timm.data.create_transform(input_size=(3, 96, 96), crop_pct=0.9, interpolation="bicubic",
                                           mean=(0.5,) * 3, std=(0.5,) * 3)
    pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model(pixels).argsort(dim=-1, descending=True).tolist()


def relabel(devkit_dir, labels):
    wnid_to_id, wnids = ilsvrc_ids(), sorted_wnids()
    (devkit_dir / GROUND_TRUTH).write_text("".join(f"{wnid_to_id[wnids[y]]}\n" for y in labels))


@pytest.fixture
def imagenet_val(tmp_path):
    """Nine images; labels chosen so that 3 are top-1 hits, 3 more top-5 hits and 3 misses for timm."""
    images, devkit = tmp_path / "val", tmp_path / "ILSVRC2012_devkit_t12" / "data"
    paths = make_flat_layout(images, [0] * 9, devkit_dir=devkit)
    ranked = timm_ranked_predictions(paths)
    labels = [r[[0, 3, 9][i % 3]] for i, r in enumerate(ranked)]
    relabel(devkit, labels)
    return images, ranked, labels


def test_devkit_ids_are_mapped_to_sorted_wnid_indices(imagenet_val):
    images, _, labels = imagenet_val
    assert [e.label for e in read_imagenet(images)] == labels


def test_top1_top5_equal_timm_on_the_flat_layout(tmp_path, imagenet_val):
    images, ranked, labels = imagenet_val
    out = tmp_path / "results.json"
    imagenet.main(["--model", "vit", "--checkpoint", str(CHECKPOINT), "--data", str(images), "--device", "cpu",
                   "--batch-size", "4", "--num-workers", "2", "--output", str(out)])
    results = json.loads(out.read_text())
    assert results["top1"] == sum(r[0] == y for r, y in zip(ranked, labels)) / 9 == 3 / 9
    assert results["top5"] == sum(y in r[:5] for r, y in zip(ranked, labels)) / 9 == 6 / 9
    assert (results["num_examples"], results["image_size"], results["dtype"]) == (9, 96, "fp32")


def test_class_folder_layout(tmp_path):
    wnids = sorted_wnids()
    for index in (3, 7):
        (tmp_path / wnids[index]).mkdir()
        for k in range(2):
            synthetic_image(index * 10 + k).save(tmp_path / wnids[index] / f"img{k}.jpg")
    examples = read_imagenet(tmp_path)
    assert [(e.file, e.label) for e in examples] == [
        (f"{wnids[3]}/img0.jpg", 3), (f"{wnids[3]}/img1.jpg", 3), (f"{wnids[7]}/img0.jpg", 7), (f"{wnids[7]}/img1.jpg", 7)]
    ranked = timm_ranked_predictions([e.path for e in examples])
    out = tmp_path / "r.json"
    imagenet.main(["--checkpoint", str(CHECKPOINT), "--data", str(tmp_path), "--device", "cpu", "--num-workers", "0",
                   "--output", str(out)])
    assert json.loads(out.read_text())["top5"] == sum(e.label in r[:5] for e, r in zip(examples, ranked)) / 4


def test_unreadable_images_are_skipped_and_listed(tmp_path, imagenet_val, capsys):
    images, ranked, labels = imagenet_val
    (images / "ILSVRC2012_val_00000002.JPEG").write_bytes(b"not a jpeg")
    (images / "ILSVRC2012_val_00000005.JPEG").write_bytes((images / "ILSVRC2012_val_00000001.JPEG").read_bytes()[:200])
    out = tmp_path / "r.json"
    imagenet.main(["--checkpoint", str(CHECKPOINT), "--data", str(images), "--device", "cpu", "--batch-size", "4",
                   "--num-workers", "2", "--output", str(out)])
    results = json.loads(out.read_text())
    assert results["num_unreadable"] == 2
    assert [u["file"] for u in results["unreadable"]] == ["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000005.JPEG"]
    kept = [i for i in range(9) if i not in (1, 4)]
    assert results["num_examples"] == 7
    assert results["top1"] == sum(ranked[i][0] == labels[i] for i in kept) / 7
    assert "skipped unreadable image" in capsys.readouterr().err


def test_resume_computes_only_the_missing_images(tmp_path, imagenet_val):
    images, _, _ = imagenet_val
    predictions = tmp_path / "p.jsonl"
    args = ["--checkpoint", str(CHECKPOINT), "--data", str(images), "--device", "cpu", "--batch-size", "2",
            "--num-workers", "0", "--predictions", str(predictions)]
    imagenet.main(args + ["--output", str(tmp_path / "a.json")])
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text("".join(lines[:4]))
    imagenet.main(args + ["--output", str(tmp_path / "b.json")])
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert second["num_computed"] == 5 and (second["top1"], second["top5"]) == (first["top1"], first["top5"])


def test_graph_mode_gives_the_eager_results(tmp_path, imagenet_val, compiled_graphs):
    images, _, _ = imagenet_val
    outputs = {}
    for mode in ("eager", "graph"):
        out = tmp_path / f"{mode}.jsonl"
        imagenet.main(["--checkpoint", str(CHECKPOINT), "--data", str(images), "--device", "cpu", "--batch-size", "4",
                       "--num-workers", "0", "--predictions", str(out)] + (["--graph"] if mode == "graph" else []))
        outputs[mode] = {r["file"]: r for r in map(json.loads, out.read_text().splitlines())}
    for name, eager in outputs["eager"].items():
        assert outputs["graph"][name]["top5"] == eager["top5"]
        assert outputs["graph"][name]["top5_probs"] == pytest.approx(eager["top5_probs"], abs=1e-5)
    assert compiled_graphs() == (1, 0)


@pytest.mark.parametrize("setup, expected", [
    ("missing", "--data {root}/nope does not exist"),
    ("empty", "no ImageNet images in {root}"),
    ("no_meta", "no meta.mat to map its ILSVRC2012 ids"),
    ("bad_folder", "class folders must be named by ImageNet-1k WordNet id"),
])
def test_bad_layouts_are_explained(tmp_path, setup, expected, capsys):
    data = tmp_path
    if setup == "missing":
        data = tmp_path / "nope"
    elif setup == "no_meta":
        synthetic_image(1).save(tmp_path / "ILSVRC2012_val_00000001.JPEG")
        (tmp_path / GROUND_TRUTH).write_text("5\n")
    elif setup == "bad_folder":
        (tmp_path / "n99999999").mkdir()
    with pytest.raises(SystemExit):
        imagenet.main(["--checkpoint", str(CHECKPOINT), "--data", str(data), "--device", "cpu"])
    assert expected.format(root=tmp_path) in capsys.readouterr().err
