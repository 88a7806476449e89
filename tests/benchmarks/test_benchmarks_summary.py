"""``benchmarks/run_all.py`` turns the scripts' JSON into one row per figure with its target.

Checked on synthetic outputs made here, in the shapes the scripts write (no stored run is read),
and on the folder a run writes into (``benchmarks/results/<device kind>/``)."""

from __future__ import annotations

import json

import pytest

from pack_support import REPO_ROOT, load_script


@pytest.fixture(scope="module")
def run_all():
    return load_script("benchmarks/run_all.py")


def _by_figure(rows):
    return {r["figure"]: r for r in rows}


def _segmentation_arch(reference: str, target: float, fast: float, compiled: float | None) -> dict:
    ratios = {"ours_fast": fast} if compiled is None else {"ours_fast": fast, "ours_compiled": compiled}
    return {"target": {"available": True, "reference": reference, "target": target, "ratios": ratios,
                       "pass": {name: value >= target for name, value in ratios.items()}}}


def _gate_result(family: str, paired: float, gpu: float | None, comfy_way: float | None) -> dict:
    variants = {"unpatched": {"overhead_paired_pct": 0.0, "overhead_pct": 0.0},
                "gate all levels": {"overhead_paired_pct": paired, "overhead_pct": paired + 0.5}}
    if gpu is not None:
        variants["gate all levels"]["gpu_overhead_pct"] = gpu
    if comfy_way is not None:
        variants["gate all levels, UNet concatenates"] = {"overhead_paired_pct": comfy_way}
    return {"family": family, "variants": variants}


SYNTHETIC = {
    "load": {"families": {"sd1": {"time_ratio": 0.94, "our_rss_growth_over_file": 1.003,
                                  "our_peak_rss_over_file": 1.2, "reference": {"peak_rss_over_file": 1.19}}}},
    "unet": {"results": [{"case": "sd15", "ratio_ours_over_diffusers": 0.88,
                          "ratio_compiled_ours_over_diffusers": 0.97, "compile": {"scope": "blocks"}},
                         {"case": "sdxl", "ratio_ours_over_diffusers": 1.02}]},
    "lora": {"step": {"paired_patched_over_baked": 1.003, "paired_patched_over_unpatched": 1.04,
                      "patched_ms": 1.0, "baked_ms": 1.0, "ratio": 1.0}},
    "skip_gate": {"results": [_gate_result("sd1", 2.9, 0.8, 3.4), _gate_result("sdxl", -0.00001, None, None)]},
    "segmentation": {"architectures": {
        "unet": _segmentation_arch("plain eager U-Net", 1.5, 1.65, 1.42),
        "smp_unet": {"target": {"available": False}},  # smp not installed: no row
        "attention_unet": _segmentation_arch("MONAI AttentionUnet eager", 1.5, 1.9, None)}},
    "tiled": {"image": [1, 8192, 8192, 3], "runs": {"fast": {"time_s": 0.5, "peak_gpu_gb": 2.4}}},
    "pixel_diffusion": {
        "steps": [{"case": "cifar10-32", "batch": 256, "variants": {"ours": {"ratio_to_diffusers": 0.79}}},
                  {"case": "celebahq-256", "batch": 8, "variants": {"ours": {"ratio_to_diffusers": 0.91}}},
                  {"case": "guided-256", "batch": 8, "variants": {"ours": {"median_ms": 68.0}}}],
        "ddim": [{"case": "ddim50-cifar10-32", "batch": 256, "variants": {"ours": {"ratio_to_diffusers": 0.74}}}]},
}


