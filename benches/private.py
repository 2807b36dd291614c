#!/usr/bin/env python3
"""Private mode against public mode under the same HTTP load, and the time
to load a large site at start.

Starts its own mariadbd (no systemd: a scratch data directory, a free
port; a system instance is left alone), loads deploy/private/schema.sql,
seeds --users members and --torrents torrents, then runs the tracker
(one worker pinned to core 0) alternately in public and private mode
(A B A B ...) under wrk (core 1, 1 thread, 128 connections) sending the
same announces, with or without the /<passkey> prefix. Reported per
round: responses per tracker CPU-second (utime+stime from /proc), the
private/public ratio, and the rows the database thread wrote per second.
Then it seeds --load-rows users and torrents and times the first load
(start to "private data loaded").

    python3 benches/private.py --binary target/release/aquatic

Needs mariadb-server and wrk (apt-get install mariadb-server wrk).
"""

import argparse
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import quote_from_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, os.path.join(ROOT, "tests", "interop"))
from mariadb import MariaDb, free_port  # noqa: E402  (the harness the interop checks use)

def seed(db, users, torrents):
    db.sql("DELETE FROM tracker_users; DELETE FROM tracker_torrents; "
           f"INSERT INTO tracker_users (id, passkey) SELECT seq, CONCAT('pk', LPAD(seq, 30, '0')) "
           f"FROM seq_1_to_{users}; "
           "INSERT INTO tracker_torrents (id, info_hash) SELECT seq, UNHEX(SHA1(seq)) "
           f"FROM seq_1_to_{torrents};")

WRK_CONNECTIONS = 128


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def passkey(user):
    return f"pk{user:030d}"


def info_hash(torrent):
    return hashlib.sha1(str(torrent).encode()).digest()


def write_paths(path, users, torrents, private, count=100_000):
    """The same announces in both modes (seeded RNG), with or without the passkey."""
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(count):
            user = rng.randrange(1, users + 1)
            p = rng.gammavariate(0.2, 100.0)
            torrent = 1 + int(max(0.0, (min(p, 101.0) - 1.0) / 100.0) * (torrents - 1))
            left = "event=completed&left=0" if rng.random() < 0.25 else "left=50"
            prefix = f"/{passkey(user)}" if private else ""
            peer_id = b"-AQ0100-" + rng.randbytes(12)
            f.write(f"{prefix}/announce?info_hash={quote_from_bytes(info_hash(torrent), safe='')}"
                    f"&peer_id={quote_from_bytes(peer_id, safe='')}&port={rng.randrange(1, 65536)}"
                    f"&uploaded={rng.randrange(1 << 30)}&downloaded={rng.randrange(1 << 30)}"
                    f"&numwant=30&compact=1&{left}\n")


def start_tracker(binary, work, db, private):
    http_port = free_port()
    metrics_port = free_port()
    config = (f"workers = 1\nlog_level = \"info\"\n[runtime]\npin_cpus = true\nfirst_core = 0\n"
              f"[udp]\nenabled = false\n[ws]\nenabled = false\n"
              f"[http]\naddress = \"127.0.0.1:{http_port}\"\n"
              f"[metrics]\nenabled = true\naddress = \"127.0.0.1:{metrics_port}\"\n")
    if private:
        config += db.config() + "reload_interval_secs = 0\n"
    path = os.path.join(work, "config.toml")
    with open(path, "w") as f:
        f.write(config)
    started = time.monotonic()
    proc = subprocess.Popen([binary, "-c", path], stdout=subprocess.PIPE,
                            stderr=open(os.path.join(work, "tracker.log"), "a"), text=True)
    want = "aquatic: private data loaded" if private else "aquatic: ready"
    for line in proc.stdout:
        if line.startswith(want):
            break
    return proc, http_port, metrics_port, time.monotonic() - started


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_round(binary, work, db, private, duration):
    proc, port, metrics_port, _ = start_tracker(binary, work, db, private)
    paths = os.path.join(work, "private-paths.txt" if private else "public-paths.txt")
    rows_before = metric(metrics_port, "aquatic_private_rows_written_total")
    cpu_before = cpu_seconds(proc.pid)
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{WRK_CONNECTIONS}",
                          f"-d{duration}s", "-s", os.path.join(HERE, "wrk_announce.lua"),
                          f"http://127.0.0.1:{port}", "--", paths],
                         capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(proc.pid) - cpu_before
    # The rows of the load's last seconds are written within a flush interval.
    time.sleep(4)
    rows = metric(metrics_port, "aquatic_private_rows_written_total") - rows_before
    proc.terminate()
    proc.wait()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    failures = int(re.search(r"failures: (\d+)", out).group(1))
    return requests / cpu, requests / duration, rows / duration, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/aquatic"))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--torrents", type=int, default=10_000)
    parser.add_argument("--load-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    for tool in ["mariadb-install-db", "wrk", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install mariadb-server wrk")
    work = tempfile.mkdtemp(prefix="aquatic-private-bench-")
    db = MariaDb(work, buffer_pool="256M")
    try:
        seed(db, args.users, args.torrents)
        write_paths(os.path.join(work, "public-paths.txt"), args.users, args.torrents, False)
        write_paths(os.path.join(work, "private-paths.txt"), args.users, args.torrents, True)
        print(f"# HTTP announces under wrk (1 thread, {WRK_CONNECTIONS} connections, "
              f"{args.duration} s), tracker 1 worker on core 0, wrk on core 1; "
              f"{args.users} users, {args.torrents} torrents")
        print("| round | public resp/CPU-s | private resp/CPU-s | private/public | "
              "public resp/s | private resp/s | DB rows written/s | failures (pub/priv) |")
        print("|---|---|---|---|---|---|---|---|")
        for round_ in range(1, args.rounds + 1):
            pub = run_round(args.binary, work, db, False, args.duration)
            priv = run_round(args.binary, work, db, True, args.duration)
            print(f"| {round_} | {pub[0]:.0f} | {priv[0]:.0f} | {priv[0] / pub[0]:.2f} | "
                  f"{pub[1]:.0f} | {priv[1]:.0f} | {priv[2]:.0f} | {pub[3]}/{priv[3]} |",
                  flush=True)
        seed(db, args.load_rows, args.load_rows)
        proc, _, _, elapsed = start_tracker(args.binary, work, db, True)
        proc.terminate()
        proc.wait()
        with open(os.path.join(work, "tracker.log")) as f:
            loaded = [l.strip() for l in f if "private: loaded" in l]
        print(f"\n# first load of {args.load_rows} users and {args.load_rows} torrents")
        print(f"start to 'private data loaded': {elapsed:.2f} s")
        if loaded:
            print(f"tracker log: {loaded[-1].split('] ', 1)[-1]}")
    finally:
        db.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
