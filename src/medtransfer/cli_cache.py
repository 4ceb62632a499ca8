"""``medtransfer cache list | clear [KEY ...]``: the decoded-dataset cache on the command line."""

from __future__ import annotations

import argparse
import time

from medtransfer.errors import MedtransferError


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit}"
    return f"{seconds:.0f} s"


def _list(args) -> int:
    from medtransfer.cache import datasets_root
    from medtransfer.data.cache import list_entries

    rows = list_entries()
    print(f"{'key':<26}{'dataset':<24}{'size':>10}  age")
    for row in rows:
        print(f"{row['key']:<26}{row['dataset'][:22]:<24}{_size(row['bytes']):>10}  "
              f"{_age(time.time() - row['created'])}")
    print(f"\n{len(rows)} entries, {_size(sum(r['bytes'] for r in rows))} in {datasets_root()}  "
          "(set MEDTRANSFER_CACHE to move it; `medtransfer cache clear` frees it)")
    return 0


def _clear(args) -> int:
    from medtransfer.data.cache import clear_entries, list_entries

    unknown = sorted(set(args.keys) - {row["key"] for row in list_entries()})
    if unknown:
        raise MedtransferError(f"cache clear: no entry {', '.join(unknown)}; allowed: keys from `medtransfer cache "
                               "list`, or none to clear all")
    removed = clear_entries(args.keys)
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    return 0


def add_cache_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cache", help="decoded datasets cached on disk: list, clear",
                            description="File-based datasets are decoded once and cached as memory-mapped arrays "
                            "under $MEDTRANSFER_CACHE/datasets (default ~/.cache/medtransfer); a changed or added "
                            "file makes a new entry, old ones stay until cleared.")
    actions = parser.add_subparsers(dest="cache_command", required=True)
    actions.add_parser("list", help="every entry: key, dataset, size, age").set_defaults(func=_list)
    clear = actions.add_parser("clear", help="delete the entries named, or all of them")
    clear.add_argument("keys", nargs="*", help="entry keys (see `medtransfer cache list`); none = all")
    clear.set_defaults(func=_clear)
