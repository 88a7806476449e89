"""Loading and dropping models does not leak: 50 cycles grow RSS by less than 5%.

Measured in a fresh interpreter (so other tests' allocations do not blur it): VmRSS from
/proc/self/status after gc.collect(), once after 5 warm-up cycles and again after 50 more. Each
cycle loads a reduced-config UNet file (~8 MB of weights) through load_unet and the standalone
host's model creation, runs one forward pass, and drops it; a segmentation checkpoint is loaded
(load_segmentation), run and dropped the same way. A leak of one model per cycle would be
~400 MB, far above the 5% bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pack_support import REPO_ROOT

SCRIPT = textwrap.dedent(r'''
    import gc, json, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from pack_support import load_pack
    load_pack()
    from fixtures_hardening import make_host, tiny_unet_state_dict, tiny_seg_model
    from unet_lab.unet_core.unet_config import UNetConfig
    from unet_lab.unet_core.checkpoints.writer import save_unet
    from unet_lab.unet_core.checkpoints.loader import load_unet
    from unet_lab.unet_core.segmentation.checkpoint import SegmentationMeta, load_segmentation, save_segmentation
    from unet_lab.unet_core.segmentation.registry import build_model

    def rss():
        gc.collect()
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    base = Path(sys.argv[1])
    host = make_host(base)
    config = UNetConfig(block_out_channels=(64, 128), layers_per_block=1, transformer_layers_per_block=(1, 1),
                        num_attention_heads=(2, 2), cross_attention_dim=64, norm_num_groups=8)
    unet_path = save_unet(base / "u.safetensors", tiny_unet_state_dict(config), config)
    seg = build_model("unet", in_channels=3, out_channels=2, depth=3, base_channels=32)
    seg_path = save_segmentation(base / "s.safetensors", seg, SegmentationMeta.for_model(seg))
    del seg

    def unet_cycle():
        sd, spec = load_unet(unet_path)
        model = host.model_from_unet_state_dict(sd, spec, None)
        with torch.no_grad():
            model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 2, 64))
        return sum(t.numel() * t.element_size() for t in sd.values())

    def seg_cycle():
        model, meta = load_segmentation(seg_path)
        with torch.no_grad():
            model(meta.normalize(torch.rand(1, 3, 16, 16)))
        return sum(t.numel() * t.element_size() for t in model.state_dict().values())

    out = {}
    for name, cycle in (("unet", unet_cycle), ("segmentation", seg_cycle)):
        size = 0
        for _ in range(5):
            size = cycle()
        before = rss()
        for _ in range(50):
            cycle()
        after = rss()
        out[name] = {"model_bytes": size, "rss_before": before, "rss_after": after}
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_load_drop_cycles_do_not_grow_rss(tmp_path):
    script = tmp_path / "cycles.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(REPO_ROOT / "tests")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, r in result.items():
        growth = (r["rss_after"] - r["rss_before"]) / r["rss_before"]
        print(f"{name}: model {r['model_bytes'] / 1e6:.1f} MB, RSS {r['rss_before'] / 1e6:.0f} -> "
              f"{r['rss_after'] / 1e6:.0f} MB ({100 * growth:+.2f}%)")
        # the bound means something only if 50 leaked models would break it
        assert 50 * r["model_bytes"] > 0.05 * r["rss_before"], f"{name}: model too small to detect a leak"
        assert growth < 0.05, f"{name}: RSS grew {100 * growth:.1f}% over 50 load/drop cycles"
