"""One paragraph for a malformed entry of a dataset file, whichever reader finds it."""
from pathlib import Path

from npu_models.errors import UserError


def required(entry, name: str, path: Path, where: str):
    """entry[name], or an error naming the file, the entry (`where`, e.g. "entry 3") and the missing key."""
    if not isinstance(entry, dict) or name not in entry:
        raise UserError(f"{path}: {where} has no '{name}' ({str(entry)[:80]}); the file is not in the expected "
                        "format or is damaged: fetch it again.")
    return entry[name]
