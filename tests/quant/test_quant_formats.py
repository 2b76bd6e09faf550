"""Number formats and the straight-through estimator: exact grids, error bounds, packing, the clamp boundary."""

import pytest
import torch

from quant import QuantConfig
from quant.formats import (FP8_DTYPES, INT4_MAX, INT8_MAX, check_group_size, dequantize, fake_quantize,
                           fake_quantize_activations, pack_int4, qmax, quantize, unpack_int4)
from quant.ste import fake_quant_ste


@pytest.fixture
def w() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g) * 0.02
    w[3, 5] = 0.5  # an outlier: its row's scale must grow, other rows must not care
    w[7] = 0.0  # an all-zero row must not divide by zero
    return w


def test_int8_grid_and_error_bound(w):
    q, scale = quantize(w, "int8")
    assert q.dtype == torch.int8 and scale.shape == (48, 1)
    assert int(q.min()) >= -INT8_MAX and int(q.max()) <= INT8_MAX
    assert (q.abs().amax(dim=1)[torch.arange(48) != 7] == 127).all()  # absmax lands on the edge of each row
    err = (dequantize(q, scale) - w).abs()
    assert (err <= scale / 2 + 1e-12).all(), f"max error/scale = {(err / scale).max():.4f}"
    assert (dequantize(q, scale)[7] == 0).all()


@pytest.mark.parametrize("group_size", [16, 32, 64])
def test_int4_grid_groups_and_error_bound(w, group_size):
    q, scale = quantize(w, "int4", group_size)
    assert scale.shape == (48, 64 // group_size)
    assert int(q.min()) >= -INT4_MAX and int(q.max()) <= INT4_MAX  # symmetric [-7, 7]; -8 is never used
    per_elem_scale = scale.repeat_interleave(group_size, dim=1)
    err = (dequantize(q, scale) - w).abs()
    assert (err <= per_elem_scale / 2 + 1e-12).all()
    # the outlier only coarsens its own group
    q_ref, s_ref = quantize(w[:, :group_size].clone(), "int4", group_size)
    assert torch.equal(s_ref, scale[:, :1])


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_values_are_representable_and_saturate_at_max(w, fmt):
    q, scale = quantize(w, fmt)
    assert q.dtype == FP8_DTYPES[fmt]
    y = q.float()
    assert torch.equal(y.to(FP8_DTYPES[fmt]).float(), y)  # exactly on the float8 grid
    assert torch.isfinite(y).all() and y.abs().max() == qmax(fmt)
    # relative error of a float format: half an ulp, 2^-(mantissa bits + 1)
    mantissa = {"fp8_e4m3": 3, "fp8_e5m2": 2}[fmt]
    rel = ((dequantize(q, scale) - w).abs() / w.abs().clamp(min=1e-3))[w.abs() > 1e-3 * 448]
    assert rel.max() <= 2.0 ** -(mantissa + 1) + 1e-6
    # values beyond the scaled max saturate instead of overflowing to NaN/inf
    huge = fake_quant_ste(torch.tensor([1e6, -1e6]), torch.tensor(1.0), -qmax(fmt), qmax(fmt), FP8_DTYPES[fmt])
    assert huge.tolist() == [qmax(fmt), -qmax(fmt)]


@pytest.mark.parametrize("fmt,gs", [("int8", 64), ("int4", 16), ("fp8_e4m3", 64), ("fp8_e5m2", 64)])
def test_fake_quantize_equals_dequantize_of_quantize_bitwise(w, fmt, gs):
    assert torch.equal(fake_quantize(w, fmt, gs), dequantize(*quantize(w, fmt, gs)))


def test_int4_pack_roundtrip_two_per_byte():
    q = torch.randint(-7, 8, (5, 12), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 6)
    assert torch.equal(unpack_int4(packed), q)
    assert int(packed[0, 0]) == (int(q[0, 0]) + 8) | ((int(q[0, 1]) + 8) << 4)
    with pytest.raises(ValueError, match="odd"):
        pack_int4(q[:, :3])
    with pytest.raises(ValueError, match=r"\[-7, 7\]"):
        pack_int4(torch.full((1, 2), -8, dtype=torch.int8))


def test_group_size_that_does_not_divide_raises():
    with pytest.raises(ValueError, match="group_size=48 does not divide in_features=64"):
        check_group_size(64, "int4", 48, where="h.0.mlp.c_fc")
    check_group_size(64, "int8", 48)  # per-channel formats have no groups


def test_ste_gradient_identity_inside_zero_outside_boundary_included():
    scale = torch.tensor(0.5)
    # x / scale = -7.5 (rounds to -8: clipped), -7 (lo boundary), -1.2, 0, 3.4, 7 (hi boundary),
    # 7.0000005 (float noise above the edge: still rounds to 7), 7.5 (rounds to 8: clipped), 9
    x = torch.tensor([-3.75, -3.5, -0.6, 0.0, 1.7, 3.5, 3.50000025, 3.75, 4.5], requires_grad=True)
    y = fake_quant_ste(x, scale, -7, 7)
    assert y.tolist() == [-3.5, -3.5, -0.5, 0.0, 1.5, 3.5, 3.5, 3.5, 3.5]
    y.backward(torch.arange(1.0, 10.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 0.0]


def test_fake_quantize_passes_gradient_to_weights(w):
    w = w.clone().requires_grad_(True)
    (fake_quantize(w, "int4", 16) * torch.arange(64.0)).sum().backward()
    # absmax scales clip nothing, so the gradient is the identity everywhere, the absmax weights included
    assert torch.equal(w.grad, torch.arange(64.0).expand(48, 64))


def test_activation_fake_quant_per_token_127_steps():
    x = torch.tensor([[-1.0, 0.0, 0.3, 2.0], [0.1, 0.2, 0.3, 0.4]])
    y = fake_quantize_activations(x)
    for row, out in zip(x, y):
        lo, hi = min(row.min().item(), 0.0), max(row.max().item(), 0.0)
        scale = (hi - lo) / 127
        assert ((out - row).abs() <= scale / 2 + 1e-7).all()
        assert torch.allclose(out / scale, torch.round(out / scale), atol=1e-4)  # on the token's own grid
    assert y[0, 1] == 0.0  # zero is exact (the zero point)


def test_quant_config_validation_messages():
    with pytest.raises(ValueError, match=r"weight 'int3'"):
        QuantConfig(weight="int3")
    with pytest.raises(ValueError, match="even integer"):
        QuantConfig(weight="int4", group_size=7)
    with pytest.raises(ValueError, match="simulates nothing"):
        QuantConfig(weight=None)
    with pytest.raises(ValueError, match="not a fake-quant format"):
        QuantConfig.for_precision("bf16")
    with pytest.raises(ValueError, match=r"unknown quantization key\(s\) \['bits'\]"):
        QuantConfig.from_dict({"bits": 4}, source="run/config.json")
    assert QuantConfig.for_precision("fp8").weight == "fp8_e4m3"
    cfg = QuantConfig(weight="int4", group_size=32, activations=True)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
