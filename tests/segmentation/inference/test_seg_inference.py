"""Segmentation inference: shapes, tiling and blending, TTA, class modes, bad input, memory bounds."""

from __future__ import annotations

import math

import pytest
import torch

from fixtures_segpipe import PointwiseNet, TextureNet, current_rss, peak_rss, peak_rss_reset, plain_meta
from unet_lab.unet_core.errors import InputError, SegmentationError
from unet_lab.unet_core.segmentation.inference.segment import segment
from unet_lab.unet_core.segmentation.inference.tiling import gaussian_window, plan_tiles, run_tiled, working_bytes
from unet_lab.unet_core.segmentation.metrics import iou_score
from unet_lab.unet_core.segmentation.training.synthetic import make_synthetic


def _sigmoid_reference(net, images):
    """The whole image through the model in one pass, written out here (no tiling code)."""
    with torch.no_grad():
        return torch.sigmoid(net(images.permute(0, 3, 1, 2)))[:, 0]


@pytest.mark.parametrize("height,width", [(97, 131), (375, 500)])
def test_masks_are_bhw_float_01_at_input_size(height, width):
    torch.manual_seed(0)
    images = torch.rand(2, height, width, 3)
    net = PointwiseNet(seed=1)
    result = segment(net, plain_meta(), images, tile_size=128, overlap=0.25)
    for out in (result.masks, result.probabilities):
        assert out.shape == (2, height, width)
        assert out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert set(result.masks.unique().tolist()) <= {0.0, 1.0}
    assert result.tiles > 2  # it really tiled
    # pixel-local model: tiling must reproduce the one-pass result exactly
    torch.testing.assert_close(result.probabilities, _sigmoid_reference(net, images), atol=1e-5, rtol=0)
    torch.testing.assert_close(result.masks, (_sigmoid_reference(net, images) >= 0.5).float())


def test_gaussian_window_matches_formula():
    for h, w in ((64, 64), (48, 80)):
        window = gaussian_window(h, w)
        sy, sx = h / 8, w / 8
        expected = torch.tensor([[math.exp(-((y - (h - 1) / 2) ** 2) / (2 * sy ** 2)
                                           - ((x - (w - 1) / 2) ** 2) / (2 * sx ** 2)) for x in range(w)]
                                 for y in range(h)])
        expected = expected / expected.max()
        torch.testing.assert_close(window, expected.float(), atol=1e-6, rtol=1e-5)
        assert float(window.min()) > 0


def test_blending_is_the_weighted_mean_of_overlapping_tiles():
    """A reference accumulation written here: sum(w * p_tile) / sum(w) over the planned tiles."""
    height, width, tile = 70, 90, 32
    plan = plan_tiles(height, width, tile, 0.5)
    gen = torch.Generator().manual_seed(3)

    def predict(batch):  # every tile gets its own random constant-plus-noise output
        out = torch.rand(batch.shape[0], 1, batch.shape[2], batch.shape[3], generator=gen)
        return out

    calls = []

    def read(y0, y1, x0, x1):
        calls.append((y0, x0))
        return torch.zeros(3, y1 - y0, x1 - x0)

    got = torch.zeros(height, width)

    def sink(y0, probs):
        got[y0:y0 + probs.shape[1]] = probs[0]

    # record what predict returns per tile by wrapping
    outputs = []

    def recording_predict(batch):
        out = predict(batch)
        outputs.extend(out)
        return out

    run_tiled(recording_predict, read, plan, 1, sink, blend="gaussian", tile_batch=3)
    window = gaussian_window(plan.tile_h, plan.tile_w)
    num = torch.zeros(height, width)
    den = torch.zeros(height, width)
    for (y, x), out in zip(calls, outputs, strict=True):
        num[y:y + tile, x:x + tile] += out[0] * window
        den[y:y + tile, x:x + tile] += window
    torch.testing.assert_close(got, num / den, atol=1e-6, rtol=1e-5)
    assert sorted(calls) == sorted((y, x) for y in plan.ys for x in plan.xs)
    assert plan.ys[-1] + tile == height and plan.xs[-1] + tile == width


