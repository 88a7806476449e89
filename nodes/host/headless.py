"""The headless runner: runs a ComfyUI workflow with the pack's nodes and no ComfyUI.

    python dev.py run [WORKFLOW] [--models DIR] [--output DIR] [--input DIR] [--device cpu|cuda] [-v]

The workflow may be in either ComfyUI format (UI workflow or API prompt). Core
nodes the stub executor cannot run are refused before anything runs. Bad input
(not JSON, neither format, a link to a missing node, a cycle, an unknown node
type, a value of the wrong type) ends with a message naming the node and the
cause and exit code 2; a node failing while it runs ends with exit code 1.

Under torchrun every rank runs the same workflow (see ``ranks.py``)::

    torchrun --nproc_per_node N dev.py run WORKFLOW [--dist-timeout SECONDS] ...

Only rank 0 writes files and prints the report; a failure on any rank ends that rank
with one message naming the rank and the node, and the launcher ends the others.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ...unet_core.distributed import DistributedError
from ...unet_core.errors import HostError, NodeExecutionError, PromptValidationError, WorkflowError
from ...unet_core.graph.execute import Executor, RunResult
from ...unet_core.graph.formats import read_workflow_file
from . import use_host
from .ranks import RankSession, rank_session
from .standalone import StandaloneHost
from .standalone_nodes import NODE_CLASS_MAPPINGS as STANDALONE_NODES

log = logging.getLogger(__name__)
PACK_LOGGER = __name__.rsplit(".", 3)[0]  # the pack, whatever name it was loaded under

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORKFLOW = REPO_ROOT / "workflows" / "unet_lab_segmentation_training.json"


def node_classes() -> dict[str, type]:
    """The classes the standalone executor runs: the pack's nodes plus the standalone core image nodes."""
    from .. import NODE_CLASS_MAPPINGS as PACK_NODES  # nodes/__init__.py, loaded by now

    classes = dict(STANDALONE_NODES)
    classes.update(PACK_NODES)
    return classes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dev.py run", description="Run a ComfyUI workflow with UNet Lab, headless.")
    parser.add_argument("workflow", nargs="?", default=str(DEFAULT_WORKFLOW),
                        help=f"workflow JSON, UI or API format (default: {DEFAULT_WORKFLOW.relative_to(REPO_ROOT)})")
    parser.add_argument("--models", help="models root with diffusion_models/, loras/, unet_segmentation/ ... "
                                         "(default: ./models or $UNET_LAB_MODELS)")
    parser.add_argument("--output", help="output folder (default: ./output or $UNET_LAB_OUTPUT)")
    parser.add_argument("--input", help="input folder LoadImage reads (default: ./input or $UNET_LAB_INPUT)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="device (default: cuda when present, else cpu)")
    parser.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                        help="under torchrun: how long a rank waits for the others in a collective before the job "
                             "ends with an error (default: $UNET_LAB_DIST_TIMEOUT or 600)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (tracebacks of node errors)")
    return parser


def _where(host: StandaloneHost, entry: Any) -> str:
    if isinstance(entry, dict) and "filename" in entry:
        base = host.output_directory() if entry.get("type", "output") == "output" else host.temp_directory()
        return str(Path(base) / entry.get("subfolder", "") / entry["filename"])
    return str(entry)


def _report(host: StandaloneHost, result: RunResult) -> None:
    prompt = result.prompt
    for node_id, ui in result.outputs.items():
        for key, entries in ui.items():
            for entry in entries:
                sys.stdout.write(f"node {node_id} ({prompt[node_id]['class_type']}) {key}: {_where(host, entry)}\n")
    sys.stdout.flush()


class _Handler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests capture it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run a workflow; 0 on success, 2 on bad input, 1 when a node fails while running."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    pack_logger = logging.getLogger(PACK_LOGGER)
    handler = _Handler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous_level = pack_logger.level
    pack_logger.addHandler(handler)
    pack_logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return _run(args)
    finally:
        pack_logger.removeHandler(handler)
        pack_logger.setLevel(previous_level)


def _run(args: argparse.Namespace) -> int:
    path = Path(args.workflow)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            log.error("error: --device cuda, but this torch sees no CUDA device (torch %s)", torch.__version__)
            return 2
    try:
        with rank_session(logging.getLogger(PACK_LOGGER), args.device, args.dist_timeout) as session:
            code, finished = _run_workflow(args, path, session)
            session.succeeded = code == 0
    except DistributedError as error:  # joining the job, or waiting for the others at its end, failed
        log.error("error: %s", error)
        return 1
    if finished is not None and session.is_main:  # after every rank finished
        host, result = finished
        _report(host, result)
        ranks = f" on {session.context.world_size} ranks" if session.context else ""
        log.info("done%s: %d node(s) ran, %d from cache", ranks, len(result.executed), len(result.cached))
    return code


def _run_workflow(args: argparse.Namespace, path: Path,
                  session: RankSession) -> tuple[int, tuple[StandaloneHost, RunResult] | None]:
    """Run the workflow on this rank: (exit code, (host, result) when it succeeded)."""
    host = session.make_host(models_root=args.models, output_dir=args.output, input_dir=args.input,
                             device=args.device, show_progress=True)

    def on_node(node_id: str, class_type: str, index: int, count: int) -> None:
        log.info("[%d/%d] running node %s (%s)", index + 1, count, node_id, class_type)

    executor = Executor(node_classes(), on_node=on_node)
    try:
        with use_host(host):
            data = read_workflow_file(path)
            log.info("running %s (models: %s, device: %s)", path, host.models_root, host.device())
            result = executor.run(data, source=str(path))
    except (WorkflowError, PromptValidationError, HostError) as error:
        log.error("error: %s", error)
        return 2, None
    except NodeExecutionError as error:
        log.error("error: %s", error)
        log.debug("cause", exc_info=error.cause)
        return 1, None
    except Exception as error:  # a bug of ours: say so, the traceback with -v
        log.error("error: internal error %s: %s (run with -v for the traceback)", type(error).__name__, error)
        log.debug("traceback", exc_info=True)
        return 1, None
    return 0, (host, result)
