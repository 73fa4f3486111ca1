"""raymc.data.jpeg: torchvision's decoder, called in one place that keeps its deprecation warning quiet."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_decoding_does_not_print_torchvisions_deprecation_warning():
    """With every DeprecationWarning shown, decoding through raymc prints none of torchvision's."""
    probe = textwrap.dedent(
        """
        import io
        from PIL import Image
        from raymc.data.jpeg import as_tensor, decode_rgb_jpegs
        buffer = io.BytesIO()
        Image.new("RGB", (8, 6), (200, 30, 10)).save(buffer, "JPEG")
        (image,) = decode_rgb_jpegs([as_tensor(buffer.getvalue())])
        print(tuple(image.shape))
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(3, 6, 8)"
    assert "decoding and encoding capabilities of TorchVision" not in done.stderr
