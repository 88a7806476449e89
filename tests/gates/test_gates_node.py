"""The UNet Skip Attention Gate and Skip Gate Maps nodes on the standalone host."""

from __future__ import annotations

import pytest
import torch

from fixtures_gates import reference_energy_alpha, run, tiny_patcher, unet_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures_gates.one_thread (a conftest plugin)


@pytest.fixture(scope="module")
def model():
    return tiny_patcher("sd1", seed=4)


def _nodes():
    from unet_lab.nodes.gates import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS["UNetLabSkipAttentionGate"](), NODE_CLASS_MAPPINGS["UNetLabSkipGateMaps"]()


def test_registered_with_display_names():
    import unet_lab

    assert unet_lab.NODE_DISPLAY_NAME_MAPPINGS["UNetLabSkipAttentionGate"] == "UNet Skip Attention Gate"
    assert unet_lab.NODE_DISPLAY_NAME_MAPPINGS["UNetLabSkipGateMaps"] == "Skip Gate Maps"
    assert unet_lab.NODE_CLASS_MAPPINGS["UNetLabSkipAttentionGate"].CATEGORY == "UNet Lab/gates"


def test_gate_node_patches_a_clone_and_reports_levels(standalone_host, model):
    gate, _ = _nodes()
    inputs = unet_inputs(model)
    before = run(model, inputs)
    patched, recorder, report = gate.patch(model, 0.8, "1/8, 1/16", "1/16=0.5", 0.1, "both")
    assert patched is not model and torch.equal(run(model, inputs), before)
    assert not torch.equal(run(patched, inputs), before)
    lines = report.splitlines()
    assert lines[0].startswith("sd1: parameter-free gate, strength 0.8")
    # tiny SD1 (L=1): output blocks 6, 7 are level 0 (1/8) at 0.8; 4, 5 level 1 (1/16) at 0.4; others 0
    rows = {int(r.split("|")[0]): float(r.split("|")[-1]) for r in lines[2:]}
    assert rows == pytest.approx({0: 0, 1: 0, 2: 0, 3: 0, 4: 0.4, 5: 0.4, 6: 0.8, 7: 0.8})
    assert recorder is not None


def test_maps_node_turns_the_last_step_into_masks(standalone_host, model):
    gate, maps = _nodes()
    patched, recorder, _ = gate.patch(model, 0.5, "1/8", "", 0.25, "both", record_maps=True)
    x, t, c, y = unet_inputs(model)
    captured = {}

    def probe_patch(h, hsp, opts):  # records each block's inputs on the unpatched model
        captured[opts["block"][1]] = (h.clone(), hsp.clone())
        return h, hsp

    probe = model.clone()
    probe.set_model_output_block_patch(probe_patch)
    run(probe, (x, t, c, y))
    run(patched, (x, t, c, y))
    masks, labels = maps.maps(recorder, {"samples": x}, "all", "cond", "per block", "image")
    assert masks.shape == (2 * 2, 16 * 8, 16 * 8) and masks.dtype == torch.float32   # blocks 6, 7 x 2 rows
    assert masks.min() >= 0.25 - 1e-6 and masks.max() <= 1.0
    assert labels.splitlines()[0].startswith("output block 6 (level 0, 1/8) cond row 0")
    # block 6's inputs are those of the unpatched model (only level 0 is gated, and block 6 is
    # its first block), so its map is the documented gate of the probe's inputs
    h6, hsp6 = captured[6]
    latent, _ = maps.maps(recorder, {"samples": x}, "1/8", "cond", "per block", "latent")
    expected = 0.25 + 0.75 * reference_energy_alpha(h6, hsp6)[:, 0]
    torch.testing.assert_close(latent[:2].double(), expected, atol=1e-5, rtol=1e-5)


def test_maps_node_without_recording_says_so(standalone_host, model):
    from unet_lab.unet_core.errors import GateError

    gate, maps = _nodes()
    _, recorder, _ = gate.patch(model, 0.5, "all", "", 0.0, "both", record_maps=False)
    with pytest.raises(GateError, match="record_maps off"):
        maps.maps(recorder, {"samples": torch.zeros(1, 4, 8, 8)}, "all", "cond", "per block", "image")


def test_bad_level_text_is_a_gate_error(standalone_host, model):
    from unet_lab.unet_core.errors import GateError

    gate, _ = _nodes()
    with pytest.raises(GateError, match="1/128"):
        gate.patch(model, 0.5, "1/128", "", 0.0, "both")


def test_trained_weights_from_the_gate_folder(standalone_host, model):
    from unet_lab.nodes.host.base import MODEL_FOLDERS

    if "unet_gates" not in MODEL_FOLDERS:
        pytest.skip("the hosts do not know the unet_gates model folder yet (change requested in the report)")
    from fixtures_gates import tiny_config
    from unet_lab.unet_core.gates.additive import AdditiveAttentionGate
    from unet_lab.unet_core.gates.trained import save_trained_gates

    folder = standalone_host.save_directory("unet_gates")
    save_trained_gates(folder / "g.safetensors", {"level0.0": AdditiveAttentionGate(32, 64, 4, norm=None)},
                       "sd1", tiny_config("sd1"))
    gate, _ = _nodes()
    assert "g.safetensors" in gate.INPUT_TYPES()["optional"]["gate_weights"][0]
    patched, _, report = gate.patch(model, 1.0, "all", "", 0.0, "both", gate_weights="g.safetensors")
    assert "trained gates from g.safetensors" in report
