import pytest
import torch
from safetensors import safe_open
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import clip_boxes_to_image

from eval.data.region_features import (RegionFeatureExtractor, extract_missing_features, feature_path,
                                       load_detector_image)
from tests.conftest import FIXTURES
from tests.imagenet_layout import synthetic_image

IMAGE = FIXTURES / "reference" / "vit" / "image.png"


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    with torch.no_grad():  # random class scores are ~1/91, under the 0.05 threshold: make some classes win
        model.roi_heads.box_predictor.cls_score.weight.mul_(30)
    return model


def test_loader_resizes_the_short_side_to_800_capped_at_1333():
    image = load_detector_image(IMAGE)  # 301 x 175 -> the long side hits the cap first
    assert image.shape == (3, 775, 1333)
    assert image.dtype == torch.float32 and image.min() < -1.5  # normalised with ImageNet statistics


def test_detections_and_features_equal_torchvision_components(detector):
    image = load_detector_image(IMAGE)
    ours = RegionFeatureExtractor(None, torch.device("cpu"), detector=detector)([image])[0]
    size = tuple(image.shape[-2:])
    batch = torch.zeros(1, 3, 800, 1344)
    batch[0, :, : size[0], : size[1]] = image
    with torch.no_grad():
        features = detector.backbone(batch)
        proposals, _ = detector.rpn(ImageList(batch, [size]), features)
        reference, _ = detector.roi_heads(features, proposals, [size])
        heads = detector.roi_heads
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, [size]))
        decoded = clip_boxes_to_image(heads.box_coder.decode(heads.box_predictor(box_features)[1], proposals), size)
    reference = reference[0]
    assert 0 < len(reference["boxes"]) <= 100
    torch.testing.assert_close(ours["box_coordinates"], reference["boxes"])
    torch.testing.assert_close(ours["scores"], reference["scores"])
    assert torch.equal(ours["labels"], reference["labels"])
    for box, label, feature in zip(ours["box_coordinates"], ours["labels"], ours["box_features"]):
        proposal = (decoded[:, label] == box).all(dim=1).nonzero()[0, 0]  # the proposal this detection came from
        torch.testing.assert_close(feature, box_features[proposal])
    assert ours["box_features"].shape[1] == 1024 and (ours["box_features"] >= 0).all()  # fc7 after ReLU


def test_features_are_cached_resumably_and_bad_images_skipped(tmp_path, detector, capsys):
    weights = tmp_path / "detector.pth"
    torch.save(detector.state_dict(), weights)
    images = [tmp_path / "COCO_val2014_000000000007.jpg", tmp_path / "COCO_val2014_000000000009.jpg"]
    synthetic_image(7, size=(64, 48)).save(images[0])
    images[1].write_bytes(b"not an image")
    features = tmp_path / "features"
    failed = extract_missing_features(images, features, weights, torch.device("cpu"))
    assert [f["image"] for f in failed] == [str(images[1])] and "skipped unreadable image" in capsys.readouterr().err
    with safe_open(str(feature_path(features, images[0])), "pt") as handle:
        assert handle.metadata() == {"image_id": "7", "height": "800", "width": "1066"}  # floor(64 * 800 / 48)
        assert handle.get_tensor("box_features").shape[1] == 1024
        assert handle.get_tensor("box_coordinates").shape[1] == 4
    written = feature_path(features, images[0]).stat().st_mtime_ns
    extract_missing_features(images[:1], features, weights, torch.device("cpu"))  # nothing left to compute
    assert feature_path(features, images[0]).stat().st_mtime_ns == written
