"""GaRNet against the released checkpoint's manifest and the official code's tiny fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restorer.archs import arch_class
from restorer.archs.garnet import GaRNet
from tests.manifests import FIXTURES, assert_loads_strictly, load_manifest, load_safetensors, manifest_fixture

HERE = FIXTURES / "garnet"
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    model = GaRNet(in_channels=3, ndf=8)
    weights = {k: torch.from_numpy(v) for k, v in load_safetensors(HERE / "garnet_tiny.safetensors").items()}
    model.load_state_dict(weights, strict=True)
    x = np.load(HERE / "garnet_tiny.input.npy")
    return model.eval(), x[:, :3].copy(), x[:, 3:].copy()


def test_registered():
    assert arch_class("GaRNet") is GaRNet


def test_released_manifest_loads_strictly():
    manifest, _ = load_manifest(HERE / "garnet_saved_model.keys.json")
    with torch.device("meta"):
        model = GaRNet(in_channels=manifest["hyperparameters"]["in_channels_arg"])
    assert_loads_strictly(model, HERE / "garnet_saved_model.keys.json")
    assert not list(model.buffers())


def test_tiny_matches_official_output_and_internals(tiny):
    model, image, mask = tiny
    expected = np.load(HERE / "garnet_tiny.output.npy")
    aux = np.load(HERE / "garnet_tiny.aux.npz")
    with torch.no_grad():
        got = model.forward_all(torch.from_numpy(image), torch.from_numpy(mask))
        plain = model(torch.from_numpy(image), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got["output"].numpy(), expected, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(plain, expected, atol=TOL, rtol=TOL)
    for key in aux.files:
        if key in got:
            ours = got[key]
        else:  # e.g. "gate_3" -> got["gate"][3]
            group, _, index = key.rpartition("_")
            ours = got[group][int(index)]
        np.testing.assert_allclose(ours.numpy(), aux[key], atol=TOL, rtol=TOL, err_msg=key)


def test_mask_matters(tiny):
    """The mask input is used: clearing it changes the output (guards against a dead input)."""
    model, image, mask = tiny
    with torch.no_grad():
        with_mask = model(torch.from_numpy(image), torch.from_numpy(mask))
        without = model(torch.from_numpy(image), torch.zeros_like(torch.from_numpy(mask)))
    assert float((with_mask - without).abs().max()) > 1e-3


def test_batch_of_two_equals_two_batches_of_one(tiny):
    """The mask pyramid is normalised per sample, so batching does not change a result."""
    model, image, mask = tiny
    small_mask = np.zeros_like(mask)
    small_mask[:, :, 20:30, 30:60] = 1.0
    images = torch.from_numpy(np.concatenate([image, image]))
    masks = torch.from_numpy(np.concatenate([mask, small_mask]))
    with torch.no_grad():
        batched = model(images, masks)
        single = model(images[1:], masks[1:])
    np.testing.assert_allclose(batched[1:].numpy(), single.numpy(), atol=1e-6)


def test_onnx_export_matches(tiny, tmp_path):
    from restorer.convert.graph import export_onnx, parity, run_onnx

    model, image, mask = tiny
    inputs = {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}
    # Static height and width: restorer.export makes only the first input's H and W
    # dynamic, and the mask must share them.
    path = export_onnx(model, inputs, tmp_path / "garnet_tiny.onnx", dynamic_hw=False)
    import onnx

    assert [i.name for i in onnx.load(str(path)).graph.input] == ["image", "mask"]
    check = parity(model, path, {"image": image, "mask": mask}, tolerance=TOL)
    assert check.ok, check
    got = run_onnx(path, {"image": image, "mask": mask})
    np.testing.assert_allclose(got, np.load(HERE / "garnet_tiny.output.npy"), atol=TOL, rtol=TOL)


def test_catalog_entry_builds_the_released_shapes():
    from restorer.zoo.catalog import load_catalog

    spec = load_catalog().get("garnet")
    assert spec.tasks == ("remove-text",) and spec.non_commercial
    assert spec.input_range == (-1.0, 1.0) and spec.pad_multiple == 32
    assert spec.manifest == "garnet/garnet_saved_model.keys.json"
    assert_loads_strictly((spec.arch, spec.hparams), manifest_fixture(spec.manifest))