def test_every_benchmark_gives_its_rows_with_values_targets_and_verdicts(run_all):
    rows = run_all.table(SYNTHETIC)
    by = _by_figure(rows)
    assert len(by) == len(rows) == 21  # no figure twice
    assert by["load sd1 fp16: time ours / safetensors.load_file"] == \
        {"figure": "load sd1 fp16: time ours / safetensors.load_file", "value": 0.94, "unit": "x",
         "target": "<= 1.1", "pass": True}
    peak = by["load sd1 fp16: peak RSS incl. the Python+torch runtime / file size (ours; load_file: 1.190)"]
    assert peak["value"] == 1.2 and peak["pass"] is None
    assert by["diffusion UNet sd15 compiled (blocks): ours / diffusers"]["pass"] is True
    assert by["diffusion UNet sdxl eager: ours / diffusers"]["pass"] is False
    assert "diffusion UNet sdxl compiled (blocks): ours / diffusers" not in by  # not compiled in that run
    same = by["block-weighted LoRA: patched step / step of the same weights baked (SDXL)"]
    assert same["value"] == 1.003 and same["pass"] is True  # the paired figure, not the medians' ratio
    assert by["block-weighted LoRA: patched step / unpatched step (SDXL, other weights)"]["pass"] is None
    gate = {figure: row for figure, row in by.items() if figure.startswith("skip gate")}
    assert {figure: row["value"] for figure, row in gate.items()} == {
        "skip gate sd1 all levels: step overhead (paired median)": 2.9,
        "skip gate sd1 all levels: GPU kernel time overhead": 0.8,
        "skip gate sd1 all levels, UNet concatenates: step overhead (paired median)": 3.4,
        "skip gate sdxl all levels: step overhead (paired median)": 0.0,
        "skip gate sdxl all levels: GPU kernel time overhead": None}
    assert all(row["pass"] is None for row in gate.values())  # figures only: no per-step target here
    assert str(by["skip gate sdxl all levels: step overhead (paired median)"]["value"]) == "0.0"  # not -0.0
    assert by["unet fast / plain eager U-Net (fwd img/s)"]["pass"] is True
    assert by["unet compiled / plain eager U-Net (fwd img/s)"]["pass"] is False
    assert "attention_unet compiled / MONAI AttentionUnet eager (fwd img/s)" not in by
    assert not any(figure.startswith("smp_unet") for figure in by)
    assert by["8192x8192 tiled segmentation (fast): time"]["pass"] is True
    assert by["8192x8192 tiled segmentation (fast): peak GPU memory"]["unit"] == "GB"
    assert by["pixel diffusion cifar10-32 b256 step: ours / diffusers UNet2DModel"]["pass"] is True
    assert by["pixel diffusion celebahq-256 b8 step: ours / diffusers UNet2DModel"]["pass"] is False
    ddim = by["pixel diffusion cifar10-32 b256 50-step DDIM sample: ours / diffusers UNet2DModel"]
    assert ddim["value"] == 0.74 and ddim["pass"] is None  # a figure beside the step goal
    assert not any("guided" in figure for figure in by)  # no diffusers model of that layout: no ratio


