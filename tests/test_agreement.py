"""The agreement math every verification, sensitivity report and bench drift column shares (rapsam_edge.agreement)."""

import math

import numpy as np
import pytest

from rapsam_edge.agreement import compare, cosine, cosine_from_sums


def test_cosine_of_a_vector_with_itself_and_its_opposite():
    a = np.array([[1.0, -2.0], [3.0, 0.5]], dtype=np.float32)
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(a, 3 * a) == pytest.approx(1.0)  # scale-free


def test_cosine_zero_rule():
    """The one documented rule: two all-zero outputs agree exactly; an all-zero output against a non-zero one
    agrees not at all (it must never pass for agreement, as the former ``1.0`` rule of three copies let it)."""
    zero, x = np.zeros(5), np.arange(1.0, 6.0)
    assert cosine(zero, zero) == 1.0
    assert cosine(zero, x) == 0.0
    assert cosine(x, zero) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_cosine_of_non_finite_values_is_no_agreement(bad):
    x = np.arange(1.0, 6.0)
    y = x.copy()
    y[2] = bad
    assert cosine(x, y) == 0.0
    assert compare(x, y)["cosine"] == 0.0


def test_streaming_cosine_equals_the_direct_one():
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=7), rng.normal(size=7)) for _ in range(3)]
    dot = sum(float(a @ b) for a, b in batches)
    ref2 = sum(float(a @ a) for a, _ in batches)
    out2 = sum(float(b @ b) for _, b in batches)
    a_all = np.concatenate([a for a, _ in batches])
    b_all = np.concatenate([b for _, b in batches])
    assert cosine_from_sums(dot, ref2, out2) == pytest.approx(cosine(a_all, b_all))
    assert cosine_from_sums(0.0, 0.0, 0.0) == 1.0
    assert cosine_from_sums(0.0, 0.0, 2.0) == 0.0
