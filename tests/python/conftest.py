"""Shared test setup: the reference helpers import as `_nf4_ref`, and no test leaks a SIMD level."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Subprocesses started by tests must import the same ecomllm as this process: with `make dev` the
# package is found through pyproject's pythonpath (python/), which a child does not inherit.
_PACKAGE_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.abspath(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p
)


@pytest.fixture(autouse=True)
def _restore_simd_level():
    """Whatever a test does with set_simd_level / set_amx_enabled / set_float32_matmul_precision, the
    next test starts with the settings it found (bit-exact comparisons between runs depend on them)."""
    from ecomllm import _core

    before, amx_before, precision_before = _core.simd_level(), _core.amx_enabled(), _core.fp32_matmul_precision()
    yield
    _core.set_simd_level(before)
    _core.set_amx_enabled(amx_before)
    _core.set_fp32_matmul_precision(precision_before)


@pytest.fixture
def manual_decoding_policy():
    """NF4Tensors stay in bitsandbytes' layout at their first matmul of few rows (decoding policy
    "manual", restored afterwards), for tests of the kernels over that layout."""
    from ecomllm.quant import decoding_policy, set_decoding_policy

    before = decoding_policy()
    set_decoding_policy("manual")
    yield
    set_decoding_policy(before)
