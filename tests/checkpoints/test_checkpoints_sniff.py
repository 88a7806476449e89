"""Sniffing real-shape files (sparse, headers only): family, layout, config, counts, hints, timing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import fixtures_checkpoints as fx
from unet_lab.unet_core.checkpoints import safetensors_header
from unet_lab.unet_core.checkpoints.report import describe
from unet_lab.unet_core.checkpoints.sniff import sniff
from unet_lab.unet_core.checkpoints.spec import require_unet
from unet_lab.unet_core.unet_config import SD1_CONFIG, SD2_CONFIG, SDXL_CONFIG

log = logging.getLogger(__name__)
FAMILIES = ["sd1", "sd2", "sdxl", "sd1_inpaint", "sd2_inpaint", "sdxl_inpaint"]


def _count_header_reads(monkeypatch) -> tuple[list[int], list[Path]]:
    """Bytes each ``read`` of the header reader returns from now on (its header cache cleared), and
    the files it opens."""
    read: list[int] = []
    read_from: list[Path] = []

    def counting_open(p, mode="rb"):
        read_from.append(Path(p))
        return CountingFile(open(p, mode))

    class CountingFile:
        def __init__(self, f):
            self._f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def read(self, n=-1):
            data = self._f.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(safetensors_header, "open", counting_open, raising=False)
    safetensors_header._CACHE.clear()
    return read, read_from


@pytest.mark.parametrize("layout", fx.LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sniff_real_shapes_each_family_and_layout(tmp_path, monkeypatch, family, layout):
    path = fx.write_unet(tmp_path, family, layout)
    read, read_from = _count_header_reads(monkeypatch)
    spec = sniff(path)
    # the header alone is read (what makes sniffing instant on a 5 GB file): a 1 KiB peek for
    # placeholders, then 8 length bytes + the JSON; never the tensor data after it
    (opened,) = set(read_from)  # a diffusers folder: the weight file inside it
    header_bytes = 8 + int.from_bytes(opened.read_bytes()[:8], "little")
    assert 0 < sum(read) <= 1024 + header_bytes
    assert 1024 + header_bytes < opened.stat().st_size
    assert spec.kind == "unet" and spec.family == family and spec.layout == layout
    base = family.replace("_inpaint", "")
    expected_params = fx.REAL_PARAMS_M[base]
    if family.endswith("_inpaint"):  # 5 more input channels on conv_in
        expected_params += 5 * 320 * 9 / 1e6
    assert spec.unet_params / 1e6 == pytest.approx(expected_params, abs=0.06)
    assert spec.unet_keys == fx.REAL_KEYS[base]
    assert spec.config == fx.FAMILY_CONFIGS[family]
    assert spec.dtypes == {"F16": fx.REAL_KEYS[base]}
    assert spec.unet_prefix == ("model.diffusion_model." if layout == "ldm_prefixed" else "")
    assert spec.file_size > spec.unet_bytes >= 2 * spec.unet_params  # real size (sparse), 2 bytes a param
    assert require_unet(spec) is spec


def test_real_configs_are_recovered_exactly_from_shapes(tmp_path):
    for family, config in (("sd1", SD1_CONFIG), ("sd2", SD2_CONFIG), ("sdxl", SDXL_CONFIG)):
        assert sniff(fx.write_unet(tmp_path, family, "ldm")).config == config


def test_full_checkpoint_names_its_parts(tmp_path):
    path = fx.write_header_file(tmp_path / "sd_xl_base_1.0.safetensors", fx.full_checkpoint_shapes("sdxl"))
    spec = sniff(path)
    assert spec.kind == "full_checkpoint" and spec.family == "sdxl" and spec.layout == "ldm_prefixed"
    assert spec.unet_keys == 1680
    names = {c.name: c for c in spec.components}
    assert {"vae", "text_encoder", "text_encoder_2"} <= set(names)
    assert names["vae"].prefix == "first_stage_model."
    assert names["text_encoder"].keys == len(fx.clip_text_shapes())
    require_unet(spec)  # a full checkpoint is accepted: its UNet is taken
    text = describe(spec)
    assert "full checkpoint" in text and "vae" in text and "text_encoder_2" in text


def test_sd1_full_checkpoint(tmp_path):
    spec = sniff(fx.write_header_file(tmp_path / "v1-5-pruned-emaonly.safetensors", fx.full_checkpoint_shapes("sd1")))
    assert (spec.kind, spec.family) == ("full_checkpoint", "sd1")
    assert spec.component("text_encoder").prefix == "cond_stage_model."
    assert spec.prediction == "epsilon"


@pytest.mark.parametrize("family,name", [("sd2", "sd_turbo.safetensors"), ("sdxl", "sd_xl_turbo_1.0_fp16.safetensors")])
def test_turbo_hint_from_the_name(tmp_path, family, name):
    spec = sniff(fx.write_unet(tmp_path, family, "ldm", name=name))
    assert spec.turbo is not None and spec.turbo.kind == "turbo"
    assert spec.turbo.steps == (1, 4) and spec.turbo.cfg == 1.0
    assert name in spec.turbo.source
    assert spec.prediction == "epsilon" and "Turbo" in spec.prediction_source
    assert "1-4 steps, cfg 1" in describe(spec)


def test_turbo_hint_from_modelspec_title(tmp_path):
    spec = sniff(fx.write_unet(tmp_path, "sdxl", "ldm", name="model.safetensors",
                               metadata={"modelspec.title": "SDXL Turbo"}))
    assert spec.turbo is not None and "modelspec.title" in spec.turbo.source


def test_no_turbo_hint_for_a_plain_model(tmp_path):
    spec = sniff(fx.write_unet(tmp_path, "sd1", "ldm", name="v1-5.safetensors"))
    assert spec.turbo is None


@pytest.mark.parametrize("metadata,extra,name,expected,source", [
    ({"modelspec.prediction_type": "v"}, None, "a.safetensors", "v_prediction", "modelspec.prediction_type"),
    ({"modelspec.prediction_type": "epsilon"}, None, "a_vpred.safetensors", "epsilon", "modelspec.prediction_type"),
    ({"modelspec.predict_key": "v"}, None, "a.safetensors", "v_prediction", "modelspec.predict_key"),
    ({}, {"v_pred": (0,), "ztsnr": (0,)}, "a.safetensors", "v_prediction", "key v_pred"),
    ({}, {"edm_vpred.sigma_max": ()}, "a.safetensors", "v_prediction", "edm_vpred"),
    ({}, {"edm_mean": (1, 4, 1, 1), "edm_std": (1, 4, 1, 1)}, "a.safetensors", "unknown", "edm_mean"),
    ({}, None, "noobai-v-pred-1.0.safetensors", "v_prediction", "file name"),
    ({}, None, "plain.safetensors", "epsilon", "default for sdxl"),
])
def test_prediction_type_and_its_source(tmp_path, metadata, extra, name, expected, source):
    entries = dict(fx.unet_shapes("sdxl", "ldm"))
    if extra:
        entries.update({k: ("F32", v) for k, v in extra.items()})
    spec = sniff(fx.write_header_file(tmp_path / name, entries, metadata))
    assert spec.prediction == expected
    assert source in spec.prediction_source
    if extra and "ztsnr" in extra:
        assert "zero terminal SNR" in spec.prediction_detail
    assert spec.kind == "unet"  # marker keys are not mistaken for other components
    assert not [c for c in spec.components if c.name == "other"]


def test_sd2_prediction_is_left_open_by_the_header(tmp_path):
    spec = sniff(fx.write_unet(tmp_path, "sd2", "ldm", name="v2-1.safetensors"))
    assert spec.prediction == "unknown" and "SD2" in spec.prediction_source
    spec = sniff(fx.write_unet(tmp_path, "sd2", "ldm", name="v2-1_768-v-ema.safetensors"))
    assert spec.prediction == "v_prediction"


def test_describe_reports_what_a_user_needs(tmp_path):
    spec = sniff(fx.write_unet(tmp_path, "sd1", "ldm_prefixed", name="dreamshaper_8_unet.safetensors"))
    text = describe(spec)
    for part in ("SD1.x", "ldm_prefixed", "859.5 M", "F16", "epsilon", "1.72 GB", "model.diffusion_model."):
        assert part in text, part


def test_sniff_diffusers_single_file(tmp_path):
    path = fx.write_header_file(tmp_path / "unet_diffusers_layout.safetensors", fx.unet_shapes("sd2", "diffusers"))
    spec = sniff(path)
    assert (spec.kind, spec.family, spec.layout, spec.config_source) == ("unet", "sd2", "diffusers", "shapes")


def test_sniff_diffusers_folder_reads_config_json(tmp_path):
    folder = fx.write_unet(tmp_path, "sdxl", "diffusers")
    spec = sniff(folder)
    assert spec.format == "diffusers_folder" and spec.config_source == "config.json"
    assert spec.config == SDXL_CONFIG
    assert spec.weights_path.endswith("unet/diffusion_pytorch_model.safetensors")
    # the unet/ subfolder itself is also accepted
    assert sniff(folder / "unet").family == "sdxl"



def test_describe_says_what_a_non_unet_file_is(tmp_path):
    lora = describe(sniff(fx.write_header_file(tmp_path / "l.safetensors", fx.kohya_lora_shapes("sdxl"))))
    assert "LoRA for SDXL" in lora and "kohya" in lora
    vae = describe(sniff(fx.write_header_file(tmp_path / "v.safetensors", fx.vae_shapes())))
    assert "VAE only" in vae
    te = describe(sniff(fx.write_header_file(tmp_path / "t.safetensors", fx.clip_text_shapes())))
    assert "text encoder only" in te
