"""Device-side tiled blending: strip reads, accumulation on the predictor's device, no host syncs.

The references here are written out in the test: tile starts from the stride formula, the
gaussian window from its formula, and a whole-image accumulator of ``window * prob`` and
``window`` divided at the end. The stub predictor's output depends only on the tile's pixels
(plus a ramp over the tile's own coordinates, so overlapping tiles disagree and blending
matters), so the reference can recompute every tile's prediction itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fixtures_segpipe import PointwiseNet, plain_meta
from unet_lab.unet_core.errors import InputError
from unet_lab.unet_core.segmentation.inference.device_io import RowWriter
from unet_lab.unet_core.segmentation.inference.images import inspect_images
from unet_lab.unet_core.segmentation.inference.segment import segment
from unet_lab.unet_core.segmentation.inference.tiling import choose_tile_batch, plan_tiles, run_tiled


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1 - overlap))))
    return sorted(set(list(range(0, length - tile, stride)) + [length - tile]))


def _window(h: int, w: int) -> torch.Tensor:
    """exp(-((y-cy)^2/(2 sy^2) + (x-cx)^2/(2 sx^2))), sigma = size/8, centre (size-1)/2, max 1."""
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    sy, sx = h / 8, w / 8
    g = torch.exp(-((y - (h - 1) / 2) ** 2) / (2 * sy ** 2) - ((x - (w - 1) / 2) ** 2) / (2 * sx ** 2))
    return g / g.max()


def _stub(classes: int):
    """A tile-content predictor with a tile-relative ramp: [N, C, h, w] -> probabilities [N, K, h, w]."""

    def predict(batch: torch.Tensor) -> torch.Tensor:
        n, _c, h, w = batch.shape
        ramp = torch.linspace(-1.0, 1.0, w, device=batch.device)[None, :] + \
            torch.linspace(0.5, -0.5, h, device=batch.device)[:, None]
        base = batch.mean(1, keepdim=True) * 3.0 + ramp
        if classes == 1:
            return torch.sigmoid(base - 1.0)
        logits = torch.cat([base * (k + 1) - k for k in range(classes)], dim=1)
        return torch.softmax(logits, dim=1)

    return predict


def _reference(image: torch.Tensor, tile: int, overlap: float, classes: int, window: str) -> torch.Tensor:
    """Whole-image accumulator of window * prediction and window over every planned tile."""
    _c, height, width = image.shape
    th, tw = min(tile, height), min(tile, width)
    ys, xs = _starts(height, th, overlap), _starts(width, tw, overlap)
    weights = _window(th, tw) if (window == "gaussian" and len(ys) * len(xs) > 1) else \
        torch.ones(th, tw, dtype=torch.float64)
    num = torch.zeros(classes, height, width, dtype=torch.float64)
    den = torch.zeros(height, width, dtype=torch.float64)
    predict = _stub(classes)
    for y in ys:
        for x in xs:
            out = predict(image[None, :, y:y + th, x:x + tw])[0].double()
            num[:, y:y + th, x:x + tw] += out * weights
            den[y:y + th, x:x + tw] += weights
    return num / den


def _run(image: torch.Tensor, tile: int, overlap: float, classes: int, blend: str, tile_batch: int,
         strips: bool) -> tuple[torch.Tensor, list[tuple[int, int]], list[int]]:
    """run_tiled on ``image`` [C, H, W]; (result, rows handed to the sink, reads per tile row)."""
    _c, height, width = image.shape
    plan = plan_tiles(height, width, tile, overlap)
    got = torch.full((classes, height, width), float("nan"))
    rows_seen: list[tuple[int, int]] = []
    strip_reads: list[int] = []

    def sink(y0: int, probs: torch.Tensor) -> None:
        rows_seen.append((y0, probs.shape[1]))
        got[:, y0:y0 + probs.shape[1]] = probs

    def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return image[:, y0:y1, x0:x1].clone()

    def read_strip(y0: int, y1: int) -> torch.Tensor:
        strip_reads.append(y0)
        return image[:, y0:y1].clone()

    done = run_tiled(_stub(classes), None if strips else read, plan, classes, sink, blend, tile_batch,
                     read_strip=read_strip if strips else None)
    assert done == plan.count
    return got, rows_seen, strip_reads


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(3, height, width, generator=gen)


@pytest.mark.parametrize("height,width,tile,overlap,classes,tile_batch", [
    (83, 157, 32, 0.3, 1, 4),    # odd sizes: last tile flush in both axes; 4 does not divide the row
    (64, 101, 40, 0.25, 3, 3),   # softmax classes, width not a tile multiple
    (30, 45, 64, 0.25, 2, 5),    # smaller than a tile: one tile, whole image
])
def test_strip_blending_matches_a_whole_image_reference(height, width, tile, overlap, classes, tile_batch):
    image = _image(height, width, seed=height + width)
    plan = plan_tiles(height, width, tile, overlap)
    assert list(plan.ys) == _starts(height, min(tile, height), overlap)
    assert list(plan.xs) == _starts(width, min(tile, width), overlap)
    got, rows, reads = _run(image, tile, overlap, classes, "gaussian", tile_batch, strips=True)
    expected = _reference(image, tile, overlap, classes, "gaussian")
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=1e-5)
    # every row exactly once, in order; one read per tile row
    assert [y for y, _ in rows] == [sum(n for _, n in rows[:i]) for i in range(len(rows))]
    assert sum(n for _, n in rows) == height
    assert reads == list(plan.ys)


def test_strip_reads_give_the_same_bits_as_tile_reads():
    image = _image(75, 130, seed=9)
    by_strip, _, _ = _run(image, 32, 0.25, 2, "gaussian", 3, strips=True)
    by_tile, _, _ = _run(image, 32, 0.25, 2, "gaussian", 3, strips=False)
    assert torch.equal(by_strip, by_tile)


def test_constant_blend_without_overlap_is_each_tiles_prediction():
    """Overlap 0, constant window: interior pixels are their one tile's output; the flush tiles are averaged."""
    height, width, tile = 70, 90, 32  # 70 = 2 * 32 + 6: the last tile row starts at 38 and overlaps the second
    image = _image(height, width, seed=4)
    got, _, _ = _run(image, tile, 0.0, 1, "constant", 2, strips=True)
    expected = _reference(image, tile, 0.0, 1, "constant")
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)
    # pixels covered by the first tile only are that tile's prediction, bit for bit
    first = _stub(1)(image[None, :, :tile, :tile])[0]
    assert torch.equal(got[:, :tile, :tile], first)


