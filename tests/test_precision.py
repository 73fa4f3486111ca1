"""--amp-dtype: bf16 only on GPUs with native bf16 (compute capability 8.0+), fp16 with GradScaler
on older ones, fp32 on CPUs; decided from the capability, so no GPU is needed to test it."""

from __future__ import annotations

import logging

import pytest
import torch

from raymc import precision as amp
from raymc.config import build_config
from raymc.precision import Precision

GPU = torch.device("cuda", 0)


def on_a_gpu_of(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    """Pretend to be on a GPU of `capability` whose torch counts emulated bf16 as supported."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.mark.parametrize(
    "capability, dtype",
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
    ids=["V100", "T4", "A100", "H100"],
)
def test_auto_takes_bf16_only_where_the_gpu_has_it_natively(monkeypatch, capability, dtype):
    on_a_gpu_of(monkeypatch, capability)
    chosen = Precision.choose(GPU, build_config({"amp_dtype": "auto"}))
    assert chosen.dtype == dtype
    assert chosen.needs_scaler == (dtype == torch.float16)  # fp16 trains with GradScaler


def test_cpu_runs_in_fp32_whatever_is_asked():
    for amp_dtype in ("auto", "bf16", "fp16"):
        chosen = Precision.choose(torch.device("cpu"), build_config({"amp_dtype": amp_dtype}))
        assert chosen.dtype is None and not chosen.needs_scaler
    assert amp.autocast_dtype("auto", None) is None


def test_explicit_bf16_on_an_old_gpu_is_honoured_with_a_warning(monkeypatch, caplog):
    on_a_gpu_of(monkeypatch, (7, 5))
    with caplog.at_level(logging.WARNING, logger="raymc.precision"):
        chosen = Precision.choose(GPU, build_config({"amp_dtype": "bf16"}))
    assert chosen.dtype == torch.bfloat16
    assert "compute capability 7.5" in caplog.text and "--amp-dtype fp16" in caplog.text


def test_explicit_choices_on_a_new_gpu_need_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="raymc.precision"):
        assert amp.autocast_dtype("bf16", (8, 0)) == torch.bfloat16
        assert amp.autocast_dtype("fp16", (9, 0)) == torch.float16
    assert not caplog.text


def test_no_mixed_precision_is_fp32_on_a_gpu_too(monkeypatch):
    on_a_gpu_of(monkeypatch, (9, 0))
    assert Precision.choose(GPU, build_config({"mixed_precision": False})).dtype is None
