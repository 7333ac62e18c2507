"""Command line: ``python -m attn_zoo <command>``.

    python -m attn_zoo list      every registered attention module, its description and its
                                 parameter count at C = 256 with default options; then every
                                 registered backbone, its description and its parameters without
                                 attention (default classes: 10 for CIFAR nets, 1000 for ImageNet ones)
    python -m attn_zoo summary backbone=resnet50 attention=se
                                 parameters, MACs and FLOPs, and where the attention modules sit
                                 (``summary --help`` for its options)

Each command is one ``add_<command>`` function that builds its subparser and sets its handler.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import pandas as pd
import torch

import attn_zoo
from attn_zoo.cost import count_params
from attn_zoo.registry import ATTENTION, BACKBONES

LISTING_CHANNELS = 256


def attention_rows(channels: int = LISTING_CHANNELS) -> list[tuple[str, str, int]]:
    """(name, description, parameters at ``channels``) for every registered attention module."""
    return [
        (name, ATTENTION.get(name).description, count_params(attn_zoo.create_attention(name, channels)))
        for name in attn_zoo.list_attention()
    ]


def backbone_rows() -> list[tuple[str, str, int]]:
    """(name, description, parameters without attention) for every registered backbone, built on
    the meta device (no memory, no time spent initialising ResNet-152's 60 M weights)."""
    rows = []
    for name in attn_zoo.list_backbones():
        with torch.device("meta"):
            rows.append((name, BACKBONES.get(name).description, count_params(attn_zoo.create_model(name))))
    return rows


def print_rows(header: tuple[str, str], rows: list[tuple[str, str, int]]) -> None:
    """A name/params/description markdown table; a ``|`` in a description is escaped as ``\\|``."""
    table = pd.DataFrame(
        [(name, f"{params:,}", description.replace("|", r"\|")) for name, description, params in rows],
        columns=[*header, "description"],
    )
    print(table.to_markdown(index=False, disable_numparse=True, colalign=("left", "right", "left")))


def list_attention(args: argparse.Namespace) -> int:
    print_rows(("name", f"params@C={args.channels}"), attention_rows(args.channels))
    print()
    print_rows(("backbone", "params"), backbone_rows())
    return 0


def add_list(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("list", help="list the registered attention modules and backbones")
    parser.add_argument(
        "--channels", type=int, default=LISTING_CHANNELS, help="channel count for the parameter column"
    )
    parser.set_defaults(handler=list_attention)


def add_summary(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "summary", help="params, FLOPs and attention placement of a model", add_help=False
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER)

    def handler(args: argparse.Namespace) -> int:
        from attn_zoo import summary

        return summary.main(args.rest)

    parser.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attn_zoo", description="attn_zoo command line")
    commands = parser.add_subparsers(dest="command", required=True, title="commands")
    add_list(commands)
    add_summary(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["summary"]:  # its own parser, --help included (argparse's REMAINDER drops a leading option)
        from attn_zoo import summary

        return summary.main(argv[1:], prog="python -m attn_zoo summary")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
