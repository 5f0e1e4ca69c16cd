"""Training precision (``train.precision``): the dtype of weights and batches, and what runs
in lower precision.

* ``float64``, ``float32``: everything in that dtype;
* ``tf32``: float32, with matmuls and convolutions on TF32 tensor cores (a global switch);
* ``bf16``: float32 weights, the forward pass under bfloat16 autocast (lengths, strain and
  spherical harmonics stay float32 outside it, see :mod:`orbitgraph.model.geometry`; the
  e3nn layers run in float32, :func:`e3nn_inputs_in`).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32, "tf32": torch.float32,
          "bf16": torch.float32}


def set_matmul_precision(precision: str) -> None:
    """``tf32``: allow TF32 in CUDA matmuls and cuDNN (process-wide); the others: nothing."""
    if precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """bf16: autocast to bfloat16 on ``device``'s type; the other precisions: nothing."""
    return (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
            else nullcontext())


def e3nn_inputs_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating inputs of ``model``'s e3nn Linear and TensorProduct layers to
    ``dtype``. Under bf16 autocast, torch's layers (MLPs, the symmetric contraction's
    products) hand on bf16 tensors, and e3nn contracts them with its float32 weights in
    code that autocast does not cover (tensordot): the e3nn layers then run in float32, the
    torch layers in bf16, and lengths, strain and spherical harmonics in float32 outside
    autocast (see model.geometry)."""
    from e3nn import o3

    def cast(module, args):
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a
                     for a in args)

    for module in model.modules():
        if isinstance(module, (o3.Linear, o3.TensorProduct)):
            module.register_forward_pre_hook(cast)
