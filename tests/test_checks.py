"""landscape._checks.check_counts: every keyword a count >= 1, the error naming the keyword."""

import numpy as np
import pytest

from landscape._checks import check_counts


def test_check_counts_accepts_positive_ints():
    check_counts(n=1, dim=np.int64(3), num_classes=10)
    check_counts()


def test_check_counts_names_the_offending_keyword():
    with pytest.raises(ValueError, match=r"dim must be an int >= 1 \(a positive count\), got 0"):
        check_counts(n=5, dim=0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        check_counts(n=5, num_classes=2.0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        check_counts(batch_size=True)