class _SyncRecorder(TorchFunctionMode):
    """Records tensor calls that make the host wait for the device (or copy to the host)."""

    SYNCS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        kwargs = kwargs or {}
        if name in self.SYNCS:
            self.calls.append(name)
        if name == "to" and any(isinstance(a, (torch.device, str)) for a in list(args[1:]) + list(kwargs.values())):
            self.calls.append("to(device)")
        return func(*args, **kwargs)


def test_run_tiled_never_waits_for_the_device():
    """No .item()/.cpu()/bool() on tensors while tiling: nothing would block a GPU stream per tile.

    The one transfer allowed is the blending window's, once per run (made on the host, moved to
    the predictor's device).
    """
    image = _image(83, 157, seed=1)
    plan = plan_tiles(83, 157, 32, 0.25)
    assert plan.count >= 15
    predict = _stub(2)
    with _SyncRecorder() as recorder:
        run_tiled(predict, None, plan, 2, lambda y0, probs: None, "gaussian", 4,
                  read_strip=lambda y0, y1: image[:, y0:y1])
    assert recorder.calls == ["to(device)"]


def test_accumulator_lives_on_the_predictors_device():
    """With a strip and a predictor on the meta device, blending happens there (nothing is moved to the CPU)."""
    plan = plan_tiles(50, 70, 32, 0.25)
    devices = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        assert batch.device.type == "meta"
        return torch.empty(batch.shape[0], 2, batch.shape[2], batch.shape[3], device="meta")

    run_tiled(predict, None, plan, 2, lambda y0, probs: devices.append(probs.device.type), "gaussian", 2,
              read_strip=lambda y0, y1: torch.empty(3, y1 - y0, 70, device="meta"))
    assert devices == ["meta"] * len(plan.ys)


def test_run_tiled_needs_a_reader():
    with pytest.raises(ValueError, match="reader"):
        run_tiled(_stub(1), None, plan_tiles(10, 10, 8, 0.0), 1, lambda y0, p: None)


@pytest.mark.parametrize("row,per_tile,budget,expected", [
    (21, 100, 1600, 7),    # 16 affordable: 7 divides 21 (one shape, 3 calls)
    (21, 100, 2100, 21),   # the whole row fits
    (23, 100, 1600, 12),   # prime row: 2 calls of 12 and 11
    (21, 100, 50, 1),      # not even one tile fits the budget: still 1
    (8, 100, 700, 4),      # 7 affordable: 4 divides 8
])
def test_choose_tile_batch(row, per_tile, budget, expected):
    got = choose_tile_batch(row, per_tile, budget)
    assert got == expected
    assert 1 <= got <= row and (got == 1 or got * per_tile <= budget)


