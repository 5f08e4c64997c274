"""Weight-only quantization (`sambay quantize`): own int8 / int4 formats and bitsandbytes nf4 / fp4 / LLM.int8,
loading with packed weights, fused Triton W8A16 / W4A16 kernels and a quality report. See docs/quantize.md."""
