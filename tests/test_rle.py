import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cellseg_d2.data.rle import RLEError, rle_decode, rle_encode


def test_row_major_one_indexed():
    mask = rle_decode("2 3 8 1", height=2, width=4)
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert rle_encode(mask) == "2 3 8 1"


def test_runs_touching_the_end_and_adjacent_runs():
    mask = rle_decode("1 2 3 2 7 2", height=2, width=4)
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [0, 0, 1, 1]])
    assert rle_encode(mask) == "1 4 7 2"


@settings(max_examples=150, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.integers(0, 1)))
def test_round_trip(mask):
    if not mask.any():
        assert rle_encode(mask) == ""
        return
    encoded = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(encoded, *mask.shape), mask)
    assert rle_encode(rle_decode(encoded, *mask.shape)) == encoded


@pytest.mark.parametrize("annotation, message", [
    ("1 2 3", "odd number"),
    ("1 2 x 3", "non-integer"),
    ("1 2.5", "non-integer"),
    ("1 0", "not positive"),
    ("1 -2", "not positive"),
    ("0 2", "below 1"),
    ("7 3", "goes past"),
    ("1 3 2 2", "overlapping"),
    ("5 1 1 1", "unsorted"),
    ("", "empty"),
])
def test_malformed_names_the_row(annotation, message):
    with pytest.raises(RLEError, match=message) as info:
        rle_decode(annotation, height=2, width=4, where="train.csv row 7")
    assert str(info.value).startswith("train.csv row 7: ")
