"""ONNX (dynamo) export of eval-mode layers with a dynamic batch, run by onnxruntime.

The ``onnx`` extra (``pip install 'stableeig[onnx]'``, installed by ``make install``)
provides onnx, onnxscript and onnxruntime; without them these tests skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import stableeig as se
from helpers import gaussian

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize(
    "make",
    [
        lambda: se.nn.ZCAWhitening2d(8, group_size=4),
        lambda: se.nn.ZCAWhitening2d(8, method="power"),  # the paper's truncated whitening
        lambda: se.nn.PCADenoising2d(8, group_size=4, n_components=2),
    ],
    ids=["zca", "zca-power", "pca"],
)
def test_onnx_export_with_a_dynamic_batch_matches_onnxruntime(make: object, tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    model = torch.nn.Sequential(conv, make(), torch.nn.ReLU())  # type: ignore[operator]
    with torch.no_grad():
        for seed in range(3):
            model(gaussian((16, 3, 6, 6), seed=seed))
    model.eval()
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model, (gaussian((5, 3, 6, 6), seed=9),), dynamo=True, dynamic_shapes=({0: batch},)
    )
    assert program is not None
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    name = session.get_inputs()[0].name
    for n in (1, 5, 13):  # other batch sizes than the traced one
        x = gaussian((n, 3, 6, 6), seed=n)
        with torch.no_grad():
            expected = model(x)
        out = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert expected.abs().max() > 0.1  # a real output, not zeros


def test_a_running_covariance_layer_does_not_export_to_onnx_as_documented() -> None:
    """``running="covariance"`` decomposes in eval; ONNX has no eigendecomposition."""
    layer = se.nn.ZCAWhitening2d(8, group_size=4, running="covariance")
    layer(gaussian((16, 8, 3, 3), seed=0))
    layer.eval()
    with pytest.raises(Exception, match="_linalg_eigh"):
        torch.onnx.export(layer, (gaussian((4, 8, 3, 3), seed=1),), dynamo=True)
