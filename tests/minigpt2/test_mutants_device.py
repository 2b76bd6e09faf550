"""`minigpt2.device`: which device a setting names and each refusal's whole line, the autocast dtype per mode and
device (CUDA faked as torch reports it), native bf16 read from a /proc/cpuinfo written by hand and oneDNN's cap,
the autocast context, AdamW's kernel, the process-group backend and the usable cores."""

from __future__ import annotations

import os

import pytest
import torch

from minigpt2 import device as dev
from minigpt2.errors import FieldError


@pytest.fixture(autouse=True)
def no_isa_cap(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA as torch reports it on a machine with `count` GPUs; `native` says whether they run bf16 natively."""
    state = {"native": True, "count": 2, "asked": []}

    def is_bf16_supported(including_emulation: bool = True) -> bool:  # torch's signature and default
        state["asked"].append(including_emulation)
        return state["native"] or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state["count"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return state


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def never(*args, **kwargs):
        raise AssertionError("asked about bf16 on a machine without CUDA")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", never)


# ------------------------------------------------------------------------------------------ the constants

def test_the_modes_flags_and_caps_as_documented():
    assert dev.AUTOCAST_MODES == ("auto", "bf16", "off")
    assert dev.CPU_BF16_FLAGS == {"avx512_bf16", "amx_bf16", "bf16"}
    assert dev.ONEDNN_CAPS_WITHOUT_BF16 == {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


# ------------------------------------------------------------------------------------------ native bf16 on CPU

X86 = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme sse2 avx2 avx512f {extra}\n"
       "vmx flags\t: vnmi preemption_timer {vmx}\nbugs\t\t: spectre_v1\n\nprocessor\t: 1\n")


@pytest.mark.parametrize("extra, native", [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("bf16", True),
                                           ("avx512bw avx512_vnni", False), ("avx512_bf16x", False), ("", False)])
def test_each_bf16_flag_alone_is_native(tmp_path, extra, native):
    (tmp_path / "cpuinfo").write_text(X86.format(extra=extra, vmx=""))
    assert dev.cpu_native_bf16(tmp_path / "cpuinfo") is native
    assert dev.cpu_native_bf16(str(tmp_path / "cpuinfo")) is native  # a str path too


def test_only_the_flags_and_features_lines_are_read(tmp_path):
    (tmp_path / "cpuinfo").write_text(X86.format(extra="", vmx="avx512_bf16"))  # "vmx flags" is another line
    assert dev.cpu_native_bf16(tmp_path / "cpuinfo") is False
    (tmp_path / "cpuinfo").write_text("model name\t: bf16 avx512_bf16\nFeatures\t: fp asimd\n")
    assert dev.cpu_native_bf16(tmp_path / "cpuinfo") is False
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16 i8mm\n")
    assert dev.cpu_native_bf16(tmp_path / "cpuinfo") is True


def test_the_default_is_this_machines_proc_cpuinfo():
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert dev.cpu_native_bf16() is False
        return
    flags = set()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            flags |= set(line.split(":", 1)[1].split())
    assert dev.cpu_native_bf16() is bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def test_a_folder_for_cpuinfo_is_no(tmp_path):
    assert dev.cpu_native_bf16(tmp_path) is False  # IsADirectoryError, an OSError


@pytest.mark.parametrize("onednn, dnnl, native", [
    (" avx2 ", None, False),  # spaces and case do not matter
    ("", "AVX512_CORE", False),  # an empty ONEDNN_MAX_CPU_ISA leaves DNNL_MAX_CPU_ISA in force
    ("AVX512_CORE_BF16", "AVX2", True),  # ONEDNN_MAX_CPU_ISA first
    ("AVX2_VNNI", None, False), ("AVX", None, False), ("SSE41", None, False),
    (None, "avx512_core_amx", True),
])
def test_the_onednn_cap_variables(tmp_path, monkeypatch, onednn, dnnl, native):
    (tmp_path / "cpuinfo").write_text(X86.format(extra="avx512_bf16", vmx=""))
    for name, value in (("ONEDNN_MAX_CPU_ISA", onednn), ("DNNL_MAX_CPU_ISA", dnnl)):
        if value is not None:
            monkeypatch.setenv(name, value)
    assert dev.cpu_native_bf16(tmp_path / "cpuinfo") is native


# ------------------------------------------------------------------------------------------ CUDA's bf16

def test_cuda_bf16_asks_torch_without_emulation(fake_cuda):
    assert dev.cuda_bf16() is True and fake_cuda["asked"] == [False]
    fake_cuda["native"] = False  # a V100 or T4: only emulated
    assert dev.cuda_bf16() is False


def test_cuda_bf16_is_no_without_cuda(no_cuda):
    assert dev.cuda_bf16() is False


# ------------------------------------------------------------------------------------------ the autocast dtype

CPU_LINE = ("autocast bf16: expected a device that runs bf16 natively: this CPU has no native bf16 (no "
            "avx512_bf16/amx_bf16/bf16 flag in /proc/cpuinfo, or ONEDNN_MAX_CPU_ISA caps it below AVX512_CORE_BF16), "
            "so bf16 would be emulated and slower than fp32; use off")


def test_every_mode_on_cpu(monkeypatch):
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: False)
    assert dev.autocast_dtype("off", "cpu") is None and dev.autocast_dtype("auto", "cpu") is None
    with pytest.raises(dev.AutocastUnavailable) as e:
        dev.autocast_dtype("bf16", torch.device("cpu"))
    assert str(e.value) == CPU_LINE and isinstance(e.value, FieldError) and e.value.field == "autocast"
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: True)
    assert dev.autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert dev.autocast_dtype("auto", "cpu") is None  # fp32 on CPU even with bf16 instructions


@pytest.mark.parametrize("mode", ["fp16", "BF16", "", "on"])
def test_an_unknown_mode_is_one_line(mode):
    with pytest.raises(dev.AutocastUnavailable) as e:
        dev.autocast_dtype(mode, "cpu")
    assert str(e.value) == f"autocast {mode!r}: expected one of auto, bf16, off"


def test_every_mode_on_cuda(fake_cuda):
    assert dev.autocast_dtype("auto", "cuda:1") is torch.bfloat16
    assert dev.autocast_dtype("bf16", "cuda") is torch.bfloat16
    assert dev.autocast_dtype("off", "cuda") is None
    fake_cuda["native"] = False
    assert dev.autocast_dtype("auto", "cuda") is None
    assert dev.autocast_dtype("off", "cuda") is None
    with pytest.raises(dev.AutocastUnavailable) as e:
        dev.autocast_dtype("bf16", "cuda")
    assert str(e.value) == ("autocast bf16: expected a device that runs bf16 natively: this CUDA device has no bf16 "
                            "support; use off")


def test_another_device_type_has_no_bf16_autocast(fake_cuda, monkeypatch):
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: True)  # whatever the CPU and CUDA say
    assert dev.autocast_dtype("auto", "meta") is None and dev.autocast_dtype("off", "meta") is None
    with pytest.raises(dev.AutocastUnavailable) as e:
        dev.autocast_dtype("bf16", "meta")
    assert str(e.value) == ("autocast bf16: expected a device that runs bf16 natively: bf16 autocast is not "
                            "supported here on meta; use off")


# ------------------------------------------------------------------------------------------ the context


def test_the_autocast_context_for_each_dtype():
    off = dev.autocast("cpu", None)
    assert off.device == "cpu" and not off._enabled
    on = dev.autocast(torch.device("cpu"), torch.bfloat16)
    assert on.device == "cpu" and on._enabled and on.fast_dtype is torch.bfloat16
    x = torch.randn(2, 3)
    with dev.autocast("cpu", torch.bfloat16):
        assert (x @ x.t()).dtype is torch.bfloat16
    with dev.autocast("cpu", None):
        assert (x @ x.t()).dtype is torch.float32
    with dev.autocast("cpu", torch.float16):
        assert (x @ x.t()).dtype is torch.float16


def test_autocast_for_a_mode(monkeypatch, fake_cuda):
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: True)
    ctx = dev.autocast_for("bf16", "cpu")
    assert ctx.device == "cpu" and ctx._enabled and ctx.fast_dtype is torch.bfloat16
    assert not dev.autocast_for("off", "cpu")._enabled and not dev.autocast_for("auto", "cpu")._enabled
    ctx = dev.autocast_for("auto", "cuda:1")
    assert ctx.device == "cuda" and ctx._enabled and ctx.fast_dtype is torch.bfloat16


@pytest.mark.parametrize("name, fused, backend", [("cpu", False, "gloo"), ("cuda", True, "nccl"),
                                                  ("cuda:1", True, "nccl"), (torch.device("cuda", 0), True, "nccl"),
                                                  ("meta", False, "gloo")])
def test_adamw_kernel_and_process_group_backend(name, fused, backend):
    assert dev.fused_adamw(name) is fused and dev.distributed_backend(name) == backend


# ------------------------------------------------------------------------------------------ the device setting


def test_the_devices_of_a_machine_without_cuda(no_cuda):
    assert dev.parse_device("auto") == torch.device("cpu")
    assert dev.parse_device("cpu") == torch.device("cpu")
    with pytest.raises(FieldError) as e:
        dev.parse_device("cuda")
    assert str(e.value) == "device cuda: expected a device this machine has: it has no CUDA device (use cpu or auto)"
    with pytest.raises(FieldError) as e:
        dev.parse_device("cuda:0")
    assert str(e.value) == "device cuda:0: expected a device this machine has: it has no CUDA device (use cpu or auto)"


@pytest.mark.parametrize("name", ["gpu", "meta", "mps", "cuda:x", "", "CPU"])
def test_a_name_that_is_no_setting_is_one_line(no_cuda, name):
    with pytest.raises(FieldError) as e:
        dev.parse_device(name)
    assert str(e.value) == f"device {name}: expected auto, cpu, cuda or cuda:N"
    assert e.value.field == "device" and e.value.value == name


def test_the_devices_of_a_machine_with_two_gpus(fake_cuda):
    assert dev.parse_device("auto") == torch.device("cuda")
    assert dev.parse_device("cuda") == torch.device("cuda")
    assert dev.parse_device("cuda:0") == torch.device("cuda", 0)
    assert dev.parse_device("cuda:1") == torch.device("cuda", 1)
    assert dev.parse_device("cpu") == torch.device("cpu")
    with pytest.raises(FieldError) as e:
        dev.parse_device("cuda:2")
    assert str(e.value) == "device cuda:2: expected one of the 2 CUDA device(s) here"
    fake_cuda["count"] = 1
    with pytest.raises(FieldError) as e:
        dev.parse_device("cuda:1")
    assert str(e.value) == "device cuda:1: expected one of the 1 CUDA device(s) here"


def test_cpu_count_is_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert dev.cpu_count() == 3
    monkeypatch.delattr(os, "sched_getaffinity")  # not Linux
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert dev.cpu_count() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undeterminable
    assert dev.cpu_count() == 1
