"""The diffusion UNet's optional compiled path: regions traced by dynamo give the eager outputs,
and a compiler that fails (at compile time or at the first call) falls back to eager once."""

from __future__ import annotations

import logging

import pytest
import torch

from fixtures_gates import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet_and_inputs(family="sd1"):
    from unet_lab.unet_core.diffusion.unet import UNetModel

    torch.manual_seed(0)
    model = UNetModel(tiny_config(family)).eval()
    for p in model.parameters():  # random everywhere (zero-initialised outputs would hide errors)
        p.data.normal_(0, 0.05)
    gen = torch.Generator().manual_seed(1)
    config = model.config if hasattr(model, "config") else tiny_config(family)
    x = torch.randn(2, config.in_channels, 16, 16, generator=gen)
    t = torch.tensor([10.0, 700.0])
    ctx = torch.randn(2, 7, config.cross_attention_dim, generator=gen)
    y = None
    if config.projection_class_embeddings_input_dim:
        y = torch.randn(2, config.projection_class_embeddings_input_dim, generator=gen)
    return model, (x, t, ctx, y)


def _compiled_regions(model):
    from unet_lab.unet_core.compiling import CompiledCall

    return [c for m in model.modules() for c in vars(m).values() if isinstance(c, CompiledCall)]


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["blocks", "full"])
def test_dynamo_traced_unet_gives_the_eager_output(scope):
    from unet_lab.unet_core.compiling import CompiledCall
    from unet_lab.unet_core.diffusion.compiled import REPEATED_BLOCKS, compile_unet

    torch._dynamo.reset()
    model, (x, t, ctx, y) = _unet_and_inputs()
    with torch.inference_mode():
        want = model(x, t, ctx, y)
    blocks = sum(type(m).__name__ in REPEATED_BLOCKS for m in model.modules())
    run = compile_unet(model, scope, backend="eager")  # dynamo tracing without a code generator
    with torch.inference_mode():
        got = run(x, t, ctx, y)
    wrapped = _compiled_regions(model)
    if scope == "blocks":
        assert run is model and len(wrapped) == blocks > 0
        assert all(c.active and c.error is None for c in wrapped)
    else:
        assert isinstance(run, CompiledCall) and run.active and not wrapped
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_compile_failure_at_construction_falls_back_with_a_warning(monkeypatch, caplog):
    from unet_lab.unet_core.diffusion.compiled import compile_unet

    model, inputs = _unet_and_inputs()
    with torch.inference_mode():
        want = model(*inputs)

    def broken(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING):
        run = compile_unet(model, "full")
    assert not run.active and "not supported on this Python" in run.error
    assert "torch.compile failed for the diffusion UNet" in caplog.text
    with torch.inference_mode():
        assert torch.equal(run(*inputs), want)


def test_failure_at_first_call_falls_back_once_and_memory_errors_pass(monkeypatch, caplog):
    from unet_lab.unet_core.compiling import CompiledCall
    from unet_lab.unet_core.diffusion.compiled import compile_unet

    model, inputs = _unet_and_inputs("sdxl")
    with torch.inference_mode():
        want = model(*inputs)
    calls = []

    def lazy(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            raise RuntimeError("backend compiler failed: no working C++ compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", lazy)
    with caplog.at_level(logging.WARNING):
        compile_unet(model, "blocks")
        with torch.inference_mode():
            got = model(*inputs)
    wrapped = _compiled_regions(model)
    assert torch.equal(got, want)
    assert len(calls) == len(wrapped) and all(not w.active for w in wrapped)  # each region tried once
    with torch.inference_mode():
        model(*inputs)
    assert len(calls) == len(wrapped)  # and never again

    def oom(fn, **kwargs):
        def compiled(*args, **kw):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return compiled

    monkeypatch.setattr(torch, "compile", oom)
    run = CompiledCall(lambda a: a, "a test function")
    with pytest.raises(torch.OutOfMemoryError):
        run(torch.ones(1))
    assert run.active  # the caller's to handle, not a compiler failure


def test_unknown_scope_is_refused():
    from unet_lab.unet_core.diffusion.compiled import compile_unet

    with pytest.raises(ValueError, match="compile scope"):
        compile_unet(torch.nn.Linear(1, 1), "everything")
    with pytest.raises(ValueError, match="no ResBlock"):
        compile_unet(torch.nn.Linear(1, 1), "blocks")


def test_blocks_of_one_shape_share_one_compiled_graph():
    """The UNet tells each block its position (transformer_options["block"]); that must not reach
    the compiler, or every block would compile (and count against dynamo's recompile limit)."""
    from torch._dynamo.utils import counters

    from unet_lab.unet_core.diffusion.compiled import REPEATED_BLOCKS, compile_blocks

    torch._dynamo.reset()
    counters.clear()
    model, inputs = _unet_and_inputs("sdxl")
    name = "BasicTransformerBlock"
    transformer = [m for m in model.modules() if type(m).__name__ == name]
    shapes = set()
    for m in transformer:  # the distinct input shapes the blocks see, from an eager pass
        m.forward_pre_hook_handle = m.register_forward_pre_hook(
            lambda mod, args: shapes.add((tuple(args[0].shape), tuple(args[1].shape), mod.norm1.normalized_shape)))
    with torch.inference_mode():
        model(*inputs)
    for m in transformer:
        m.forward_pre_hook_handle.remove()
    compile_blocks(model, {name: REPEATED_BLOCKS[name]}, backend="eager")
    with torch.inference_mode():
        model(*inputs)
    assert len(transformer) > len(shapes)  # the check means something: blocks repeat shapes
    assert 0 < counters["stats"]["unique_graphs"] <= len(shapes)
