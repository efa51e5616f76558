"""Configuration errors: each names the file and the TOML path of what is wrong."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class ConfigProblem(msgspec.Struct, frozen=True):
    """One thing wrong with a config file."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """The config file is unusable; ``problems`` lists every issue found, each with its path."""

    def __init__(self, file: str, problems: Sequence[ConfigProblem]) -> None:
        self.file = file
        self.problems = tuple(_bounded(p) for p in problems)
        lines = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{file}: {lines}")

    def lines(self) -> list[str]:
        return [f"{self.file}: {p}" for p in self.problems]


_MAX_PATH = 200
_MAX_MESSAGE = 500


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _bounded(problem: ConfigProblem) -> ConfigProblem:
    """A problem cut to a readable size: a 100,000-character key or value is quoted by its first few hundred."""
    if len(problem.path) <= _MAX_PATH and len(problem.message) <= _MAX_MESSAGE:
        return problem
    return ConfigProblem(_cut(problem.path, _MAX_PATH), _cut(problem.message, _MAX_MESSAGE))
