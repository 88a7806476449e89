"""Keying and fallback logic of the CUDA-graph accelerator, on the CPU with a fake capturer.

The fake capturer records nothing: its "replay" runs the captured function again on the graph's
static arguments and writes the result into the captured outputs, which is what a CUDA graph
does with its kernels. So these tests check the accelerator's decisions (when it captures,
replays or runs eagerly, and what the caller gets back) against the eager forward itself.
"""

from __future__ import annotations

import logging
import uuid

import pytest
import torch

from fixtures_diffusion import TINY_SD1, make_spec, random_ldm_state_dict
from unet_lab.unet_core.acceleration.accelerator import AccelerationSettings, Accelerator
from unet_lab.unet_core.acceleration.graphs import CapturedCall, GraphCache
from unet_lab.unet_core.acceleration.install import install_accelerator
from unet_lab.unet_core.acceleration.signature import call_signature
from unet_lab.unet_core.acceleration.weights import WeightWatch
from unet_lab.unet_core.diffusion.patcher import create_model_patcher
from unet_lab.unet_core.gates.apply import apply_skip_gate


class ReplayingCapturer:
    """A stand-in for CUDA graph capture: replay re-runs ``fn`` on the static arguments."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.captures = 0
        self.attempts = 0

    def capture(self, fn, args, kwargs, device, compiling):
        self.attempts += 1
        if self.fail is not None:
            raise self.fail
        self.captures += 1
        outputs = fn(*args, **kwargs)

        def replay():
            outputs.copy_(fn(*args, **kwargs))

        return CapturedCall(replay=replay, outputs=outputs, seconds=0.0)


@pytest.fixture(scope="module")
def sd1_sd():
    return random_ldm_state_dict(TINY_SD1, seed=3)


@pytest.fixture
def patcher(sd1_sd):
    return create_model_patcher(sd1_sd, make_spec(TINY_SD1))


def _inputs(batch=2, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=gen)
    t = torch.full((batch,), 500.0)
    context = torch.randn(batch, 7, TINY_SD1.cross_attention_dim, generator=gen)
    return x, t, context


def _accelerated(model, capturer, **settings):
    accelerator = Accelerator(AccelerationSettings(**settings), capturer=capturer, device_types=("cpu",))
    return install_accelerator(model, accelerator), accelerator


def _lora_like_patch(patcher, strength):
    key = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    delta = torch.ones_like(patcher.model.state_dict()[key]) * 0.01
    clone = patcher.clone()
    clone.add_patches({key: (delta,)}, strength)
    return clone


# -- the signature ---------------------------------------------------------------------------
def test_signature_keys_layout_composition_and_patch_identity_not_values():
    gate = object()
    x = torch.zeros(2, 4, 8, 8)
    base = call_signature((x, torch.ones(2)), {"transformer_options": {"cond_or_uncond": [1, 0], "patches": {
        "output_block_patch": [gate]}, "uuids": [uuid.uuid4()]}})
    same = call_signature((torch.ones(2, 4, 8, 8), torch.zeros(2)), {"transformer_options": {
        "cond_or_uncond": [1, 0], "patches": {"output_block_patch": [gate]}, "uuids": [uuid.uuid4()]}})
    assert base.key == same.key  # values and the per-run uuids do not count
    assert gate in base.held
    for args, options in [((torch.zeros(4, 4, 8, 8), torch.ones(4)), {"cond_or_uncond": [1, 0]}),
                          ((x.half(), torch.ones(2)), {"cond_or_uncond": [1, 0]}),
                          ((x, torch.ones(2)), {"cond_or_uncond": [0, 1]}),
                          ((x, torch.ones(2)), {"cond_or_uncond": [1, 0], "patches": {"output_block_patch": [object()]}}),
                          ((x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), torch.ones(2)),
                           {"cond_or_uncond": [1, 0], "patches": {"output_block_patch": [gate]}})]:
        other = call_signature(args, {"transformer_options": {**options}})
        assert other.key != base.key


def test_signature_rebuild_swaps_tensors_and_copies_containers():
    options = {"cond_or_uncond": [0], "control": {"output": [torch.ones(1), None]}}
    sig = call_signature((torch.zeros(1), 3), {"transformer_options": options})
    assert len(sig.tensors) == 2
    fresh = [torch.full((1,), 7.0), torch.full((1,), 8.0)]
    args, kwargs = sig.rebuild(fresh)
    assert args[0] is fresh[0] and args[1] == 3
    assert kwargs["transformer_options"]["control"]["output"][0] is fresh[1]
    assert kwargs["transformer_options"] is not options and options["control"]["output"][0].item() == 1.0


def test_weight_fingerprint_follows_moved_and_swapped_tensors(patcher):
    watch = WeightWatch(patcher.diffusion_model)
    before = watch.fingerprint()
    assert before == watch.fingerprint() and len(before) == len(patcher.diffusion_model.state_dict())
    param = next(patcher.diffusion_model.parameters())
    param.data = param.data.clone()  # what moving a model to another device and back does
    assert watch.fingerprint() != before
    assert watch.residency_problem(torch.device("cpu")) is None


def test_lru_cache_drops_the_least_recently_used():
    cache = GraphCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    assert cache.put("c", 3) == ["b"]
    assert cache.get("b") is None and len(cache) == 2


# -- behaviour through the standalone patcher --------------------------------------------------
def test_capture_then_replay_equals_eager(patcher):
    capturer = ReplayingCapturer()
    fast, accelerator = _accelerated(patcher, capturer)
    for seed in range(3):
        x, t, c = _inputs(seed=seed)
        assert torch.equal(fast.apply_model(x, t, c), patcher.apply_model(x, t, c))
    assert capturer.captures == 1 and accelerator.stats.replays == 3
    x, t, c = _inputs(batch=1)  # a new composition: a second graph
    assert torch.equal(fast.apply_model(x, t, c), patcher.apply_model(x, t, c))
    assert capturer.captures == 2 and len(accelerator.cache) == 2


def test_changed_lora_strength_gives_a_new_capture_and_the_eager_output(patcher):
    capturer = ReplayingCapturer()
    fast, accelerator = _accelerated(patcher, capturer)
    x, t, c = _inputs()
    outputs, models = [], []
    for strength in (0.5, 1.0, 0.5):
        models.append(_lora_like_patch(fast, strength))  # kept alive: their patched tensors stay where they are
        out = models[-1].apply_model(x, t, c)
        assert torch.equal(out, _lora_like_patch(patcher, strength).apply_model(x, t, c))
        assert torch.equal(models[-1].apply_model(x, t, c), out)
        outputs.append(out)
    assert not torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    assert capturer.captures == 3  # each patch state has its own patched tensors: its own key
    assert torch.equal(models[1].apply_model(x, t, c), outputs[1]) and capturer.captures == 3


def test_changed_gate_setting_gives_a_new_capture(patcher):
    capturer = ReplayingCapturer()
    fast, _ = _accelerated(patcher, capturer)
    x, t, c = _inputs()
    results = []
    for strength in (0.3, 0.9):
        gated, _, _ = apply_skip_gate(fast, TINY_SD1, "sd1", strength)
        eager, _, _ = apply_skip_gate(patcher, TINY_SD1, "sd1", strength)
        results.append(gated.apply_model(x, t, c))
        assert torch.equal(results[-1], eager.apply_model(x, t, c))
        assert torch.equal(gated.apply_model(x, t, c), results[-1])
    assert capturer.captures == 2 and not torch.equal(*results)


def test_reloaded_weights_give_a_new_capture(patcher):
    capturer = ReplayingCapturer()
    fast, accelerator = _accelerated(patcher, capturer)
    x, t, c = _inputs()
    fast.apply_model(x, t, c)
    fast.apply_model(x, t, c)
    for p in patcher.diffusion_model.parameters():  # unload and reload: every tensor elsewhere
        p.data = p.data.clone()
    assert torch.equal(fast.apply_model(x, t, c), patcher.apply_model(x, t, c))
    assert capturer.captures == 2


def test_partial_load_runs_eagerly_and_says_why_once(patcher, caplog):
    from unet_lab.nodes.host.comfy_capture import _low_vram_check

    class BaseModel:
        model_lowvram = True

    capturer = ReplayingCapturer()
    accelerator = Accelerator(capturer=capturer, precheck=_low_vram_check(BaseModel()), device_types=("cpu",))
    fast = install_accelerator(patcher, accelerator)
    x, t, c = _inputs()
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert torch.equal(fast.apply_model(x, t, c), patcher.apply_model(x, t, c))
    assert capturer.attempts == 0 and accelerator.stats.eager_calls == 3
    assert sum("low VRAM" in r.getMessage() for r in caplog.records) == 1
    assert "low VRAM" in accelerator.stats.summary()


def test_comfy_detach_keeps_graphs_unless_the_model_is_unloaded(patcher):
    """ComfyUI 0.3.64's ``load_models_gpu`` detaches (``unpatch_all=False``) every loaded clone of the
    model it loads, itself included, on each sampling run; only an unload passes ``unpatch_all=True``."""
    from unet_lab.nodes.host.comfy_capture import _release_on_unload

    capturer = ReplayingCapturer()
    fast, accelerator = _accelerated(patcher, capturer)
    on_detach = _release_on_unload(accelerator)
    x, t, c = _inputs()
    fast.apply_model(x, t, c)
    on_detach(fast, False)  # re-attached with its weights in place: the next run replays
    assert torch.equal(fast.apply_model(x, t, c), patcher.apply_model(x, t, c))
    assert capturer.captures == 1 and accelerator.stats.replays == 2
    on_detach(fast, True)  # unloaded: graphs dropped, the next run captures anew
    assert len(accelerator.cache) == 0
    assert torch.equal(fast.apply_model(x, t, c), patcher.apply_model(x, t, c))
    assert capturer.captures == 2


def test_capture_failure_falls_back_to_eager_with_one_log_line(patcher, caplog):
    capturer = ReplayingCapturer(fail=RuntimeError("operation not permitted when stream is capturing"))
    fast, accelerator = _accelerated(patcher, capturer)
    x, t, c = _inputs()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert torch.equal(fast.apply_model(x, t, c), patcher.apply_model(x, t, c))
    assert capturer.attempts == 1  # not retried for the same signature
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert accelerator.stats.failures and accelerator.stats.eager_calls == 3


def test_cpu_inputs_run_eagerly_with_the_real_accelerator(patcher):
    accelerator = Accelerator()  # CUDA graphs only
    fast = install_accelerator(patcher, accelerator)
    x, t, c = _inputs()
    assert torch.equal(fast.apply_model(x, t, c), patcher.apply_model(x, t, c))
    assert accelerator.stats.captures == 0
    assert any("CPU" in reason for reason in accelerator.stats.eager_reasons)


def test_gradients_and_disabled_run_eagerly(patcher):
    capturer = ReplayingCapturer()
    fast, accelerator = _accelerated(patcher, capturer)
    x, t, c = _inputs()
    fast.apply_model(x.requires_grad_(), t, c)
    off, _ = _accelerated(patcher, capturer, enabled=False)
    off.apply_model(x.detach(), t, c)
    assert capturer.attempts == 0
    assert any("gradients" in r for r in accelerator.stats.eager_reasons)


def test_install_keeps_the_input_model_and_one_accelerator(patcher):
    fast, first = _accelerated(patcher, ReplayingCapturer())
    again, second = _accelerated(fast, ReplayingCapturer())
    assert patcher.get_all_wrappers("diffusion_model") == []
    assert fast.get_all_wrappers("diffusion_model") == [first]
    assert again.get_all_wrappers("diffusion_model") == [second]
    assert again.clone().get_all_wrappers("diffusion_model") == [second]


def test_comfy_style_executor_is_innermost_only_at_the_last_wrapper():
    from types import SimpleNamespace

    from unet_lab.unet_core.acceleration.accelerator import _innermost

    assert _innermost(SimpleNamespace(idx=1, wrappers=[0, 1]))
    assert not _innermost(SimpleNamespace(idx=0, wrappers=[0, 1]))
    assert _innermost(SimpleNamespace(is_last=True))
