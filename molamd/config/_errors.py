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
        self.problems = tuple(problems)
        lines = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{file}: {lines}")

    def lines(self) -> list[str]:
        return [f"{self.file}: {p}" for p in self.problems]
