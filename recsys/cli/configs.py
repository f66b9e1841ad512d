"""``recsys configs``: the packaged configs, one line each."""

from __future__ import annotations

from recsys.cli._common import OneLineParser


def cmd_configs(argv: list[str]) -> int:
    p = OneLineParser(prog="recsys configs",
                                description="List the packaged configs (use one with `recsys fit --config NAME`).")
    p.add_argument("--show", metavar="NAME", default=None, help="Print one config's YAML instead.")
    a = p.parse_args(argv)
    from recsys.packaged_configs import config_dir, list_configs, resolve_config

    if a.show:
        from pathlib import Path

        print(Path(resolve_config(a.show)).read_text(), end="")
        return 0
    rows = list_configs()
    width = max(len(n) for n, _ in rows)
    print(f"packaged configs ({config_dir()}):")
    for name, text in rows:
        print(f"  {name:<{width}}  {text}")
    return 0