def test_segment_runs_strips_and_reports_batch_and_speed():
    """segment() on odd sizes with a batch that does not divide the row: the one-pass result, exactly."""
    torch.manual_seed(0)
    images = torch.rand(2, 77, 141, 3)
    net = PointwiseNet(classes=3, seed=2)
    result = segment(net, plain_meta(classes=3), images, tile_size=32, overlap=0.25, tile_batch=3,
                     class_mode="all", speed="auto")
    with torch.no_grad():
        whole = torch.softmax(net(images.permute(0, 3, 1, 2)), dim=1).reshape(6, 77, 141)
    torch.testing.assert_close(result.probabilities, whole, atol=1e-5, rtol=0)
    labels = whole.reshape(2, 3, 77, 141).argmax(1)
    masks = (labels[:, None] == torch.arange(3)[None, :, None, None]).float().reshape(6, 77, 141)
    assert torch.equal(result.masks, masks)
    assert result.tile_batch == 3 and result.speed == "exact"  # auto is exact on the CPU
    assert segment(net, plain_meta(classes=3), images[:1], tile_size=32).tile_batch == 4


def test_segment_refuses_bad_speed_and_tile_batch():
    images = torch.rand(1, 16, 16, 3)
    with pytest.raises(InputError, match="speed 'turbo'"):
        segment(PointwiseNet(), plain_meta(), images, speed="turbo")
    with pytest.raises(InputError, match="tile_batch 0"):
        segment(PointwiseNet(), plain_meta(), images, tile_batch=0)


def test_value_checks_span_chunks():
    """Range and NaN checks see every chunk: a dip below 0 in the first rows, 8-bit values in the last."""
    images = torch.full((2, 10, 6, 3), 0.5)
    images[0, 0, 0, 0] = -0.25
    images[1, 9, 5, 2] = 200.0
    plan = inspect_images(images, 3, rows_per_chunk=3)
    assert plan.scale == 255.0 and plan.clamp
    images[1, 7, 1, 1] = math.nan
    images[0, 4, 2, 0] = math.inf
    with pytest.raises(InputError, match="2 NaN or infinite"):
        inspect_images(images, 3, rows_per_chunk=3)


@pytest.mark.parametrize("staged", [True, False])
def test_row_writer_puts_every_row_of_every_image_in_place(staged):
    """The staged writer (pinned buffer + deferred host copy on CUDA) holds back one row and flushes it."""
    gen = torch.Generator().manual_seed(5)
    batch, classes, height, width, tile_h = 2, 3, 29, 17, 8
    probs = torch.softmax(torch.randn(batch, classes, height, width, generator=gen), dim=1)
    out_p = torch.full((batch * classes, height, width), -1.0)
    out_m = torch.full((batch * classes, height, width), -1.0)

    def to_planes(p):  # class mode "all": every class and its argmax mask
        labels = p.argmax(0)
        return p, (labels[None] == torch.arange(p.shape[0])[:, None, None]).float()

    writer = RowWriter(out_p, out_m, classes, to_planes, torch.device("cpu"), tile_h, width, staged=staged)
    assert (writer.stage_p is not None) == staged
    for b in range(batch):
        for y0, rows in ((0, 6), (6, 6), (12, 6), (18, 8), (26, 3)):  # uneven rows, the last one short
            writer(b, y0, probs[b, :, y0:y0 + rows].clone())
            if staged and (b, y0) != (0, 0):
                assert writer.pending is not None  # the row waits in staging until the next one arrives
    writer.flush()
    assert writer.pending is None
    expected_m = (probs.argmax(1)[:, None] == torch.arange(classes)[None, :, None, None]).float()
    assert torch.equal(out_p, probs.reshape(batch * classes, height, width))
    assert torch.equal(out_m, expected_m.reshape(batch * classes, height, width))


def test_segment_node_speed_input(standalone_host):
    """The node's optional speed: auto is exact on the CPU host; fast (folded norms) agrees with exact."""
    from unet_lab.nodes.segmentation import UNetLabLoadSegmentationUNet, UNetLabSegmentImage

    spec = UNetLabSegmentImage.INPUT_TYPES()["optional"]["speed"]
    assert list(spec[0]) == ["auto", "exact", "fast", "compiled"] and spec[1]["default"] == "auto"
    seg, _ = UNetLabLoadSegmentationUNet().load("(new) unet", depth=2, base_channels=4, classes=1, seed=3)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them changes the weights
        for m in seg.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    images = torch.rand(1, 70, 90, 3, generator=torch.Generator().manual_seed(1))
    node = UNetLabSegmentImage()
    auto = node.segment(seg, images, tile_size=32, speed="auto")["result"]
    fast = node.segment(seg, images, tile_size=32, speed="fast")["result"]
    assert "speed exact" in auto[3] and "speed fast" in fast[3]
    torch.testing.assert_close(fast[1], auto[1], atol=1e-5, rtol=0)
