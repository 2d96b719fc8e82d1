"""Train/serve parity at load time: replay the golden samples a model was exported with through the
service's own decoding and preprocessing, and refuse the model if the outputs drift.

Preprocessing drift (another resize filter, channel order, normalisation) silently costs accuracy in
every model server; here it stops the model from becoming ready and says why.
"""

from __future__ import annotations

import base64

import numpy as np

from service.contract import ModelMetadata
from service.imaging import decode_image
from service.preprocess import prepare
from service.runtime import ModelSession


class GoldenDrift(Exception):
    """The model's outputs on its golden samples differ from what training recorded."""


def verify_golden(session: ModelSession, metadata: ModelMetadata) -> float | None:
    """Returns the largest absolute difference seen, or None when the model ships no golden samples."""
    golden = metadata.golden
    if golden is None:
        return None
    worst = 0.0
    for index, sample in enumerate(golden.samples):
        decoded = decode_image(base64.b64decode(sample.image_png_base64),
                               mode=metadata.input.color_mode, max_pixels=1 << 30)
        tensor, _ = prepare(decoded.image, metadata.input)
        produced = session.run(tensor[np.newaxis])[0][0].ravel()
        expected = np.asarray(sample.expected, dtype=np.float32)
        if produced.shape != expected.shape:
            raise GoldenDrift(f"golden sample {index}: output has {produced.size} values, "
                              f"training recorded {expected.size}")
        diff = float(np.max(np.abs(produced - expected)))
        worst = max(worst, diff)
        if diff > golden.atol:
            raise GoldenDrift(
                f"golden sample {index} drifted: max abs diff {diff:.3g} > atol {golden.atol:g}; the "
                "service's decoding or preprocessing no longer matches what the model was trained with"
            )
    return worst
