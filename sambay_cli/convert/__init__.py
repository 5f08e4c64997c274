"""`sambay convert`: ArchScale training checkpoints (.pth) ⇄ Hugging Face SambaY / phi4flash directories."""

from .convert import convert_archscale_to_hf, convert_hf_to_archscale, run_convert

__all__ = ["convert_archscale_to_hf", "convert_hf_to_archscale", "run_convert"]
