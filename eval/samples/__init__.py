"""The small datasets bundled with the package (the demo runs, the README's example). They are found beside
this file, so from any working directory and from an installed package alike."""
from pathlib import Path

SAMPLES_DIR = Path(__file__).parent


def sample_path(*parts: str) -> Path:
    """A bundled sample file or directory, e.g. sample_path("sst2", "vocab.txt")."""
    path = SAMPLES_DIR.joinpath(*parts)
    if not path.exists():
        available = ", ".join(sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_dir() and p.name != "__pycache__"))
        raise FileNotFoundError(f"no bundled sample {'/'.join(parts)}; the samples are {available}.")
    return path
