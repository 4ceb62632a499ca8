"""YAML reading that refuses a key given twice in one mapping.

PyYAML keeps the last of two equal keys without a word, so a config with ``lr`` under ``train`` twice runs with
whichever came last, and an edit made to the first copy is silently ignored. Merge keys (``<<: *base``) still
override as YAML specifies: only keys written out in the same mapping are compared.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError

_MERGE = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings raise a ConstructorError at the second occurrence of a key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own construct_mapping reports it
                continue
            if seen is not None:
                raise ConstructorError(None, None, f"key {key!r} is given twice (first at line {seen}); give each key "
                                                   "once, since YAML readers silently keep only the last",
                                       key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys at any depth."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass builds plain data only
