"""Inference-only building blocks for the encoders' fast path.

- :func:`fold_batchnorm`: a convolution followed by an eval-mode BatchNorm as one
  convolution with a bias (exact up to float rounding).
- :class:`DerivedTensors`: tensors derived from a module's parameters (folded weights,
  attention-bias tables), rebuilt whenever a source tensor changes (in-place updates,
  ``load_state_dict``, ``.to()``), never stored in the state dict.
- :func:`linear` / :func:`conv2d`: a linear layer or convolution with an optional GELU
  (exact, erf form) or residual sum fused into the kernel. On CPUs these use oneDNN's
  fused primitives when this PyTorch build has them and they agree with the plain ops
  (checked once, :func:`onednn_fusion_available`); elsewhere the plain ops.

None of this is differentiable through the fused kernels: callers use it only when
autograd is off (``torch.inference_mode`` / ``torch.no_grad``) and the module is in eval mode.
``NAPARI_FOCSAM_FUSED_OPS=0`` switches the oneDNN fusion off.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def fast_path_enabled(module: nn.Module, x: torch.Tensor) -> bool:
    """True for eval-mode modules without autograd (the fast path's contract)."""
    return (not module.training and not torch.is_grad_enabled()
            and getattr(module, "fast_inference", True) and x.dtype == torch.float32)


def fold_batchnorm(weight: torch.Tensor, bn: nn.BatchNorm2d,
                   conv_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in/groups, k, k) conv weight + eval BatchNorm -> folded (weight, bias).

    ``bn(conv(x, weight, conv_bias)) == conv(x, w, b)``: with s = gamma / sqrt(var + eps),
    w = weight * s and b = beta + (conv_bias - mean) * s. Computed in float64.
    """
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = weight.double() * scale.view(-1, *([1] * (weight.ndim - 1)))
    shift = -bn.running_mean.double() if conv_bias is None else conv_bias.double() - bn.running_mean.double()
    b = bn.bias.double() + shift * scale
    return w.to(weight.dtype), b.to(weight.dtype)


def tensor_version(t: torch.Tensor) -> int:
    """In-place modification counter of ``t`` (-1 for inference tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:  # inference tensors carry no version counter (they cannot change)
        return -1


class DerivedTensors:
    """Cache of tensors computed from ``sources``; recomputed when any of them changes.

    Not a buffer: it is not saved, not moved by ``.to()`` (a moved source changes the key).
    """

    __slots__ = ("_key", "_value")

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value = None

    def get(self, sources: Sequence[torch.Tensor], build: Callable[[], object], *extra) -> object:
        key = tuple((t.data_ptr(), tensor_version(t), t.dtype, t.device) for t in sources) + extra
        if key != self._key:
            self._value = build()
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = self._value = None


def _plain_linear(x, w, b, act, add):
    y = F.linear(x, w, b)
    if add is not None:
        y = y.add_(add)
    return F.gelu(y) if act == "gelu" else y


def _plain_conv(x, w, b, stride, padding, groups, act):
    y = F.conv2d(x, w, b, stride, padding, 1, groups)
    return F.gelu(y) if act == "gelu" else y


@functools.cache
def _onednn_fusion_works() -> bool:
    try:
        ops = torch.ops.mkldnn
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            x = torch.randn(37, 24, generator=g)
            w = torch.randn(40, 24, generator=g)
            b = torch.randn(40, generator=g)
            r = torch.randn(37, 40, generator=g)
            ok = torch.allclose(ops._linear_pointwise(x, w, b, "gelu", [], "none"),
                                _plain_linear(x, w, b, "gelu", None), atol=1e-4)
            ok &= torch.allclose(ops._linear_pointwise.binary(x, r, w, b, "add"),
                                 _plain_linear(x, w, b, None, r), atol=1e-4)
            xc = torch.randn(2, 8, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
            wc = torch.randn(8, 1, 3, 3, generator=g)
            bc = torch.randn(8, generator=g)
            got = ops._convolution_pointwise(xc, wc, bc, [1, 1], [2, 2], [1, 1], 8, "gelu", [], "none")
            ok &= torch.allclose(got, _plain_conv(xc, wc, bc, 2, 1, 8, "gelu"), atol=1e-4)
        return bool(ok)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def onednn_fusion_available() -> bool:
    """Whether oneDNN's fused linear / convolution primitives are used: they work here
    (checked once) and ``NAPARI_FOCSAM_FUSED_OPS`` is not "0"."""
    return os.environ.get("NAPARI_FOCSAM_FUSED_OPS", "1") != "0" and _onednn_fusion_works()


def _fused(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and onednn_fusion_available()


def _finish(y: torch.Tensor, act: str | None, add: torch.Tensor | None,
            out_dtype: torch.dtype | None) -> torch.Tensor:
    if add is not None:
        y = y.to(add.dtype).add_(add)
    if act == "gelu":
        y = torch.ops.aten.gelu_(y)
    return y if out_dtype is None else y.to(out_dtype)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str | None = None,
           add: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``act(x @ w.T + b + add)`` for 2D ``x`` (rows, in); act is None or "gelu" (erf form).

    The product runs in ``w``'s dtype (``x`` is cast to it; a bf16 product accumulates in
    float32); ``add`` is summed in its own dtype; the result has ``out_dtype`` (default: the
    dtype of ``add`` when given, else of ``w``).
    """
    if x.dtype != w.dtype:
        x = x.to(w.dtype)
    if add is not None and add.dtype != w.dtype:  # sum the residual in its own precision
        return _finish(linear(x, w, b), act, add, out_dtype)
    if _fused(x) and x.ndim == 2 and x.is_contiguous():
        if add is not None and act is None and add.is_contiguous():
            y = torch.ops.mkldnn._linear_pointwise.binary(x, add, w, b, "add")
        elif add is None:
            y = torch.ops.mkldnn._linear_pointwise(x, w, b, act or "none", [], "none" if act else "")
        else:
            y = _plain_linear(x, w, b, act, add)
    else:
        y = _plain_linear(x, w, b, act, add)
    return y if out_dtype is None else y.to(out_dtype)


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int = 1, padding: int = 0,
           groups: int = 1, act: str | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``act(conv2d(x, w, b))`` in ``w``'s dtype; keeps a channels-last ``x`` channels-last."""
    if x.dtype != w.dtype:
        x = x.to(w.dtype)
    if _fused(x):
        y = torch.ops.mkldnn._convolution_pointwise(
            x, w, b, [padding] * 2, [stride] * 2, [1, 1], groups, act or "none", [], "none" if act else "")
    else:
        y = _plain_conv(x, w, b, stride, padding, groups, act)
    return y if out_dtype is None else y.to(out_dtype)


def cast(tensors: Sequence[torch.Tensor | None], dtype: torch.dtype | None) -> tuple:
    """The tensors in ``dtype`` (None: unchanged)."""
    return tuple(t if t is None or dtype is None else t.to(dtype) for t in tensors)