def test_tiled_equals_whole_image_on_1024():
    images, truth = make_synthetic(1, 1024, seed=5)
    net = TextureNet(sigma=3.0, gain=60.0, offset=0.01)  # receptive field ~ 2 x 18 px
    whole = segment(net, plain_meta(), images, tile_size=1024)
    assert whole.tiles == 1
    tiled = segment(net, plain_meta(), images, tile_size=256, overlap=0.25, blend="gaussian")
    assert tiled.tiles == 25
    assert float(iou_score(tiled.masks, whole.masks)) >= 0.98
    # the model is meaningful on this data, and blending beats hard seams
    assert float(iou_score(whole.masks, truth)) > 0.8
    seams = segment(net, plain_meta(), images, tile_size=256, overlap=0.0, blend="constant")
    err_blend = (tiled.probabilities - whole.probabilities).abs().mean()
    err_seams = (seams.probabilities - whole.probabilities).abs().mean()
    assert err_blend < err_seams


def test_flip_tta_is_the_mean_of_flipped_passes():
    torch.manual_seed(0)
    images = torch.rand(2, 40, 56, 3)
    net = TextureNet(sigma=1.0)
    with torch.no_grad():
        net.kernel.copy_(net.kernel * torch.linspace(0.5, 1.5, net.kernel.numel()))  # asymmetric: flips matter
    result = segment(net, plain_meta(), images, tta_flips=True)
    x = images.permute(0, 3, 1, 2)
    with torch.no_grad():
        passes = [torch.sigmoid(net(x)),
                  torch.sigmoid(net(x.flip(-1))).flip(-1),
                  torch.sigmoid(net(x.flip(-2))).flip(-2),
                  torch.sigmoid(net(x.flip(-2, -1))).flip(-2, -1)]
    expected = torch.stack(passes).mean(0)[:, 0]
    torch.testing.assert_close(result.probabilities, expected, atol=1e-6, rtol=1e-5)
    plain = segment(net, plain_meta(), images).probabilities
    assert (plain - expected).abs().max() > 1e-4  # the flips did change something


