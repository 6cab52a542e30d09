"""`tuneforge compare` as the worker runs it, without the forgetting measurement: the real comparison on the
job's validation file and the real report, in the seconds an end-to-end test can afford.

The forgetting measurement (several hundred general prompts, minutes on two cores) is tested on its own
(tests/unit/test_forgetting*.py); this stand-in drops the gate options, which need it, and adds --no-forgetting.
"""

import sys

from tuneforge.cli import main

GATES = ("--max-forgetting", "--max-general-drop")
argv, skip = [], False
for item in sys.argv[1:]:
    if skip:
        skip = False
    elif item in GATES:
        skip = True
    else:
        argv.append(item)
sys.exit(main(["compare", *argv, "--no-forgetting", "--latency-samples", "1"]))
