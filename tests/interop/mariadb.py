"""A private MariaDB server for interop checks and benchmarks: its own data
directory, started as `mariadbd --no-defaults` on a free loopback port (no
systemd; a system instance is left alone), with the tracker's schema and a
user `aquatic` (password in `password_file`). Needs Debian's mariadb-server."""

import os
import random
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    """A port for a listener whose address must be known before its process
    starts. Picked at random below the kernel's ephemeral range, where no
    `port 0` bind or outgoing connection of anything running beside us can
    take it between this check and the listener's bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(n) for n in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    lo, hi = (max(1024, low - 16384), low - 1) if low >= 2048 else (high + 1, 65535)
    while True:
        port = random.randint(lo, hi)
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return port


class MariaDb:
    def __init__(self, work, buffer_pool="64M"):
        self.dir = os.path.join(work, "mariadb")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.port = free_port()
        self.socket = os.path.join(self.dir, "sock")
        subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root",
                        f"--datadir={self.dir}/data", "--auth-root-authentication-method=normal",
                        "--skip-test-db", f"--tmpdir={self.dir}/tmp"], check=True, capture_output=True)
        self.proc = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", "--user=root", f"--datadir={self.dir}/data",
             f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--log-error={self.dir}/error.log", "--skip-log-bin", f"--tmpdir={self.dir}/tmp",
             f"--innodb-buffer-pool-size={buffer_pool}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while self.sql("SELECT 1", check=False).returncode != 0:
            if time.time() > deadline:
                raise RuntimeError("mariadbd did not start")
            time.sleep(0.1)
        self.sql("CREATE DATABASE aquatic; "
                 "CREATE USER 'aquatic'@'%' IDENTIFIED BY 'interop'; "
                 "GRANT ALL ON aquatic.* TO 'aquatic'@'%';")
        with open(os.path.join(ROOT, "deploy/private/schema.sql")) as f:
            self.sql(f.read(), db="aquatic")
        self.password_file = os.path.join(self.dir, "password")
        with open(self.password_file, "w") as f:
            f.write("interop\n")

    def sql(self, text, db="aquatic", check=True):
        cmd = ["mariadb", "--no-defaults", "-S", self.socket, "-u", "root", "-N", "-B"]
        if db and not text.startswith("CREATE DATABASE") and text != "SELECT 1":
            cmd.append(db)
        return subprocess.run(cmd, input=text.encode(), capture_output=True, check=check)

    def rows(self, query):
        out = self.sql(query).stdout.decode()
        return [line.split("\t") for line in out.splitlines()]

    def config(self):
        """`[private]` lines for the tracker."""
        return (f"[private]\nenabled = true\ndatabase_port = {self.port}\n"
                f"database_password_file = \"{self.password_file}\"\n")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
