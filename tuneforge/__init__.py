"""tuneforge: fine-tune language models on your own data.

    tuneforge train --data train.jsonl --output runs/demo
"""

from tuneforge.errors import UserError

__version__ = "0.2.0"
__all__ = ["UserError", "__version__"]
