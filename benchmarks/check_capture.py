"""GPU correctness of Accelerate UNet: replayed outputs equal eager outputs bitwise.

For SD1.5, SDXL and an SD1.5 inpaint UNet (random weights made on the device, fp16), in our
standalone patcher and, with ``--comfyui PATH``, in ComfyUI's own UNet through ComfyUI's wrapper
executor (``_capture_setup.py``), each scenario runs eagerly and accelerated on several input sets
(the first accelerated call captures, the next ones replay new values through the static buffers)
and compares the outputs bit for bit:

- plain; cond-only batch 1 besides cond+uncond batch 2 (two graphs);
- LoRA 0.5, then LoRA 1.0 (a new capture, and the output moves as eager's does);
- skip gate 0.3 and 0.8, alone and with LoRA;
- after an unload to the CPU and a reload (weights at new addresses: a new capture).

Exit status 1 when any check fails. ``--device cpu`` runs the same on tiny configs, where every
accelerated call runs eagerly (and says why): a smoke run of the script and of the fallback.

    python benchmarks/check_capture.py --device cuda --comfyui ~/ComfyUI --json check.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from _capture_setup import ComfyHost, OurHost, Scenario, accelerator, bitwise_equal, configs, make_inputs, start

log = logging.getLogger("check_capture")


def _check(host, scenario: Scenario, accel, batch: int, size: int, device, dtype, label: str) -> dict:
    eager = host.runner(scenario)
    fast = host.runner(scenario, accel)
    captures_before = accel.stats.captures
    equal = True
    outputs = []
    with torch.inference_mode():
        for seed in range(3):
            inputs = make_inputs(host.config, batch, size, device, dtype, seed)
            a = fast(*inputs)
            b = eager(*inputs)
            equal = equal and bitwise_equal(a, b)
            outputs.append(b)
    result = {"check": label, "host": host.name, "bitwise_equal": equal,
              "new_captures": accel.stats.captures - captures_before,
              "finite": bool(torch.isfinite(outputs[0]).all())}
    log.info("%-8s %-40s equal=%s captures=+%d", host.name, label, equal, result["new_captures"])
    result["_output"] = outputs[0]
    return result


def check_host(host, device, dtype, size: int) -> list[dict]:
    accel = accelerator(max_graphs=16)
    results = [_check(host, Scenario(), accel, 2, size, device, dtype, "plain, cond+uncond batch 2"),
               _check(host, Scenario(cond_or_uncond=[0]), accel, 1, size, device, dtype, "plain, cond only batch 1")]
    lora = [_check(host, Scenario(lora=s), accel, 2, size, device, dtype, f"LoRA {s}") for s in (0.5, 1.0)]
    lora[1]["differs_from_previous_setting"] = not bitwise_equal(lora[0]["_output"], lora[1]["_output"])
    results += lora
    gates = [_check(host, Scenario(gate=s), accel, 2, size, device, dtype, f"skip gate {s}") for s in (0.3, 0.8)]
    gates[1]["differs_from_previous_setting"] = not bitwise_equal(gates[0]["_output"], gates[1]["_output"])
    results += gates
    results.append(_check(host, Scenario(lora=1.0, gate=0.8), accel, 2, size, device, dtype, "LoRA 1.0 + skip gate 0.8"))
    host.reload()
    results.append(_check(host, Scenario(), accel, 2, size, device, dtype, "plain, after unload and reload"))
    for r in results:
        r.pop("_output")
    summary = {"host": host.name, "captures": accel.stats.captures, "replays": accel.stats.replays,
               "eager_reasons": accel.stats.eager_reasons, "failures": accel.stats.failures,
               "capture_seconds": [round(s, 4) for s in accel.stats.capture_seconds],
               "pool_mib": [round(b / 2**20, 1) for b in accel.stats.pool_bytes]}
    log.info("%s: %s", host.name, accel.stats.summary().replace("\n", "; "))
    return results + [summary]


def passed(results: list[dict], on_gpu: bool) -> bool:
    ok = True
    for r in results:
        if "check" not in r:
            continue
        ok = ok and r["bitwise_equal"] and r.get("differs_from_previous_setting", True)
        if on_gpu:  # every scenario is a new signature or new weights: one capture each
            ok = ok and r["new_captures"] >= 1
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--comfyui", default=None, metavar="PATH", help="a ComfyUI checkout: check its UNet too")
    parser.add_argument("--families", default="sd1,sdxl,sd1_inpaint")
    parser.add_argument("--size", type=int, default=64, help="latent size (64 = 512 px)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    run = start(args)
    device, on_gpu, dtype = run.device, run.on_gpu, run.dtype
    size = args.size if on_gpu else 8
    report: dict = {**run.header, "families": {}}
    ok = True
    for family in args.families.split(","):
        config = configs(not on_gpu)[family]
        ours = OurHost(config, family, device, dtype)
        hosts = [ours] + ([ComfyHost(args.comfyui, ours, device, dtype)] if args.comfyui else [])
        report["families"][family] = {}
        for host in hosts:
            results = check_host(host, device, dtype, size)
            ok = ok and passed(results, on_gpu)
            report["families"][family][host.name] = results
        del ours, hosts
        if on_gpu:
            torch.cuda.empty_cache()
    report["passed"] = ok
    log.info("check_capture: %s", "PASSED" if ok else "FAILED")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
