"""The input-drift test statistic: fpi's chi-square p-value is scipy's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fpi.diagnose.drift import _chi2_p_value

counts = st.lists(st.integers(1, 10**7), min_size=2, max_size=14)


@pytest.mark.slow  # scipy takes a second or more to import
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_chi2_p_value_is_scipys(data: st.DataObject) -> None:
    now = data.draw(counts)
    base = data.draw(st.lists(st.integers(0, 10**7), min_size=len(now), max_size=len(now)))
    assume(sum(base) > 0)  # as drift's caller guarantees: no empty row or column
    table = np.array([now, base], dtype=float)
    from scipy.stats import chi2_contingency  # here: scipy takes a second to import

    expected = float(chi2_contingency(table, correction=False)[1])
    assert _chi2_p_value(table) == expected


def test_chi2_p_value_tells_a_shift_from_none() -> None:
    same = np.array([[100.0, 200.0, 300.0], [100.0, 200.0, 300.0]])
    moved = np.array([[100.0, 200.0, 300.0], [300.0, 200.0, 100.0]])
    assert _chi2_p_value(same) == 1.0
    assert _chi2_p_value(moved) < 1e-30
