"""``medtransfer zoo list | fetch NAME | import NAME FILE``: the pre-trained model zoo on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

COLUMNS = (("name", 24), ("arch", 24), ("data", 36), ("method", 26), ("checksum", 16), ("licence", 36),
           ("norm", 8), ("cached", 6), ("url", 0))


def _list(args) -> int:
    from medtransfer.models.zoo import cache_root, zoo_rows

    print("  ".join(f"{title:<{width}}" if width else title for title, width in COLUMNS).rstrip())
    for row in zoo_rows():
        print("  ".join(f"{str(row[key])[:width]:<{width}}" if width else str(row[key]) for key, width in COLUMNS))
    print(f"\ncache: {cache_root()}  (set MEDTRANSFER_CACHE to move it); use an entry as an init with "
          "`inits: [{zoo: NAME}]`")
    return 0


def _report(name: str, path: Path, report: dict) -> int:
    from medtransfer.models.zoo import describe_report

    verified = "published checksum verified" if report["checksum_verified"] else \
        "no published checksum: recorded the observed sha256"
    print(f"{name}: {describe_report(report)}")
    print(f"sha256 {report['sha256']} ({verified})")
    print(f"cached: {path}")
    return 0


def _fetch(args) -> int:
    from medtransfer.models.zoo import fetch

    return _report(args.name, *fetch(args.name))


def _import(args) -> int:
    from medtransfer.models.zoo import import_file

    return _report(args.name, *import_file(args.name, args.file))


def add_zoo_parser(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="published pre-trained models: list, fetch, import",
                         description="Known pre-trained models (ImageNet, iNat2021, SSL ResNet-50s, Models Genesis, "
                         "MedicalNet), converted to medtransfer's checkpoint format and cached; use one as an init "
                         "with `inits: [{zoo: NAME}]`.")
    actions = zoo.add_subparsers(dest="zoo_command", required=True)
    actions.add_parser("list", help="every known model and whether it is cached").set_defaults(func=_list)
    fetch = actions.add_parser("fetch", help="download, verify, convert and cache a model (needs internet)")
    fetch.add_argument("name", help="zoo name (see `medtransfer zoo list`)")
    fetch.set_defaults(func=_fetch)
    imp = actions.add_parser("import", help="verify, convert and cache a file you already have (works offline)")
    imp.add_argument("name", help="zoo name (see `medtransfer zoo list`)")
    imp.add_argument("file", type=Path, help="the published weights file (.pth/.pth.tar/.ckpt/.safetensors/.npz)")
    imp.set_defaults(func=_import)
