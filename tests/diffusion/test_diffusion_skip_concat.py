"""Our UNet takes a decoder concatenation that an ``output_block_patch`` made (``skip_concat``),
and only when the pair the patches returned is exactly that concatenation's two views."""

from __future__ import annotations

import pytest
import torch

from fixtures_gates import run, tiny_patcher, unet_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures_gates.one_thread (a conftest plugin)


@pytest.fixture(scope="module")
def model():
    return tiny_patcher("sd1")


def _joining_patch(seen: list):
    """Writes ``cat([h, hsp], 1)`` itself and offers it, as the fused skip gate does."""
    from unet_lab.unet_core.diffusion.skip_concat import SKIP_CONCATENATION

    def patch(h, hsp, options):
        seen.append(SKIP_CONCATENATION in options and options[SKIP_CONCATENATION] is None)
        joined = torch.cat([h, hsp], 1)
        h_view, hsp_view = joined.narrow(1, 0, h.shape[1]), joined.narrow(1, h.shape[1], hsp.shape[1])
        options[SKIP_CONCATENATION] = (h_view, hsp_view, joined)
        return h_view, hsp_view

    return patch


def _block_inputs(patcher):
    """Records the tensor each output block receives (its concatenation)."""
    received = []
    hooks = [block.register_forward_pre_hook(lambda module, args: received.append(args[0]))
             for block in patcher.model.diffusion_model.output_blocks]
    return received, hooks


def test_the_offered_concatenation_is_what_the_block_gets(model):
    inputs = unet_inputs(model)
    want = run(model, inputs)
    patched = model.clone()
    seen = []
    patched.set_model_output_block_patch(_joining_patch(seen))
    offered = []
    patched.set_model_output_block_patch(lambda h, hsp, o: (offered.append(o["skip_concatenation"][2]), (h, hsp))[1])
    received, hooks = _block_inputs(patched)
    try:
        got = run(patched, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    blocks = len(model.model.diffusion_model.output_blocks)
    assert seen == [True] * blocks  # every block offers a fresh slot
    assert len(received) == blocks and all(r is o for r, o in zip(received, offered, strict=True))
    assert torch.equal(got, want)  # the same values, with torch.cat's layout: bitwise the unpatched model


def _halve_skip(h, hsp, options):
    """Returns another ``hsp``: the UNet must concatenate for real."""
    return h, hsp * 0.5


def _scale_h_in_place(h, hsp, options):
    """FreeU scales part of ``h`` in place: after a joining patch that lands in the concatenation."""
    h[:, : h.shape[1] // 2] *= 1.5
    return h, hsp


@pytest.mark.parametrize("later", [_halve_skip, _scale_h_in_place], ids=["replaces_skip", "writes_h_in_place"])
def test_a_later_patch_is_honoured(model, later):
    """After a joining patch, a patch that replaces a tensor or writes into one gives what it
    gives alone: the UNet uses the offered concatenation only when it still is the pair's."""
    inputs = unet_inputs(model)
    reference = model.clone()
    reference.set_model_output_block_patch(later)
    patched = model.clone()
    patched.set_model_output_block_patch(_joining_patch([]))
    patched.set_model_output_block_patch(later)
    want = run(reference, inputs)
    assert torch.equal(run(patched, inputs), want)
    assert not torch.equal(want, run(model, inputs))  # the later patch mattered
