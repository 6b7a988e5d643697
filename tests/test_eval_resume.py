"""Every eval command's resume refuses a predictions file that another run wrote: a changed checkpoint, another
dtype, or (BLIP retrieval) another --k-test would mix two runs' predictions in one file. Each refusal is one
paragraph naming the option that differs; the same run resumes."""
import os
import shutil

import pytest

from eval import imagenet, retrieval, sst2, vqa
from tests.conftest import FIXTURES
from tests.imagenet_layout import make_flat_layout

REFERENCE = FIXTURES / "reference"


def case(name: str, tmp_path):
    """(command, argv of a small run whose checkpoint is a copy in tmp_path, the copy's weights file, changes to
    try besides the dtype: (flags, the difference the refusal names))."""
    copy = tmp_path / "checkpoint"
    if name == "sst2":
        shutil.copytree(REFERENCE / "bert" / "checkpoint", copy)
        return sst2, ["--checkpoint", str(copy), "--limit", "4"], copy / "pytorch_model.bin", []
    if name == "imagenet":
        make_flat_layout(tmp_path / "val", [0, 1, 2])
        vit = tmp_path / "vit"
        vit.mkdir()
        shutil.copy(REFERENCE / "vit" / "checkpoint_timm.safetensors", vit / "model.safetensors")
        shutil.copy(REFERENCE / "vit" / "config.json", vit / "config.json")
        return imagenet, ["--checkpoint", str(vit / "model.safetensors"), "--data", str(tmp_path / "val"),
                          "--num-workers", "0"], vit / "model.safetensors", []
    if name == "vqa":
        data = tmp_path / "vqa"
        shutil.copytree(REFERENCE / "vqa-vlmo", data)
        return vqa, ["--model", "vlmo", "--checkpoint", str(data / "vqa_checkpoint.pt"), "--data", str(data),
                     "--limit", "6", "--num-workers", "0"], data / "vqa_checkpoint.pt", []
    data = tmp_path / "coco"
    shutil.copytree(REFERENCE / "retrieval-blip", data)
    return retrieval, ["--model", "blip", "--checkpoint", str(data / "checkpoint.pth"), "--data", str(data),
                       "--num-workers", "0", "--k-test", "2"], data / "checkpoint.pth", [
        (["--k-test", "3"], "k_test: 2 then, 3 now")]


@pytest.mark.parametrize("name", ["sst2", "imagenet", "vqa", "retrieval"])
def test_a_predictions_file_of_another_run_is_refused(tmp_path, capsys, name):
    command, argv, checkpoint, extra = case(name, tmp_path)
    predictions = tmp_path / "p.jsonl"
    argv = argv + ["--device", "cpu", "--predictions", str(predictions)]
    assert command.main(argv + ["--output", str(tmp_path / "first.json")]) in (0, None)
    written = predictions.read_text()
    assert written
    changes = [(["--dtype", "bf16"], "dtype: 'fp32' then, 'bf16' now"), *extra]
    for change, difference in changes:
        before = argv[:]
        for flag in change[::2]:  # the changed option replaces the run's own
            if flag in before:
                at = before.index(flag)
                del before[at:at + 2]
        with pytest.raises(SystemExit) as info:
            command.main(before + change)
        err = capsys.readouterr().err
        assert info.value.code == 2 and "was written by another run" in err and difference in err, err
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # the checkpoint replaced in place
    with pytest.raises(SystemExit) as info:
        command.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "was written by another run" in err and "checkpoint:" in err, err
    assert predictions.read_text() == written  # nothing mixed in
