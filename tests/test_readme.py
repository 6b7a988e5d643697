"""The README's examples run as written."""
import contextlib
import io
import re
from pathlib import Path

import pytest

import npu_models

ROOT = Path(__file__).resolve().parent.parent


def readme_python_block(section: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"### {section}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_from_python_example_runs_verbatim_from_any_directory_and_is_honest_about_random_weights(monkeypatch,
                                                                                                 tmp_path):
    code = readme_python_block("From Python")
    assert "bert_tokenizer" in code and "encode_padded" in code  # it shows tokenisation
    monkeypatch.chdir(tmp_path)  # not the repository: bundled samples are found from the package
    printed = io.StringIO()
    with pytest.warns(npu_models.RandomWeightsWarning, match="RANDOM weights"), contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = printed.getvalue().strip().splitlines()
    assert len(lines) == 2  # one line a sentence
    # What it prints is a probability, and random weights' are near 0.5, as its comment says: no "right" label.
    probabilities = [float(re.search(r"\b[01]\.\d+\b", line).group()) for line in lines]
    assert all(abs(p - 0.5) < 0.1 for p in probabilities), probabilities
