"""The README's examples run as written, as a user runs them: saved as a script and run by a new Python
process from a directory outside the checkout (the installed package, not the source tree, is what it finds)."""
import os
import re
import subprocess
import sys
from pathlib import Path

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
