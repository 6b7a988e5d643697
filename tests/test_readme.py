"""The README's examples run as written, as a user runs them: saved as a script and run by a new Python
process from a directory outside the checkout (the installed package, not the source tree, is what it finds)."""
import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_python_block(section: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"### {section}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def run_script(tmp_path, code: str) -> subprocess.CompletedProcess:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_from_python_example_runs_as_a_script_outside_the_repository_and_is_honest_about_random_weights(tmp_path):
    code = readme_python_block("From Python")
    assert "bert_tokenizer" in code and "encode_padded" in code  # it shows tokenisation
    done = run_script(tmp_path, code)
    assert done.returncode == 0, done.stderr
    assert "RandomWeightsWarning" in done.stderr and "RANDOM weights" in done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2  # one line a sentence
    # What it prints is a probability, and random weights' are near 0.5, as its comment says: no "right" label.
    probabilities = [float(re.search(r"\b[01]\.\d+\b", line).group()) for line in lines]
    assert all(abs(p - 0.5) < 0.1 for p in probabilities), probabilities


# ---- every command block of the README and the manual ---------------------------------------------------------

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUR_PACKAGES = ("eval", "npu_models", "weights_tools")


class Parsed(Exception):
    """Raised in place of running a command once its flags parsed."""


def shell_commands(text: str) -> list[str]:
    """Each command of the ```bash blocks (continuations joined, `&&`, `;` and pipes split) and each `$ ` line of
    plain blocks."""
    commands = []
    for language, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if language == "bash":
            lines = body.replace("\\\n", " ").splitlines()
        elif language == "":
            lines = [line[2:] for line in body.splitlines() if line.startswith("$ ")]
        else:
            continue
        for line in lines:
            tokens = shlex.split(line, comments=True)
            command = []
            for token in tokens + [";"]:
                if token in ("&&", ";", "|", "||"):
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(token)
    return commands


def our_module_call(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(module, argv) of `python -m M ...` or `torchrun ... -m M ...` for one of our modules; None otherwise."""
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    if not tokens or tokens[0] not in ("python", "python3", "torchrun") or "-m" not in tokens:
        return None
    at = tokens.index("-m")
    module = tokens[at + 1]
    return (module, tokens[at + 2:]) if module.split(".")[0] in OUR_PACKAGES else None


def documented_calls() -> list[tuple[str, str, list[str]]]:
    return [(path.relative_to(ROOT).as_posix(), *call) for path in DOCUMENTS
            for call in map(our_module_call, shell_commands(path.read_text(encoding="utf-8"))) if call]


def command_main(module: str):
    import importlib
    imported = importlib.import_module(module)
    return imported.main if hasattr(imported, "main") else importlib.import_module(module + ".cli").main


def test_the_manual_has_its_pages_and_the_readme_is_a_front_page():
    names = {path.name for path in DOCUMENTS}
    assert {"commands.md", "ascend.md", "int8.md", "parallelism.md", "performance.md", "adding-a-model.md",
            "files-and-formats.md"} <= names
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_every_relative_link_of_the_readme_and_the_manual_exists():
    broken = []
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.name}: {target}")
    assert broken == []


def test_every_documented_command_parses_with_its_own_parser(monkeypatch, capsys):
    """A flag renamed or removed in code but not in the manual (or a typo in the manual) fails here: every
    `python -m` / `torchrun -m` line of ours in README.md and docs/ goes through its command's argparse parser,
    stopped before any work."""
    calls = documented_calls()
    modules = {module for _, module, _ in calls}
    assert {"eval.sst2", "eval.imagenet", "eval.vqa", "eval.retrieval", "eval.bench", "npu_models.doctor",
            "weights_tools.quantize", "weights_tools.verify", "weights_tools.shard", "weights_tools.convert",
            "weights_tools.compile"} <= modules
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    refused = []
    for document, module, argv in calls:
        try:
            command_main(module)(argv)
        except Parsed:
            continue
        except SystemExit:
            refused.append(f"{document}: python -m {module} {' '.join(argv)}\n  {capsys.readouterr().err.strip()}")
    assert refused == [], "\n".join(refused)


def test_every_python_block_of_the_manual_is_valid_python():
    for path in DOCUMENTS:
        for block in re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            compile(block, str(path), "exec")


def test_the_check_sees_a_flag_the_parser_does_not_know(monkeypatch, capsys):
    text = "```bash\npython -m eval.sst2 --checkpoint ckpt --no-such-flag \\\n    --data x && pip install y\n```\n"
    calls = [call for call in map(our_module_call, shell_commands(text)) if call]
    assert calls == [("eval.sst2", ["--checkpoint", "ckpt", "--no-such-flag", "--data", "x"])]
    with pytest.raises(SystemExit):
        command_main("eval.sst2")(calls[0][1])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
