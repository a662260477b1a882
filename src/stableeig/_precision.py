"""The working precision of a decomposition.

Decompositions run in at least ``compute_dtype`` (default float64) with autocast disabled.
The default is measured, not assumed: on the covariance after a one-channel 3×3 stem
convolution (64 channels, rank 9, plus 1e-4·I, float32 input) the gradient of ``inv_sqrtm``
from a float32 decomposition is off by up to 5.8e-3 relative to float64 truth (the target is
1e-3), from a float64 decomposition by 2.6e-8, and a float64 ``eigh`` of 16 such matrices
costs 1.04× the float32 one on a 2-thread CPU (``python benchmarks/precision.py``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Optional

import torch

from ._validation import DTypeError

DEFAULT_COMPUTE_DTYPE = torch.float64
# Per thread, as torch's grad mode: the stack of the thread's open default_compute_dtype
# scopes. (A plain threading.local instance holding a list: torch.compile guards on its
# contents, and re-traces where a thread's scope differs; a threading.local subclass with a
# class default was not guarded.)
_SCOPES = threading.local()


def _current_default() -> torch.dtype:
    scopes = getattr(_SCOPES, "stack", None)
    return scopes[-1] if scopes else DEFAULT_COMPUTE_DTYPE


@contextlib.contextmanager
def default_compute_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Inside the ``with`` block, ``compute_dtype=None`` means ``dtype`` (float32 or float64)
    for every function and layer called **in this thread** (thread-local, as torch's grad
    mode: other threads keep their own default); an explicit ``compute_dtype=`` still wins,
    and a float64 input is never lowered. Blocks nest; compiled code is re-traced where the
    scope differs.

    float32 halves the cost of large decompositions (2048²: 2.0× → ~1× ``torch.linalg.eigh``
    in float32, issue 29's measurement) and costs accuracy where eigenvalues sit near the
    float32 round-off of the largest (rank-deficient covariances plus a small ``eps``):
    ``docs/functions.md`` (Precision) has the measured trade.

    Examples:
        >>> import torch, stableeig as se
        >>> with se.default_compute_dtype(torch.float32):
        ...     W = se.inv_sqrtm(4 * torch.eye(2))
        >>> W.diagonal().tolist()
        [0.5, 0.5]
    """
    if dtype not in (torch.float32, torch.float64):
        raise DTypeError(
            f"default_compute_dtype: expected torch.float32 or torch.float64 (got {dtype})"
        )
    scopes = getattr(_SCOPES, "stack", None)
    if scopes is None:
        scopes = _SCOPES.stack = []
    scopes.append(dtype)
    try:
        yield
    finally:
        scopes.pop()


def working_dtype(input_dtype: torch.dtype, compute_dtype: Optional[torch.dtype]) -> torch.dtype:
    """The dtype a decomposition runs in: the wider of the input's and ``compute_dtype``
    (``None``: the default, float64 unless :func:`default_compute_dtype` says otherwise).

    float16 and bfloat16 are always raised to at least float32; a float64 input is never
    lowered.
    """
    requested = _current_default() if compute_dtype is None else compute_dtype
    if requested not in (torch.float32, torch.float64):
        raise DTypeError(
            f"compute_dtype: expected torch.float32 or torch.float64 (got {requested})"
        )
    if input_dtype == torch.float64 or requested == torch.float64:
        return torch.float64
    return torch.float32


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast disabled on ``device``: nothing to do where it is off (eager) or does not
    exist (the meta device)."""
    if device.type == "meta" or (
        not torch.compiler.is_compiling() and not torch.is_autocast_enabled(device.type)
    ):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
