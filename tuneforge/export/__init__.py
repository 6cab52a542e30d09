"""Export a fine-tune for serving: `tuneforge export --adapter DIR --format hf|gguf|ollama --output OUT`.

    merge.py               LoRA -> merged fp32 model (PEFT safe merge), saved as a plain HF folder
    gguf_writer.py         a merged model (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3) -> one GGUF file
    gguf_vocab.py          its tokenizer as GGUF metadata, pre-tokenizer identified as llama.cpp does
    llama_cpp_quantize.py  K-quants through llama.cpp's own quantizer (needs llama-cpp-python)
    ollama.py              the GGUF + a Modelfile (stop tokens, SYSTEM, TEMPLATE where Ollama needs one)
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import UserError

FORMATS = ("hf", "gguf", "ollama")
DEFAULT_DTYPE = {"hf": "f32", "gguf": "f16", "ollama": "q8_0"}  # each format's default tensor type
# The K-quants (last three) are made by llama.cpp's quantizer (llama_cpp_quantize.py).
GGUF_DTYPES = ("f16", "bf16", "q8_0", "f32", "q4_k_m", "q5_k_m", "q6_k")
DTYPES = GGUF_DTYPES  # the CLI's --dtype choices; the hf format takes f32, f16 and bf16 of them


def export(adapter: str | None, fmt: str, output: str | Path, *, dtype: str | None = None,
           model: str | None = None) -> list[Path]:
    """Write `adapter` (merged into its base) in `fmt`; return the files written."""
    from tuneforge.export.gguf_writer import write_gguf
    from tuneforge.export.llama_cpp_quantize import K_QUANTS, require_quantizer
    from tuneforge.export.merge import HF_DTYPES, merged_model, save_hf

    if fmt not in DEFAULT_DTYPE:
        raise UserError(f"--format {fmt}: use hf, gguf or ollama")
    if adapter is None and model is None:
        raise UserError("export needs --adapter (or --model to export a base model as is)")
    dtype = dtype or DEFAULT_DTYPE[fmt]
    allowed = HF_DTYPES if fmt == "hf" else GGUF_DTYPES
    if dtype not in allowed:  # fail before spending minutes on loading and merging
        raise UserError(f"--dtype {dtype} is not available for --format {fmt}: use one of {', '.join(allowed)}")
    if dtype in K_QUANTS:
        require_quantizer(dtype)
    output = Path(output).expanduser()
    merged, tokenizer = merged_model(adapter, model)
    if fmt == "hf":
        return save_hf(merged, tokenizer, output, dtype)
    name = Path(adapter or model).name
    if fmt == "gguf" and output.suffix == ".gguf":
        return [write_gguf(merged, tokenizer, output, dtype, name=name)]
    if fmt == "ollama":
        from tuneforge.export.ollama import modelfile_text

        modelfile = modelfile_text(tokenizer)
        gguf_path = write_gguf(merged, tokenizer, output / "model.gguf", dtype, name=name)
        (output / "Modelfile").write_text(modelfile)
        return [gguf_path, output / "Modelfile"]
    return [write_gguf(merged, tokenizer, output / "model.gguf", dtype, name=name)]


__all__ = ["DEFAULT_DTYPE", "DTYPES", "FORMATS", "GGUF_DTYPES", "export"]
