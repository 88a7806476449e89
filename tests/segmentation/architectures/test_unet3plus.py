"""U-Net 3+: the authors' key layout, parity with their code, deep supervision and the CGM option.

``tests/data/unet3plus_reference.safetensors`` was recorded once by running the authors' code
(ZJUGiveLab/UNet-Version at 8ecd067, ``models/UNet_3Plus.py``, ``layers.py``,
``init_weights.py``, copied outside this repository with the filter list reduced by
``sed 's/filters = \\[64, 128, 256, 512, 1024\\]/filters = [2, 4, 8, 16, 32]/'``): for
``UNet_3Plus`` (prefix ``plain.``) and ``UNet_3Plus_DeepSup`` (``deepsup.``) built with
``in_channels=3, n_classes=2`` after ``torch.manual_seed(0)``, every BatchNorm's running mean,
running var and bias were set from ``torch.Generator().manual_seed(1)`` (``randn * 0.1``,
``rand + 0.5``, ``randn * 0.1``), the model put in eval mode, and a ``torch.rand(1, 3, 48, 64)``
input from the same generator run through it. Stored: ``{prefix}.state.*`` (the state dict),
``{prefix}.input``, ``{prefix}.logits`` (``outconv1``'s output, caught by a forward hook) and
``{prefix}.prob{k}`` (the model's sigmoid outputs, k = 1..5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unet_lab.unet_core.errors import SegmentationError
from unet_lab.unet_core.segmentation.adapters.unet3plus_authors import (
    looks_like_unet3plus_authors,
    rename_unet3plus_authors,
    strip_module_prefix,
    unet3plus_authors_hparams,
)
from unet_lab.unet_core.segmentation.architectures.base import resolve_hparams
from unet_lab.unet_core.segmentation.architectures.unet3plus import (
    UNet3Plus,
    deep_supervision_loss,
    side_weights,
)

FIXTURE = Path(__file__).resolve().parents[2] / "data" / "unet3plus_reference.safetensors"


def build(**hparams) -> UNet3Plus:
    cfg = resolve_hparams("unet3plus", UNet3Plus.defaults, hparams)
    UNet3Plus.validate(cfg)
    return UNet3Plus(**cfg)


def authors_shapes(filters: list[int], cin: int, classes: int, deep_sup: bool, cgm: bool) -> dict[str, tuple]:
    """Key -> shape table of the authors' UNet_3Plus* written from their __init__ (5 levels)."""
    cat = filters[0]
    up = cat * 5
    table: dict[str, tuple] = {}

    def conv(name: str, co: int, ci: int, k: int = 3) -> None:
        table[f"{name}.weight"] = (co, ci, k, k)
        table[f"{name}.bias"] = (co,)

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            table[f"{name}.{p}"] = (c,)
        table[f"{name}.num_batches_tracked"] = ()

    prev = cin
    for k, f in enumerate(filters, 1):
        for m in (1, 2):
            conv(f"conv{k}.conv{m}.0", f, prev if m == 1 else f)
            bn(f"conv{k}.conv{m}.1", f)
        prev = f
    for b in (4, 3, 2, 1):  # decoder stage hd{b}
        for a in range(1, 6):
            if a < b:
                name, ci = f"h{a}_PT_hd{b}", filters[a - 1]
            elif a == b:
                name, ci = f"h{a}_Cat_hd{b}", filters[a - 1]
            else:
                name, ci = f"hd{a}_UT_hd{b}", filters[4] if a == 5 else up
            conv(f"{name}_conv", cat, ci)
            bn(f"{name}_bn", cat)
        conv(f"conv{b}d_1", up, up)
        bn(f"bn{b}d_1", up)
    conv("outconv1", classes, up)
    if deep_sup:
        for k in (2, 3, 4):
            conv(f"outconv{k}", classes, up)
        conv("outconv5", classes, filters[4])
    if cgm:
        conv("cls.1", 2, filters[4], 1)
    return table


@pytest.mark.parametrize("deep_sup,cgm", [(False, False), (True, False), (True, True)],
                         ids=["UNet_3Plus", "DeepSup", "DeepSup_CGM"])
def test_full_size_key_and_shape_table_maps_onto_ours(deep_sup, cgm):
    table = authors_shapes([64, 128, 256, 512, 1024], 3, 1, deep_sup, cgm)
    hp = unet3plus_authors_hparams({k: torch.empty(v, device="meta") for k, v in table.items()})
    assert hp == {"in_channels": 3, "out_channels": 1, "depth": 4, "base_channels": 64, "norm": "batch",
                  "cat_channels": 64, "deep_supervision": deep_sup, "classification_guided": cgm}
    renamed = rename_unet3plus_authors(table)
    with torch.device("meta"):
        ours = build(**hp)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == renamed


def test_paper_widths():
    with torch.device("meta"):
        model = build()
    assert model.fusions["d0"][0].weight.shape == (320, 320, 3, 3)  # UpChannels 320 at CatChannels 64


