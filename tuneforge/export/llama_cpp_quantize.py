"""K-quants (q4_k_m, q5_k_m, q6_k) made by llama.cpp's own quantizer, through llama-cpp-python.

    tuneforge export --adapter runs/demo --format gguf --dtype q4_k_m --output exported/demo

The `gguf` package writes f32/f16/bf16/q8_0 but has no K-quant encoder, and the "_M" mixes are a
llama.cpp policy (which tensors get more bits) rather than a format, so they are left to llama.cpp:
write_gguf writes an f32 file and `llama_model_quantize` turns it into the requested type, the same
call the `llama-quantize` tool makes. Rows that do not fill whole 256-value K blocks (tiny models) get
llama.cpp's own fallback type for that tensor.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from tuneforge.errors import UserError

K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")
FTYPE_NAMES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def require_quantizer(dtype: str):
    """The llama_cpp module, or a UserError saying how to get it; called before any slow work."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            f"--dtype {dtype} is made by llama.cpp's quantizer, and llama-cpp-python is not installed: "
            "run scripts/install_llama_cpp.sh (it builds it once, CPU only), or export --dtype f16 and run "
            f"llama.cpp's `llama-quantize model.gguf out.gguf {dtype.upper()}`"
        ) from None
    if not hasattr(llama_cpp, "llama_model_quantize"):
        raise UserError(f"--dtype {dtype}: this llama-cpp-python ({llama_cpp.__version__}) has no llama_model_quantize")
    return llama_cpp


def quantize_with_llama_cpp(source: Path, target: Path, dtype: str) -> None:
    llama_cpp = require_quantizer(dtype)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its per-tensor log is noise for a user
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPE_NAMES[dtype])
    params.nthread = min(4, os.cpu_count() or 1)
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise UserError(f"llama.cpp's quantizer failed (status {status}) turning {source.name} into {dtype}")
