"""The connector error tree drawn in connectors/_errors.py is the real class tree, and says what is retryable."""

from __future__ import annotations

import re

import connectors
from connectors import _errors

_NODE = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>[A-Za-z]+)\s+(?P<text>.*)$")


def drawn_tree() -> dict[str, tuple[str | None, str]]:
    """class name → (parent drawn above it, the text beside it), read from the module docstring."""
    doc = _errors.__doc__ or ""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ") and line.strip()]
    found: dict[str, tuple[str | None, str]] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        match = _NODE.match(line) or re.match(r"^(?P<indent>)(?P<name>ConnectorError)(?P<text>)$", line)
        assert match, line
        depth = len(match["indent"]) // 4 + (1 if "──" in line else 0)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        found[match["name"]] = (stack[-1][1] if stack else None, match["text"])
        stack.append((depth, match["name"]))
    return found


def test_the_drawn_tree_is_the_class_tree() -> None:
    tree = drawn_tree()
    classes = {name: obj for name, obj in vars(_errors).items()
               if isinstance(obj, type) and issubclass(obj, _errors.ConnectorError)}
    assert set(tree) == set(classes)
    for name, (parent, _) in tree.items():
        cls = classes[name]
        if parent is None:
            assert cls is _errors.ConnectorError
        else:
            assert cls.__bases__ == (classes[parent],), f"{name} is drawn under {parent}"


def test_what_the_tree_calls_retryable_is_retryable() -> None:
    for name, (_, text) in drawn_tree().items():
        cls = getattr(connectors, name)
        if "(retryable" in text:
            assert cls.retryable, name
        if "not retryable" in text or "final" in text:
            assert not cls.retryable, name
