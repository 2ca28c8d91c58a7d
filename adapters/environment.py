"""Where a measurement ran: the device's name and the versions its numbers depend on.

Evaluation records it in ``metrics.json`` and every benchmark in its result file, so a number is
never read without the machine that produced it.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone


def environment(device: str) -> dict:
    """The name of ``device`` (where the measured run ran: cpu, cuda, cuda:N) and the versions that
    the numbers depend on."""
    import peft
    import torch
    import transformers

    if device.startswith("cuda"):
        device = torch.cuda.get_device_name(torch.device(device))
    else:
        device = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return {"device": device, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["adapterlab", *sys.argv[1:]]) if sys.argv else ""}
