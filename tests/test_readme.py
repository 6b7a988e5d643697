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


def test_from_python_example_runs_verbatim_and_warns_about_random_weights(monkeypatch):
    code = readme_python_block("From Python")
    assert "bert_tokenizer" in code and "encode_padded" in code  # it shows tokenisation
    monkeypatch.chdir(ROOT)
    printed = io.StringIO()
    with pytest.warns(npu_models.RandomWeightsWarning, match="RANDOM weights"), contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    labels = eval(printed.getvalue().strip())
    assert len(labels) == 2 and set(labels) <= {"negative", "positive"}
