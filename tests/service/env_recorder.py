"""python env_recorder.py LOG COMMAND...: append the devices this process was given to LOG as a JSON line
({"command", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"}), then become COMMAND. Wraps the trainer and the
inference process in tests of GPU placement."""

import json
import os
import sys

log, command = sys.argv[1], sys.argv[2:]
with open(log, "a") as handle:
    handle.write(
        json.dumps(
            {
                "command": os.path.basename(command[1]),  # the script python runs
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER"),
            }
        )
        + "\n"
    )
os.execv(command[0], command)
