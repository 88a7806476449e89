"""Long fuzz run: the hardening fuzz targets (tests/fixtures_hardening.py) with many more examples.

Usage: ``.venv/bin/python scripts/fuzz_long.py --examples 20000 [--targets a,b] [--seconds 300]``.
Prints, per target, the cases run (each reader call counts), the outcomes (documented error
classes or ok) and every failure with its reproducer (hypothesis' failing example). Exit
status 1 if any target failed. ``--seconds`` shares a wall-clock budget between the targets.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

log = logging.getLogger("fuzz_long")


def _only(exc: BaseException, kind: type) -> bool:
    """True if ``exc`` is ``kind`` or a group (FlakyFailure, ExceptionGroup) whose leaves are all ``kind``."""
    subs = getattr(exc, "exceptions", None)
    if subs:
        return all(_only(sub, kind) for sub in subs)
    return isinstance(exc, kind)


def _failure(exc: BaseException, full: bool) -> str:
    status = f"FAILED: {type(exc).__name__}: {str(exc)[:2000]}"
    if full:
        return status + "\n" + "".join(traceback.format_exception(exc))[-6000:]
    status += "\n" + "\n".join(getattr(exc, "__notes__", []))[:3000]
    for sub in getattr(exc, "exceptions", ()):
        status += f"\n  - {type(sub).__name__}: {str(sub)[:500]}\n" + "\n".join(getattr(sub, "__notes__", []))[:1500]
    return status


class OutOfTime(Exception):
    """The target's share of the time budget is spent."""


def _fuzz_target(fx, target, budget: float | None, args: argparse.Namespace) -> bool:
    """Run one target under hypothesis; log examples, cases per reader and outcomes; True if it passed."""
    from hypothesis import HealthCheck, given, seed, settings

    name = target.name
    work_root = Path(tempfile.mkdtemp(prefix=f"fuzz_{name}_"))
    work = work_root / "work"
    start = time.monotonic()
    examples = [0]

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(target.strategy())
    def run(example):
        if budget and time.monotonic() - start > budget:
            raise OutOfTime
        examples[0] += 1
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        target.check(example, work)

    status, ok = "ok", True
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - hypothesis wraps OutOfTime (FlakyFailure / ExceptionGroup)
        if _only(exc, OutOfTime):
            status = "ok (time budget reached)"
        else:
            status, ok = _failure(exc, args.traceback), False
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    cases = {k: v for k, v in fx.CASES.items() if k.split(":")[0] == name}
    log.info("%-28s examples %6d  %6.1fs  %s", name, examples[0], time.monotonic() - start, status)
    for key, count in sorted(cases.items()):
        outcomes = ", ".join(f"{k} {v}" for k, v in fx.OUTCOMES.get(key, {}).most_common())
        log.info("    %-40s cases %6d  [%s]", key, count, outcomes)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="max examples per target")
    parser.add_argument("--targets", default="", help="comma-separated target names (default: all)")
    parser.add_argument("--seconds", type=float, default=0.0, help="total wall-clock budget (0 = none)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    parser.add_argument("--traceback", action="store_true", help="print full tracebacks of failures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("unet_lab", "hypothesis"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # torch's pickle-protocol notices would drown the report
    from pack_support import load_pack

    load_pack()
    import fixtures_hardening as fx

    names = [n for n in args.targets.split(",") if n] or sorted(fx.TARGETS)
    budget = args.seconds / len(names) if args.seconds else None
    failures = 0
    for name in names:
        ok = _fuzz_target(fx, fx.TARGETS[name], budget, args)
        failures += 0 if ok else 1
    log.info("targets failed: %d of %d", failures, len(names))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
