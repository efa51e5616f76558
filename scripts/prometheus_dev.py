"""A real Prometheus (Debian's ``prometheus``) on loopback, scraping molamd with the project's rules loaded: the
demo's ``--prometheus`` and the dashboard test both start it from here."""

from __future__ import annotations

import socket
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "molamd.rules.yml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """Scrapes ``target`` as job ``molamd`` every ``interval``; with ``fast_rules`` the rule groups are evaluated
    at that interval too (a copy of the rules file), so a test need not wait their 30 s."""

    def __init__(self, directory: Path, target: str, *, port: int | None = None, interval: str = "1s",
                 fast_rules: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        rules = yaml.safe_load(RULES.read_text())
        if fast_rules:
            for group in rules["groups"]:
                group["interval"] = interval
        (directory / "molamd.rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (directory / "prometheus.yml").write_text(textwrap.dedent(f"""
            global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}
            rule_files: [molamd.rules.yml]
            scrape_configs:
              - job_name: molamd
                static_configs: [{{targets: ["{target}"]}}]
            """))
        self.url = f"http://127.0.0.1:{port or _free_port()}"
        self.log_path = directory / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address={self.url.removeprefix('http://')}"],
            cwd=directory, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"prometheus did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; an expression Prometheus refuses raises ValueError."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        if answer.get("status") != "success":
            raise ValueError(f"{expr}: {answer.get('error')}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self._log.close()
