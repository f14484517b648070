"""The one YAML reader of cluster files: a key written twice in a mapping is an error.

PyYAML's ``safe_load`` keeps the last of two equal keys silently, so a node would run with a value
the operator did not mean (``api_port`` written twice: the second wins). Every duplicate is
reported, with both line numbers, as one ``ConfigError``.
"""

from __future__ import annotations

from typing import Any

import yaml

from bknr_cluster.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of overwriting them."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader itself reports it below
            line = key_node.start_mark.line + 1
            if key in seen:
                self.duplicates.append((str(key), f"key {key!r} written twice (lines {seen[key]} "
                                        f"and {line}); remove one"))
            else:
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _StrictLoader.construct_mapping)


def load_yaml(text: str, where: str) -> Any:
    """Parse ``text`` (the file ``where``); ConfigError on bad syntax or duplicate keys."""
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([("", f"{where} is not valid YAML ({at}): {problem}")]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates)
    return data
