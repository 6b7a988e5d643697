"""The library speaks Python, the command line speaks flags: one message, two spellings of its options."""
import ast
import re
from pathlib import Path

import pytest

import npu_models
from npu_models.errors import UserError, arg
from tests.conftest import BERT_FIXTURE
from tests.test_eval_errors import run

ROOT = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def test_an_option_reads_as_the_python_argument_or_as_the_flag():
    err = UserError(f"use {arg('tp', 2)} with {arg('config_file', 'c.json')}, {arg('checkpoint')} or "
                    f"{arg('no_peer', True)}.")
    assert str(err) == "use tp=2 with config_file='c.json', checkpoint=... or no_peer=True."
    assert err.command_line_message() == "use --tp 2 with --config c.json, --checkpoint or --no-peer."


@pytest.mark.filterwarnings("ignore::npu_models.RandomWeightsWarning")
def test_load_model_names_python_arguments(tmp_path, no_accelerators):
    missing = tmp_path / "missing.json"
    with pytest.raises(UserError) as info:
        npu_models.load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu", config_file=missing)
    assert f"config_file='{missing}' does not exist" in str(info.value)
    with pytest.raises(UserError) as info:
        npu_models.load_model("bert", device="cuda")
    assert "choose device='cpu'" in str(info.value)
    with pytest.raises(UserError) as info:
        npu_models.load_model("bert", device="cpu", tp=0)
    assert "tp=0 is no tensor-parallel degree" in str(info.value)
    assert "--" not in str(info.value)


def test_the_same_mistakes_at_the_command_line_name_the_flags(tmp_path, capsys, no_accelerators):
    missing = tmp_path / "missing.json"
    err = run(capsys, "sst2", ["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--config", str(missing)])
    assert f"--config {missing} does not exist" in err and "config_file" not in err
    err = run(capsys, "sst2", [], device="cuda")
    assert "choose --device cpu" in err
    err = run(capsys, "sst2", ["--tp", "0"])
    assert "--tp 0 is no tensor-parallel degree" in err


def flags_in_user_error_messages(source: str) -> list[str]:
    """The string literals of every UserError(...) call in `source` that spell a command-line flag."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "UserError":
            found += [part.value for part in ast.walk(node) if isinstance(part, ast.Constant)
                      and isinstance(part.value, str) and FLAG.search(part.value)]
    return found


def test_the_detector_sees_a_flag_in_any_part_of_a_message():
    assert flags_in_user_error_messages('raise UserError(f"{x} needs a vocabulary: pass " f"--vocab {y}.")')
    assert flags_in_user_error_messages('raise errors.UserError("use --tp 2")')
    assert not flags_in_user_error_messages('raise UserError(f"pass {arg(\'vocab_file\')} -- or not")')


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for package in ("npu_models", "npu_kernels")
                                        for p in (ROOT / package).rglob("*.py")))
def test_library_errors_spell_options_through_arg(path):
    """A flag in a library message would tell a Python caller to pass a command-line option: options go
    through errors.arg, a launch command through parallel.torchrun_command."""
    assert flags_in_user_error_messages((ROOT / path).read_text(encoding="utf-8")) == []
