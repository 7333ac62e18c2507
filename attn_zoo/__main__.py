"""Command line: ``python -m attn_zoo <command>``.

    python -m attn_zoo list      every registered attention module, its description and its
                                 parameter count at C = 256 with default options
    python -m attn_zoo summary backbone=resnet50 attention=se
                                 parameters, MACs and FLOPs, and where the attention modules sit

Each command is one ``add_<command>`` function that builds its subparser and sets its handler.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import attn_zoo
from attn_zoo.profile import count_params
from attn_zoo.registry import ATTENTION

LISTING_CHANNELS = 256


def attention_rows(channels: int = LISTING_CHANNELS) -> list[tuple[str, str, int]]:
    """(name, description, parameters at ``channels``) for every registered attention module."""
    return [
        (name, ATTENTION.get(name).description, count_params(attn_zoo.create_attention(name, channels)))
        for name in attn_zoo.list_attention()
    ]


def list_attention(args: argparse.Namespace) -> int:
    rows = attention_rows(args.channels)
    name_width = max(len("name"), *(len(name) for name, _, _ in rows))
    params_header = f"params@C={args.channels}"
    params_width = max(len(params_header), *(len(f"{params:,}") for _, _, params in rows))
    print(f"{'name':<{name_width}}  {params_header:>{params_width}}  description")
    for name, description, params in rows:
        print(f"{name:<{name_width}}  {params:>{params_width},}  {description}")
    return 0


def add_list(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("list", help="list the registered attention modules")
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
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
