"""The `qrjax` console script (also `python -m qrjax`): one subcommand group per system."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from qrjax.clip import cli as clip_cli
    from qrjax.diffusion import cli as diffusion_cli
    from qrjax.dlrm import cli as dlrm_cli
    from qrjax.ecc import cli as ecc_cli
    from qrjax.lora import cli as lora_cli
    from qrjax.quantum import cli as quantum_cli
    from qrjax.watermark import cli as watermark_cli

    parser = argparse.ArgumentParser(prog="qrjax", description="qrjax: tiling, caching and compression systems in JAX.")
    cluster = parser.add_argument_group(
        "multi-process runs", "JAX's distributed runtime; given before SYSTEM. Without them a SLURM or Open MPI job, "
        "or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, is used if present, else one process runs")
    cluster.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address (all processes)")
    cluster.add_argument("--num-processes", type=int, default=None, metavar="N", help="how many processes take part")
    cluster.add_argument("--process-id", type=int, default=None, metavar="I", help="this process: 0..N-1")
    systems = parser.add_subparsers(dest="system", required=True, metavar="SYSTEM")
    ecc_cli.register(systems)
    watermark_cli.register(systems)
    quantum_cli.register(systems)
    diffusion_cli.register(systems)
    dlrm_cli.register(systems)
    clip_cli.register(systems)
    lora_cli.register(systems)
    watermark_cli.register_demo(systems.add_parser("demo", help="the main job: QRMark detection demo (make demo)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from qrjax import parallel

    try:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as err:
        parser.error(f"--coordinator/--num-processes/--process-id: {err}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
