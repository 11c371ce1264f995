"""The Redis byte codec: pack/unpack round trip and the unit-range quantisation of result tiles."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging import to_uint8
from service.queue import dequantize, pack, quantize_unit, unpack
from service.redis_queue import job_tiles, queued_tiles


def test_pack_round_trip_keeps_dtypes_and_header() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "tile": rng.integers(0, 256, (3, 8, 8), dtype=np.uint8),
        "r_plus": rng.standard_normal((4, 2, 2)).astype(np.float32),
        "restored": quantize_unit(rng.random((3, 8, 8)).astype(np.float32)),
    }
    header, back = unpack(pack({"idx": 3}, arrays))
    assert header == {"idx": 3}
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array)


@pytest.mark.parametrize(("bits", "dtype", "step"), [(8, np.uint8, 1 / 255), (16, np.uint16, 1 / 65535)])
def test_quantisation_error_is_half_a_step(bits: int, dtype: type, step: float) -> None:
    x = np.linspace(-0.1, 1.1, 10_001, dtype=np.float32)
    q = quantize_unit(x, bits)
    assert q.dtype == dtype
    back = dequantize(q)
    assert back.dtype == np.float32
    inside = (x >= 0) & (x <= 1)
    assert np.abs(back[inside] - x[inside]).max() <= step / 2 + 1e-7
    assert back.min() == 0.0 and back.max() == 1.0
    into = np.full((3, *x.shape), np.nan, dtype=np.float32)
    view = into[1]
    assert dequantize(q, view) is view
    assert np.array_equal(into[1], back) and np.isnan(into[0]).all() and np.isnan(into[2]).all()


def test_dequantize_into_passes_float_outputs_through() -> None:
    latent = np.random.default_rng(2).standard_normal((2, 4, 3, 3)).astype(np.float32)
    out = np.zeros((5, 4, 3, 3), dtype=np.float32)
    dequantize(latent, out[1:3])
    assert np.array_equal(out[1:3], latent) and not out[0].any() and not out[3:].any()


def test_8_bit_quantisation_gives_the_8_bit_output_of_the_float_tile() -> None:
    """Outside tile overlaps the response is byte-identical whether the tile travelled as uint8 or float."""
    x = np.random.default_rng(1).random((100, 100, 3)).astype(np.float32)
    assert np.array_equal(to_uint8(dequantize(quantize_unit(x, 8))), to_uint8(x))


def test_bad_bits_are_refused() -> None:
    with pytest.raises(ValueError, match="bits must be 8 or 16, got 12"):
        quantize_unit(np.zeros(2, dtype=np.float32), 12)


def test_queued_tiles_trusts_the_stream_over_the_counter() -> None:
    """The Redis lane's tile counter sets the depth, but an empty stream is empty whatever it says (a counter
    left high by a lost update cannot wedge the queue bound) and a negative counter reads as 0."""
    assert queued_tiles(2, b"17") == 17
    assert queued_tiles(0, b"1000000") == 0
    assert queued_tiles(3, b"-2") == 0
    assert queued_tiles(1, None) == 0


def test_job_tiles_reads_n_and_defaults_to_one() -> None:
    assert job_tiles({b"n": b"8"}) == 8
    assert job_tiles({}) == 1
    assert job_tiles({b"n": b"x"}) == 1


def test_to_uint8_in_bands_equals_the_whole_image_formula() -> None:
    """Converting a few rows at a time (no full-size float temporaries) gives the one-shot result exactly,
    across band edges and out-of-range values."""
    x = (np.random.default_rng(0).standard_normal((517, 31, 3)) * 0.7 + 0.5).astype(np.float32)
    whole = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(to_uint8(x, rows=64), whole)
    assert np.array_equal(to_uint8(x), whole)
