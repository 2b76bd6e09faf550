"""Quantization for minigpt2: number formats, fake-quant with a straight-through estimator, QAFT, packed export,
size report, and an int8 CPU decode path. See README "Quantization"."""

from .config import DEFAULT_GROUP_SIZE, PRECISIONS, QuantConfig
from .export import export_packed, load_packed, pack_model, size_report
from .fake import FakeQuantEmbedding, FakeQuantLinear
from .formats import dequantize, fake_quantize, fake_quantize_activations, pack_int4, quantize, unpack_int4
from .qaft import apply_precision, bake, ptq, quantize_model, set_quant_enabled, unwrap

__all__ = ["DEFAULT_GROUP_SIZE", "PRECISIONS", "QuantConfig", "FakeQuantLinear", "FakeQuantEmbedding",
           "quantize", "dequantize", "fake_quantize", "fake_quantize_activations", "pack_int4", "unpack_int4",
           "quantize_model", "ptq", "bake", "unwrap", "apply_precision", "set_quant_enabled",
           "export_packed", "load_packed", "pack_model", "size_report"]
