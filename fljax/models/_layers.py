"""Convolution and pooling layers that stay fast when clients are mapped.

XLA lowers ``jax.vmap`` of a convolution over per-client weights to a grouped convolution
(``feature_group_count = K``) whose backward pass is slow on CPU and GPU, and on CPU a
convolution's weight gradient inside a ``while`` loop (every local-training loop) misses XLA's
fast convolution path. ``impl="dot"`` computes the same convolution as one matrix product of the
input's patches (im2col) with the kernel: under ``vmap`` that is a batched matrix product, and
inside loops it stays a matrix product. Parameters have :class:`flax.linen.Conv`'s names,
shapes and initialisation, so the two implementations are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("dot", "xla")
"""Convolution implementations: ``"dot"`` (patches times kernel, fast under ``vmap`` and in
loops) and ``"xla"`` (``lax.conv``)."""


def _check_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv={impl!r} is not one of {CONV_IMPLS}")
    return impl


def _pads(size: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """(low pad, high pad, output size) of one spatial axis, with XLA's SAME/VALID rules."""
    if padding == "VALID":
        return 0, 0, (size - k) // s + 1
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    strides: int | Sequence[int] = 1,
    padding: str = "SAME",
    groups: int = 1,
    impl: str = "dot",
) -> jax.Array:
    """2-D convolution of ``x[B, H, W, Cin]`` with ``kernel[kh, kw, Cin / groups, Cout]``
    (NHWC / HWIO, the layout of :class:`flax.linen.Conv`): ``out[b, i, j, o] = sum_{p, q, c}
    x_pad[b, s i + p, s j + q, g c] kernel[p, q, c, o]`` over the input channels of output
    channel ``o``'s group ``g``.

    ``impl="dot"``: the patches of ``x`` (``[B, H', W', kh kw, Cin]``) contracted with the
    kernel in one ``einsum``; ``impl="xla"``: ``lax.conv_general_dilated``. Both give the same
    values up to float rounding.
    """
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"padding={padding!r} is not one of ('SAME', 'VALID')")
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    kh, kw, cg, co = kernel.shape
    if x.shape[-1] != cg * groups or co % groups:
        raise ValueError(f"kernel {kernel.shape} with groups={groups} does not fit "
                         f"{x.shape[-1]} input channels")  # fmt: skip
    if _check_impl(impl) == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, (sh, sw), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )  # fmt: skip
    lo_h, hi_h, oh = _pads(x.shape[1], kh, sh, padding)
    lo_w, hi_w, ow = _pads(x.shape[2], kw, sw, padding)
    xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    shifted = [xp[:, p : p + sh * (oh - 1) + 1 : sh, q : q + sw * (ow - 1) + 1 : sw]
               for p in range(kh) for q in range(kw)]  # fmt: skip
    b = x.shape[0]
    if groups == 1:  # one [B H' W', kh kw Cin] x [kh kw Cin, Cout] matrix product
        cols = jnp.concatenate(shifted, axis=-1)
        return jnp.einsum("bhwk,ko->bhwo", cols, kernel.reshape(kh * kw * cg, co))
    patches = jnp.stack(shifted, axis=3).reshape(b, oh, ow, kh * kw, groups, cg)
    w = kernel.reshape(kh * kw, cg, groups, co // groups)
    out = jnp.einsum("bhwpgc,pcgo->bhwgo", patches, w)
    return out.reshape(b, oh, ow, co)


class Conv(nn.Module):
    """:class:`flax.linen.Conv` (same parameters and initialisation) computed by
    :func:`conv2d` with ``impl``; ``groups`` is Flax's ``feature_group_count``."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: int = 1
    padding: str = "SAME"
    groups: int = 1
    use_bias: bool = True
    impl: str = "dot"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        shape = (kh, kw, x.shape[-1] // self.groups, self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        y = conv2d(x, kernel, self.strides, self.padding, self.groups, self.impl)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
            y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
        return y


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping ``window x window`` max pooling of ``x[B, H, W, C]`` (stride = window,
    VALID: trailing rows and columns that do not fill a window are dropped), as a reshape and
    a max; equal to :func:`flax.linen.max_pool` with those settings, and a plain reduction
    (rather than ``reduce_window``) under ``vmap`` and in loops."""
    b, h, w, c = x.shape
    h, w = h // window * window, w // window * window
    x = x[:, :h, :w].reshape(b, h // window, window, w // window, window, c)
    return x.max(axis=(2, 4))
