"""The formats `tuneforge export` writes and each one's default tensor type.

    tuneforge export --adapter runs/demo --format ollama --output exported/demo

The verb itself is tuneforge/commands/export.py; `export()` in tuneforge/export/__init__.py reads these.
"""

FORMATS = ("hf", "gguf", "ollama")
DEFAULT_DTYPE = {"hf": "f32", "gguf": "f16", "ollama": "q8_0"}