def test_multiclass_modes():
    torch.manual_seed(0)
    images = torch.rand(2, 17, 23, 3)
    net = PointwiseNet(classes=3, seed=4)
    meta = plain_meta(3, ["background", "cell", "nucleus"])
    with torch.no_grad():
        probs = torch.softmax(net(images.permute(0, 3, 1, 2)), 1)
    labels = probs.argmax(1)
    everything = segment(net, meta, images, class_mode="all")
    assert everything.masks.shape == (6, 17, 23)
    torch.testing.assert_close(everything.probabilities, probs.reshape(6, 17, 23), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(everything.masks.view(2, 3, 17, 23).sum(1), torch.ones(2, 17, 23))
    assert everything.plane_names == ["background", "cell", "nucleus"] * 2
    one = segment(net, meta, images, class_mode="class:nucleus")
    torch.testing.assert_close(one.probabilities, probs[:, 2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(one.masks, (labels == 2).float())
    by_index = segment(net, meta, images, class_mode="class:1", threshold=0.3)
    torch.testing.assert_close(by_index.masks, (probs[:, 1] >= 0.3).float())
    fg = segment(net, meta, images, class_mode="foreground")
    torch.testing.assert_close(fg.probabilities, 1 - probs[:, 0], atol=1e-6, rtol=1e-5)
    with pytest.raises(InputError, match="no class named 'dog'"):
        segment(net, meta, images, class_mode="class:dog")
    with pytest.raises(InputError, match="out of range"):
        segment(net, meta, images, class_mode="class:5")


# -- bad and unusual input ---------------------------------------------------------------------
@pytest.fixture
def rgb():
    torch.manual_seed(1)
    return torch.rand(1, 33, 45, 3)


def test_rgba_drops_alpha(rgb):
    net = PointwiseNet(seed=2)
    rgba = torch.cat([rgb, torch.rand(1, 33, 45, 1)], -1)
    result = segment(net, plain_meta(), rgba)
    torch.testing.assert_close(result.probabilities, _sigmoid_reference(net, rgb), atol=1e-6, rtol=1e-5)
    assert any("alpha" in w for w in result.warnings)


def test_grayscale_is_replicated(rgb):
    net = PointwiseNet(seed=2)
    gray = rgb[..., :1]
    result = segment(net, plain_meta(), gray)
    torch.testing.assert_close(result.probabilities, _sigmoid_reference(net, gray.expand(-1, -1, -1, 3)),
                               atol=1e-6, rtol=1e-5)
    assert any("grayscale" in w for w in result.warnings)


def test_rgb_into_one_channel_model_uses_luminance(rgb):
    net = PointwiseNet(in_channels=1, seed=2)
    result = segment(net, {"normalization": {"mean": [0.0], "std": [1.0]}}, rgb)
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    torch.testing.assert_close(result.probabilities, _sigmoid_reference(net, luma), atol=1e-5, rtol=1e-5)


def test_16bit_and_8bit_values_are_rescaled_and_overshoot_clamped(rgb):
    net = PointwiseNet(seed=2)
    expected = _sigmoid_reference(net, rgb)
    sixteen = segment(net, plain_meta(), rgb * 65535.0)
    torch.testing.assert_close(sixteen.probabilities, expected, atol=1e-5, rtol=1e-5)
    assert any("16-bit" in w for w in sixteen.warnings)
    eight = segment(net, plain_meta(), (rgb * 255.0).round())
    torch.testing.assert_close(eight.probabilities, _sigmoid_reference(net, (rgb * 255).round() / 255),
                               atol=1e-5, rtol=1e-5)
    integer = segment(net, plain_meta(), (rgb * 65535).round().to(torch.int32))
    torch.testing.assert_close(integer.probabilities, expected, atol=1e-4, rtol=1e-4)
    over = rgb.clone()
    over[0, 0, 0] = torch.tensor([1.2, -0.1, 0.5])
    clamped = segment(net, plain_meta(), over)
    torch.testing.assert_close(clamped.probabilities, _sigmoid_reference(net, over.clamp(0, 1)), atol=1e-6, rtol=1e-5)
    assert any("clamped" in w for w in clamped.warnings)
    with pytest.raises(InputError, match="0..1"):
        segment(net, plain_meta(), rgb * 1e6)


def test_nan_pixels_name_the_input(rgb):
    bad = rgb.clone()
    bad[0, 3, 4, 1] = float("nan")
    with pytest.raises(InputError, match="input 'image'.*1 NaN"):
        segment(PointwiseNet(), plain_meta(), bad)


def test_empty_batch_and_wrong_rank():
    with pytest.raises(InputError, match="empty"):
        segment(PointwiseNet(), plain_meta(), torch.zeros(0, 16, 16, 3))
    with pytest.raises(InputError, match="MASK"):
        segment(PointwiseNet(), plain_meta(), torch.zeros(1, 16, 16))
    with pytest.raises(InputError, match="zero size"):
        segment(PointwiseNet(), plain_meta(), torch.zeros(1, 0, 16, 3))


def test_one_pixel_image_with_a_real_unet():
    from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta
    from unet_lab.unet_core.segmentation.registry import build_model

    torch.manual_seed(0)
    model = build_model("unet", depth=3, base_channels=4)
    result = segment(model, SegmentationMeta.for_model(model), torch.full((1, 1, 1, 3), 0.5))
    assert result.masks.shape == (1, 1, 1) and result.probabilities.shape == (1, 1, 1)
    assert 0.0 <= float(result.probabilities) <= 1.0


# -- out of memory and huge requests -----------------------------------------------------------------
class FussyNet(PointwiseNet):
    """Raises CUDA's out-of-memory error for any input larger than ``limit`` px a side."""

    def __init__(self, limit: int) -> None:
        super().__init__(seed=6)
        self.limit = limit
        self.sizes = []

    def forward(self, x):
        self.sizes.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_retries_with_smaller_tiles():
    torch.manual_seed(0)
    images = torch.rand(2, 150, 130, 3)
    net = FussyNet(limit=64)
    released = []
    result = segment(net, plain_meta(), images, tile_size=256, release_memory=lambda: released.append(1))
    assert result.tile_size <= 64
    assert any("out of memory" in w for w in result.warnings)
    assert released
    torch.testing.assert_close(result.probabilities, _sigmoid_reference(PointwiseNet(seed=6), images),
                               atol=1e-5, rtol=0)
    with pytest.raises(SegmentationError, match="out of memory even with"):
        segment(FussyNet(limit=8), plain_meta(), images, tile_size=256)


def test_huge_request_refused_up_front_when_outputs_cannot_fit():
    # a 20000 x 20000 IMAGE that costs nothing: one pixel broadcast (stride 0)
    huge = torch.full((1, 1, 1, 3), 0.5).expand(1, 20000, 20000, 3)
    before = current_rss()
    with pytest.raises(InputError, match=r"20000 x 20000 px needs about .* only 2\.00 GiB") as caught:
        segment(PointwiseNet(), plain_meta(), huge, tile_size=1024, free_memory=2 << 30)
    needed = float(str(caught.value).split("needs about ")[1].split(" GiB")[0])
    assert needed >= 2 * 20000 * 20000 * 4 / 2**30  # at least the two float32 output planes
    assert current_rss() - before < 200 << 20  # nothing big was allocated


def _strip_run(height: int, width: int, tile: int) -> tuple[int | None, int, int]:
    """run_tiled on a lazily generated height x width image; (peak RSS growth, rows seen, foreground)."""
    plan = plan_tiles(height, width, tile, 0.25)
    net = PointwiseNet(seed=7)
    yy = torch.arange(tile, dtype=torch.float32)[:, None]

    def read(y0, y1, x0, x1):  # a smooth pattern made on demand, never stored
        xx = torch.arange(x0, x1, dtype=torch.float32)[None, :]
        pattern = torch.sin((yy[: y1 - y0] + y0) / 97.0) * torch.cos(xx / 53.0) * 0.5 + 0.5
        return pattern.expand(3, -1, -1)

    def predict(batch):
        with torch.no_grad():
            return torch.sigmoid(net(batch))

    rows_seen = []
    foreground = [0]

    def sink(y0, probs):
        assert y0 == sum(n for _, n in rows_seen)  # rows arrive once, in order
        rows_seen.append((y0, probs.shape[1]))
        foreground[0] += int((probs[0] >= 0.5).sum())

    reset = peak_rss_reset()
    base = current_rss()
    run_tiled(predict, read, plan, 1, sink, blend="gaussian", tile_batch=1)
    grown = peak_rss() - base if reset else None
    return grown, sum(n for _, n in rows_seen), foreground[0]


@pytest.mark.slow
def test_20000_square_request_runs_in_bounded_memory():
    """The strip processor over a whole, lazily generated 20000 x 20000 image on the CPU.

    The IMAGE itself (4.8 GB as float32) never exists: tiles are made on demand, and the sink
    keeps only a count. Peak memory is the strip accumulator (classes + 1 planes of tile x
    width floats, 164 MB at 1024 px tiles) plus a few tiles: far below one float32 plane of the
    image (1.6 GB). One thread: a single-core job is faster than two contending threads here.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grown, rows, foreground = _strip_run(20000, 20000, 1024)
    finally:
        torch.set_num_threads(threads)
    assert rows == 20000
    assert 0.2 < foreground / 20000 ** 2 < 0.9
    plan = plan_tiles(20000, 20000, 1024, 0.25)
    assert working_bytes(plan, 3, 1) < 200 << 20  # the planner's figure for this request
    if grown is not None:
        assert grown < 500 << 20, f"peak grew by {grown / 2**20:.0f} MiB"
