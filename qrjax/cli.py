"""The `qrjax` console script (also `python -m qrjax`): one subcommand group per system."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from qrjax.diffusion import cli as diffusion_cli
    from qrjax.ecc import cli as ecc_cli
    from qrjax.quantum import cli as quantum_cli
    from qrjax.watermark import cli as watermark_cli

    parser = argparse.ArgumentParser(prog="qrjax", description="qrjax: tiling, caching and compression systems in JAX.")
    systems = parser.add_subparsers(dest="system", required=True, metavar="SYSTEM")
    ecc_cli.register(systems)
    watermark_cli.register(systems)
    quantum_cli.register(systems)
    diffusion_cli.register(systems)
    watermark_cli.register_demo(systems.add_parser("demo", help="the main job: QRMark detection demo (make demo)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
