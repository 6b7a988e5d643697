"""SST-2 as GLUE distributes it: a TSV with a header row, columns `sentence` and `label` (test.tsv has
`index` and `sentence` and no labels)."""
from dataclasses import dataclass
from pathlib import Path

from npu_models.errors import UserError


@dataclass
class SST2Example:
    index: int
    sentence: str
    label: int | None


def resolve_sst2_path(path: Path) -> Path:
    """Accept the TSV itself or the GLUE SST-2 directory (dev.tsv inside)."""
    if path.is_dir():
        path = path / "dev.tsv"
    if not path.is_file():
        raise UserError(f"SST-2 file {path} does not exist; pass --data with dev.tsv or the directory holding it.")
    return path


def read_sst2(path: Path) -> list[SST2Example]:
    path = resolve_sst2_path(Path(path))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start}); GLUE's SST-2 files are "
                        "UTF-8: re-save the file as UTF-8.") from None
    if not lines:
        raise UserError(f"{path} is empty; expected a header row 'sentence<TAB>label' and one example per line.")
    header = lines[0].split("\t")
    if "sentence" not in header:
        raise UserError(f"{path}: the header row {header} has no 'sentence' column; "
                        "expected the GLUE SST-2 format 'sentence<TAB>label'.")
    sentence_col, label_col = header.index("sentence"), header.index("label") if "label" in header else None
    examples = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise UserError(f"{path}:{line_number}: expected {len(header)} tab-separated fields, found {len(fields)}.")
        label = None
        if label_col is not None:
            if fields[label_col] not in ("0", "1"):
                raise UserError(f"{path}:{line_number}: label {fields[label_col]!r} is not 0 or 1.")
            label = int(fields[label_col])
        examples.append(SST2Example(len(examples), fields[sentence_col], label))
    if not examples:
        raise UserError(f"{path} has a header but no examples.")
    return examples


# SST-2's dev split: 872 sentences; their lengths run from a couple of words to about 55, around 19 on
# average (the Stanford Sentiment Treebank's sentence length). Used to time padding strategies when the real
# dev.tsv is not at hand; it is a stand-in for the length mix, not for the text.
SST2_DEV_SIZE, SST2_MEAN_WORDS, SST2_MAX_WORDS = 872, 19, 55


def write_length_mix(path: Path, words: list[str], count: int = SST2_DEV_SIZE, seed: int = 0) -> Path:
    """A GLUE-format TSV of `count` sentences of random `words` with SST-2's length mix: word counts drawn
    from a gamma distribution (mean 19, shape 3.5), clipped to 2..55. Labels alternate."""
    import random

    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for i in range(count):
        length = min(SST2_MAX_WORDS, max(2, round(rng.gammavariate(3.5, SST2_MEAN_WORDS / 3.5))))
        lines.append(" ".join(rng.choice(words) for _ in range(length)) + f"\t{i % 2}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