@pytest.mark.parametrize("prefix", ["plain", "deepsup"])
def test_forward_matches_authors_code(prefix):
    data = load_file(FIXTURE)
    state = {k[len(prefix) + 7:]: v for k, v in data.items() if k.startswith(f"{prefix}.state.")}
    assert looks_like_unet3plus_authors(state)
    assert {k: tuple(v.shape) for k, v in state.items()} == authors_shapes([2, 4, 8, 16, 32], 3, 2,
                                                                           prefix == "deepsup", False)
    model = build(**unet3plus_authors_hparams(state)).eval()
    model.load_state_dict(rename_unet3plus_authors(strip_module_prefix(state)), strict=True)
    x = data[f"{prefix}.input"]
    with torch.no_grad():
        logits = model(x)
        heads = model.forward_heads(x)
    torch.testing.assert_close(logits, data[f"{prefix}.logits"], atol=1e-5, rtol=0)
    probs = sorted(k for k in data if k.startswith(f"{prefix}.prob"))
    assert len(heads) == len(probs)
    for head, key in zip(heads, probs, strict=True):
        torch.testing.assert_close(torch.sigmoid(head), data[key], atol=1e-5, rtol=0)


def test_data_parallel_prefix_and_unknown_key():
    data = load_file(FIXTURE)
    state = {"module." + k[12:]: v for k, v in data.items() if k.startswith("plain.state.")}
    assert looks_like_unet3plus_authors(strip_module_prefix(state))
    with pytest.raises(SegmentationError, match="unexpected key 'extra.weight'"):
        rename_unet3plus_authors({**strip_module_prefix(state), "extra.weight": torch.zeros(1)}, "x.pth")


def test_odd_sizes_and_backward():
    model = build(in_channels=3, out_channels=2, depth=3, base_channels=4, deep_supervision=True)
    x = torch.rand(2, 3, 37, 50, requires_grad=True)
    out = model.outputs(x)
    assert [tuple(h.shape) for h in out.heads] == [(2, 2, 37, 50)] * 4
    assert out.weights == side_weights(3, 4) == [1.0, 0.25, 0.25, 0.25]
    target = torch.randint(0, 2, (2, 37, 50))
    loss = deep_supervision_loss(out, target, torch.nn.functional.cross_entropy)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_heads(x)[0])  # inference uses the full-res head only


def test_classification_guided_gates_absent_images_to_background():
    torch.manual_seed(0)
    model = build(in_channels=3, out_channels=1, depth=2, base_channels=4, classification_guided=True).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        presence = model.outputs(x).presence
        logits = model(x)
        model.classifier[1].bias.copy_(torch.tensor([10.0, -10.0]))  # always "absent"
        gated = model(x)
    assert presence.shape == (3,)
    assert torch.all(gated == -20.0)
    assert not torch.all(logits == -20.0) or bool((presence <= 0.5).all())
    model.train()
    out = model.outputs(x)
    loss = deep_supervision_loss(out, torch.ones(3, 1, 16, 16), torch.nn.functional.binary_cross_entropy_with_logits)
    loss.backward()
    assert model.classifier[1].weight.grad is not None


def test_bad_hparams():
    with pytest.raises(SegmentationError, match="cat_channels"):
        build(cat_channels=-1)
    with pytest.raises(SegmentationError, match="deep_supervision"):
        build(deep_supervision="yes")
    with pytest.raises(SegmentationError, match="is_batchnorm=False"):
        unet3plus_authors_hparams({"conv1.conv1.0.weight": torch.zeros(2, 3, 3, 3)}, "nobn.pth")


@pytest.mark.slow
def test_held_out_dice_at_least_unets_at_the_same_budget():
    """Both trained the same way (60 steps of 8 synthetic 64 px images, widths 8..64, seed 0), scored on 32
    unseen images. Measured on 2 loaded CPU cores: U-Net 0.9490, U-Net 3+ 0.9604."""
    from unet_lab.unet_core.segmentation.registry import build_model
    from unet_lab.unet_core.segmentation.training.data import dataset_from_batches
    from unet_lab.unet_core.segmentation.training.loop import TrainConfig, held_out_dice, train_segmentation
    from unet_lab.unet_core.segmentation.training.synthetic import make_synthetic

    data = dataset_from_batches(*make_synthetic(64, 64, seed=0), "images", "masks")
    held = dataset_from_batches(*make_synthetic(32, 64, seed=12345), "images", "masks")
    dice = {}
    for arch in ("unet", "unet3plus"):
        torch.manual_seed(0)
        model = build_model(arch, in_channels=3, out_channels=1, depth=3, base_channels=8)
        config = TrainConfig(steps=60, batch_size=8, val_fraction=0.0, seed=0)
        train_segmentation(model, data, config)
        dice[arch] = held_out_dice(model, held, config)
    assert dice["unet3plus"] >= dice["unet"] - 0.005, dice
