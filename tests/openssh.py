"""OpenSSH's own sshd as a bank's SFTP drop: its own host key, a loopback port, a throwaway user, a chroot.

Banks run OpenSSH (``internal-sftp`` or ``sftp-server``, chrooted, often with PAM's keyboard-interactive only);
the asyncssh sandbox cannot stand in for its permission checks and its login methods.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenSshServer:
    """``with OpenSshServer(login="password") as server:`` ... ``server.inbox`` is the chroot's /outgoing."""

    def __init__(self, *, login: str = "password", subsystem: str = "internal-sftp") -> None:
        """``subsystem``: "internal-sftp" or "/usr/lib/openssh/sftp-server"."""
        self.login = login  # "password" or "keyboard-interactive" (PAM, the password as its one prompt)
        self.subsystem = subsystem
        self.user = f"mdsftp{os.getpid() % 100000}"
        self.password = "Drop-Pa55-" + os.urandom(6).hex()
        self.host, self.port = "127.0.0.1", _free_port()
        # Every component of a ChrootDirectory must be root-owned and writable by root alone: not under /tmp.
        self.base = Path(tempfile.mkdtemp(prefix="mdsshd-", dir="/run"))
        self.base.chmod(0o755)
        self.chroot = self.base / "chroot"
        self.inbox = self.chroot / "outgoing"
        self.uploads = self.chroot / "incoming"  # where we put payment files
        # internal-sftp is chrooted, as banks run it; sftp-server (a binary the chroot would need copies of its
        # libraries for) is not, and sees the real paths.
        self.chrooted = subsystem == "internal-sftp"
        self.remote_inbox = "/outgoing" if self.chrooted else str(self.inbox)
        self.remote_uploads = "/incoming" if self.chrooted else str(self.uploads)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> OpenSshServer:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        # ForceCommand runs through the user's shell unless it is internal-sftp: sftp-server needs a real one.
        shell = "/usr/sbin/nologin" if self.chrooted else "/bin/sh"
        subprocess.run(["useradd", "--no-create-home", "--shell", shell, "--user-group", self.user],
                       check=True, capture_output=True)
        subprocess.run(["chpasswd"], input=f"{self.user}:{self.password}".encode(), check=True, capture_output=True)
        self.chroot.mkdir(mode=0o755)
        for folder in (self.inbox, self.inbox / "archive", self.inbox / "error", self.uploads):
            folder.mkdir()
            shutil.chown(folder, self.user, self.user)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        key = self.base / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        kbd = self.login == "keyboard-interactive"
        config = self.base / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress {self.host}
            HostKey {key}
            PidFile {self.base}/sshd.pid
            UsePAM {"yes" if kbd else "no"}
            PasswordAuthentication {"no" if kbd else "yes"}
            KbdInteractiveAuthentication {"yes" if kbd else "no"}
            PubkeyAuthentication no
            PermitRootLogin no
            AllowUsers {self.user}
            Subsystem sftp {self.subsystem}
            {f"ChrootDirectory {self.chroot}" if self.chrooted else ""}
            ForceCommand {self.subsystem}
            AllowTcpForwarding no
            X11Forwarding no
            LogLevel VERBOSE
            """))
        self.log = self.base / "sshd.log"
        self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self.log.open("wb"),
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not listen")

    def known_hosts(self, path: Path, *, bracketed: bool = True) -> Path:
        key = " ".join((self.base / "host_ed25519.pub").read_text().split()[:2])
        host = f"[{self.host}]:{self.port}" if bracketed else self.host
        path.write_text(f"{host} {key}\n")
        return path

    def remote(self, folder: str = "") -> dict[str, str]:
        """The source's inbox, archive and error paths as this server shows them."""
        inbox = self.remote_inbox
        return {"inbox": inbox, "archive": f"{inbox}/archive", "error": f"{inbox}/error"}

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        subprocess.run(["pkill", "-u", self.user], capture_output=True, check=False)
        subprocess.run(["userdel", self.user], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
