"""A private MariaDB server for interop checks and benchmarks: its own data
directory, started as `mariadbd --no-defaults` on a free loopback port (no
systemd; a system instance is left alone), with the tracker's schema and a
user `aquatic` (password in `password_file`). Needs Debian's mariadb-server."""

import os
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
