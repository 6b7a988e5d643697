"""What a bug report needs to know about this machine: versions, the chip, the device count, and the
load-time settings in force. Read for `python -m npu_models.doctor`."""
import os
import platform
from pathlib import Path

import torch

from npu_models.runtime.device import import_torch_npu, npu_chip_name
from npu_models.runtime.settings import device_settings
from npu_models.errors import UserError

# set_env.sh exports ASCEND_TOOLKIT_HOME (and ASCEND_HOME_PATH); the toolkit's version file sits in it, or under
# the default install prefix when the variables are not set.
CANN_HOMES = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH")
CANN_DEFAULT_HOME = "/usr/local/Ascend/ascend-toolkit/latest"


def cann_version() -> str | None:
    """The CANN toolkit version from its version.cfg / version.info, or None when none is found."""
    homes = [os.environ[name] for name in CANN_HOMES if os.environ.get(name)] + [CANN_DEFAULT_HOME]
    for home in homes:
        for name in ("version.cfg", "version.info", "compiler/version.info"):
            path = Path(home) / name
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    if "version" in line.lower() and "=" in line:
                        return f"{line.split('=', 1)[1].strip().strip('[]')} ({path})"
    return None


def torch_npu_version() -> str | None:
    try:
        return getattr(import_torch_npu(), "__version__", "unknown")
    except UserError:
        return None


def chip(device: torch.device) -> tuple[str, int]:
    """(chip name, number of devices of that type)."""
    if device.type == "npu":
        return npu_chip_name(device), torch.npu.device_count()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device), torch.cuda.device_count()
    return platform.processor() or platform.machine(), 1


def environment(device: torch.device) -> dict:
    name, count = chip(device)
    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_npu": torch_npu_version(), "cann": cann_version(), "device": str(device), "chip": name,
            "device_count": count, "cpu_threads": torch.get_num_threads(),
            "settings": device_settings(device)}