def test_render_gives_one_markdown_line_per_row(run_all):
    rows = run_all.table(SYNTHETIC)
    text = run_all.render(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 2 and lines[0] == "| figure | value | target | met |"
    assert "| unet compiled / plain eager U-Net (fwd img/s) | 1.42 x | >= 1.5 | no |" in lines
    assert "| skip gate sdxl all levels: GPU kernel time overhead | - | - | - |" in lines
    assert "| -0 " not in text


def test_targets_at_their_edges(run_all):
    results = {
        "unet": {"results": [{"case": "sd15", "ratio_ours_over_diffusers": 1.0,
                              "ratio_compiled_ours_over_diffusers": 1.051, "compile": {"scope": "full"}}]},
        "load": {"families": {"sd1": {"time_ratio": 1.1, "our_rss_growth_over_file": 1.16,
                                      "our_peak_rss_over_file": 1.3, "reference": {"peak_rss_over_file": 1.3}}}},
        "tiled": {"image": [1, 8192, 8192, 3], "runs": {"fast": {"time_s": 2.01, "peak_gpu_gb": 8.0}}},
    }
    rows = _by_figure(run_all.table(results))
    assert rows["diffusion UNet sd15 eager: ours / diffusers"]["pass"] is True  # at most 1.0
    assert rows["diffusion UNet sd15 compiled (full): ours / diffusers"]["pass"] is False
    assert rows["load sd1 fp16: time ours / safetensors.load_file"]["pass"] is True
    assert rows["load sd1 fp16: peak RSS growth while loading / file size"]["pass"] is False
    assert rows["8192x8192 tiled segmentation (fast): time"]["pass"] is False
    assert rows["8192x8192 tiled segmentation (fast): peak GPU memory"]["pass"] is True


def test_round_orders_are_reproducible_permutations_that_move_every_variant():
    """The step benchmarks' order of variants: each round a permutation, the same for a seed, and
    over the rounds every variant runs in every place and after every other one."""
    rounds = load_script("benchmarks/_rounds.py")
    names = ["unpatched", "gate", "eager", "strength 0"]
    orders = rounds.round_orders(names, 200, seed=3)
    assert orders == rounds.round_orders(names, 200, seed=3) != rounds.round_orders(names, 200, seed=4)
    assert all(sorted(order) == sorted(names) for order in orders)
    places = {(name, order.index(name)) for order in orders for name in names}
    assert places == {(name, place) for name in names for place in range(len(names))}
    follows = {(a, b) for order in orders for a, b in zip(order[:-1], order[1:], strict=True)}
    assert follows == {(a, b) for a in names for b in names if a != b}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_comfyui_unet_arguments_are_those_comfyui_detects(monkeypatch, family):
    """``bench_skip_gate --comfyui`` builds ComfyUI's UNetModel from our config: the arguments are
    those ComfyUI's model detection gives an SD1.5 / SDXL UNet (transformer depths per input and
    per output block, listed shallow level first; one head count or one head width), and our
    LDM config reader turns them back into the same config."""
    from unet_lab.unet_core.diffusion.ldm_config import config_from_ldm_unet_config
    from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG

    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    bench = load_script("benchmarks/bench_skip_gate.py")
    expected = {
        "sd1": {"model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
                "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
                "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "context_dim": 768,
                "num_heads": 8, "use_linear_in_transformer": False},
        "sdxl": {"model_channels": 320, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
                 "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
                 "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "context_dim": 2048,
                 "num_head_channels": 64, "use_linear_in_transformer": True, "num_classes": "sequential",
                 "adm_in_channels": 2816},
    }[family]
    config = {"sd1": SD1_CONFIG, "sdxl": SDXL_CONFIG}[family]
    kwargs = bench.comfy_unet_kwargs(config)
    assert {k: kwargs[k] for k in expected} == expected
    assert ("num_head_channels" in kwargs) == (family == "sdxl") and ("num_heads" in kwargs) == (family == "sd1")
    assert config_from_ldm_unet_config(kwargs) == config



@pytest.mark.parametrize(("name", "kind"), [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                            ("NVIDIA H100 PCIe", "h100"), ("NVIDIA A100-SXM4-80GB", "a100"),
                                            ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("Tesla T4", "t4"),
                                            ("cpu", "cpu")])
def test_device_kind_names_the_results_folder(run_all, name, kind):
    assert run_all.device_kind(name) == kind


def test_a_run_replaces_its_benchmarks_files_and_summarises_the_folder(run_all, tmp_path, monkeypatch):
    """A run writes each benchmark's JSON into the folder (a failed benchmark leaves none behind),
    merges the exit statuses with an earlier command's, and writes the table of the whole folder."""
    fake = tmp_path / "fake_bench.py"
    fake.write_text("import json, sys\n"
                    "out, code = sys.argv[2], int(sys.argv[3])\n"
                    "if code == 0:\n"
                    "    json.dump({'results': [{'case': 'sd15', 'ratio_ours_over_diffusers': 0.9}]}, open(out, 'w'))\n"
                    "sys.exit(code)\n")
    monkeypatch.setattr(run_all, "BENCHMARKS", {
        "unet": (str(fake), ["--json", "{json}", "0"], []),
        "tiled": (str(fake), ["--json", "{json}", "3"], []),
        "load": (str(fake), ["--json", "{json}", "0"], [])})
    out = tmp_path / "results" / "h100"
    out.mkdir(parents=True)
    (out / "tiled.json").write_text(json.dumps(SYNTHETIC["tiled"]))  # an earlier run's, now stale
    (out / "run_status.json").write_text(json.dumps({"load": {"returncode": 0, "seconds": 5.0}}))
    (out / "load.json").write_text(json.dumps(SYNTHETIC["load"]))  # from the earlier command: kept
    assert run_all.main(["--only", "unet,tiled", "--out", str(out)]) == 1  # tiled failed
    assert not (out / "tiled.json").exists()
    status = json.loads((out / "run_status.json").read_text())
    assert sorted(status) == ["load", "tiled", "unet"] and status["tiled"]["returncode"] == 3
    summary = json.loads((out / "summary.json").read_text())
    figures = [row["figure"] for row in summary["rows"]]
    assert "diffusion UNet sd15 eager: ours / diffusers" in figures
    assert "load sd1 fp16: time ours / safetensors.load_file" in figures
    assert not any("tiled" in figure for figure in figures)
    assert (out / "summary.md").read_text() == run_all.render(summary["rows"]) + "\n"


def test_default_folder_is_the_results_folder_of_the_device_kind(run_all, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    assert run_all._default_out(False) == REPO_ROOT / "benchmarks" / "results" / "h100"
    assert run_all._default_out(True).parts[-2:] == ("bench_out", "quick")
