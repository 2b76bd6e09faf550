"""Quantization for minigpt2: number formats, fake-quant with a straight-through estimator, QAFT, packed export,
size report, and an int8 CPU decode path.

Design choice: a fake-quant layer is a subclass of the layer it replaces (`FakeQuantLinear` is an `nn.Linear`,
as torchao's fake-quantized linear is, `FakeQuantEmbedding` an `nn.Embedding`, `FakeQuantLayerNorm` an
`nn.LayerNorm`) holding its `QuantConfig`, not a wrapper around it. It takes over the original layer's
parameters, so a fake-quantized GPT2 has exactly the plain state-dict keys (no `.base.`): saving, loading,
resuming and packed export need no unwrapping or key rewriting, and an optimizer built earlier keeps its tensors.
LoRA still wraps a fake-quant linear from outside (QLoRA style); that is a real wrapper, with peft's `.base` keys.
"""

from .config import DEFAULT_GROUP_SIZE, PRECISIONS, QuantConfig
from .export import export_packed, load_packed, pack_model, size_report
from .fake import FakeQuantEmbedding, FakeQuantLayerNorm, FakeQuantLinear
from .formats import dequantize, fake_quantize, fake_quantize_activations, pack_int4, quantize, unpack_int4
from .qaft import apply_precision, bake, ptq, quantize_model, remove_fake_quant, set_quant_enabled

__all__ = ["DEFAULT_GROUP_SIZE", "PRECISIONS", "QuantConfig", "FakeQuantLinear", "FakeQuantEmbedding",
           "FakeQuantLayerNorm", "quantize", "dequantize", "fake_quantize", "fake_quantize_activations", "pack_int4",
           "unpack_int4", "quantize_model", "ptq", "bake", "remove_fake_quant", "apply_precision", "set_quant_enabled",
           "export_packed", "load_packed", "pack_model", "size_report"]
