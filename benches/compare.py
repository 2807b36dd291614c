#!/usr/bin/env python3
"""Side-by-side throughput: our tracker against the original aquatic.

One tracker at a time, pinned to core 0 with one worker; the original
aquatic's own load tester pinned to core 1 for DURATION seconds; trackers
alternate A B A B. Per run: responses/s (from the load tester), the
tracker's CPU time over the load (utime+stime from /proc/PID/stat),
responses per tracker CPU-second (the fair figure when one load-generator
core cannot saturate the tracker) and peak RSS (VmHWM).

Usage:
  python3 benches/compare.py [--protocols udp,http,ws] [--duration 20] [--rounds 2]
                             [--ours target/release/aquatic] [--peers DIR]

The peers (aquatic_udp/http/ws 0.9 and their load testers) are installed
into DIR/bin with `cargo install` when missing (default: benches/.peers).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = ["aquatic_udp", "aquatic_udp_load_test", "aquatic_http", "aquatic_http_load_test",
         "aquatic_ws", "aquatic_ws_load_test"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ensure_peers(directory):
    missing = [p for p in PEERS if not os.path.exists(os.path.join(directory, "bin", p))]
    if missing:
        print(f"installing {' '.join(missing)} into {directory} (a few minutes, once)", flush=True)
        # Not --locked: aquatic_udp 0.9.0's lock file pins a metrics crate
        # that no longer builds on current rustc.
        subprocess.run(["cargo", "install", "--root", directory, *missing], check=True)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def set_keys(text, values):
    """Replaces `key = ...` lines (first occurrence after [section] if given)."""
    for (section, key), value in values.items():
        pattern = rf"(^{key} = ).*$"
        if section:
            start = text.index(f"[{section}]")
            head, tail = text[:start], text[start:]
            tail = re.sub(pattern, rf"\g<1>{value}", tail, count=1, flags=re.M)
            text = head + tail
        else:
            text = re.sub(pattern, rf"\g<1>{value}", text, count=1, flags=re.M)
    return text


def printed_config(binary):
    return subprocess.run([binary, "-p"], capture_output=True, text=True, check=True).stdout


def wait_for_port(port, kind, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if kind == "udp":
            time.sleep(0.5)
            return
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def ours_config(protocol, port, work):
    lines = [
        "workers = 1",
        'log_level = "error"',
        "[runtime]",
        "pin_cpus = false",
        "[tracker]",
        "announce_interval_secs = 120",
        "default_numwant = 30",
        "max_numwant = 50",
        "[udp]",
        f"enabled = {'true' if protocol == 'udp' else 'false'}",
        f'address = "127.0.0.1:{port}"',
        "socket_recv_buffer_size = 8000000",
        "[http]",
        f"enabled = {'true' if protocol == 'http' else 'false'}",
        f'address = "127.0.0.1:{port}"',
        "max_connections_per_worker = 100000",
        "[ws]",
        f"enabled = {'true' if protocol == 'ws' else 'false'}",
        f'address = "127.0.0.1:{port}"',
        "max_connections_per_worker = 100000",
    ]
    if protocol == "ws":
        lines += [f'tls_certificate_path = "{work}/cert.pem"', f'tls_private_key_path = "{work}/key.pem"']
    return "\n".join(lines) + "\n"


def peer_config(protocol, binary, port, work):
    text = printed_config(binary)
    values = {("", "log_level"): '"error"'}
    if protocol == "udp":
        values.update({("", "socket_workers"): "1", ("network", "address"): f'"127.0.0.1:{port}"',
                       ("protocol", "max_response_peers"): "30", ("protocol", "peer_announce_interval"): "120"})
    else:
        values.update({("", "socket_workers"): "1", ("", "swarm_workers"): "1",
                       ("network", "address"): f'"127.0.0.1:{port}"',
                       ("protocol", "peer_announce_interval"): "120"})
    if protocol == "ws":
        values.update({("network", "enable_tls"): "true",
                       ("network", "tls_certificate_path"): f'"{work}/cert.pem"',
                       ("network", "tls_private_key_path"): f'"{work}/key.pem"'})
    return set_keys(text, values)


def load_config(protocol, binary, port, duration):
    text = printed_config(binary)
    values = {("", "server_address"): f'"127.0.0.1:{port}"', ("", "duration"): str(duration)}
    if protocol == "udp":
        values.update({("", "workers"): "1", ("requests", "number_of_torrents"): "100000",
                       ("requests", "number_of_peers"): "200000",
                       ("requests", "announce_peers_wanted"): "30"})
    elif protocol == "http":
        values.update({("", "num_workers"): "1", ("", "enable_tls"): "false"})
    else:
        values.update({("", "num_workers"): "1"})
    return set_keys(text, values)


def run_one(name, command, protocol, port, load_binary, load_cfg, duration, work):
    log = open(os.path.join(work, f"{name}.log"), "w")
    env = dict(os.environ)
    tracker = subprocess.Popen(["taskset", "-c", "0", *command], stdout=log, stderr=log, env=env)
    try:
        wait_for_port(port, protocol)
        time.sleep(0.5)
        cpu_before = cpu_seconds(tracker.pid)
        load = subprocess.run(["taskset", "-c", "1", load_binary, "-c", load_cfg],
                              capture_output=True, text=True, timeout=duration + 60)
        cpu = cpu_seconds(tracker.pid) - cpu_before
        rss = peak_rss_mib(tracker.pid)
        match = re.search(r"Average responses per second: ([0-9.]+)", load.stdout)
        if not match:
            raise RuntimeError(f"{name}: no figure from the load tester:\n{load.stdout[-1500:]}{load.stderr[-1500:]}")
        rps = float(match.group(1))
        if tracker.poll() is not None:
            raise RuntimeError(f"{name} exited during the run")
        return {"rps": rps, "cpu": cpu, "per_cpu": rps * duration / cpu if cpu > 0 else 0.0, "rss": rss}
    finally:
        tracker.send_signal(signal.SIGTERM)
        try:
            tracker.wait(10)
        except subprocess.TimeoutExpired:
            tracker.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default="udp,http,ws")
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ours", default=os.path.join(ROOT, "target/release/aquatic"))
    parser.add_argument("--peers", default=os.path.join(HERE, ".peers"))
    args = parser.parse_args()

    ensure_peers(args.peers)
    if not os.path.exists(args.ours):
        subprocess.run(["cargo", "build", "--release", "-p", "aquatic"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="aquatic-bench-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem", "-subj", "/CN=example.com",
                    "-addext", "subjectAltName=DNS:example.com"], check=True, capture_output=True)
    bin_dir = os.path.join(args.peers, "bin")
    print(f"# {args.duration} s per run, {args.rounds} rounds, tracker on core 0, load tester on core 1")
    print("| protocol | round | tracker | responses/s | tracker CPU s | responses per CPU-second | peak RSS MiB | ours / aquatic (per CPU-s) |")
    print("|---|---|---|---|---|---|---|---|")
    for protocol in args.protocols.split(","):
        peer = os.path.join(bin_dir, f"aquatic_{protocol}")
        load_binary = os.path.join(bin_dir, f"aquatic_{protocol}_load_test")
        for round_ in range(1, args.rounds + 1):
            results = {}
            for name in ["ours", "aquatic"]:
                port = free_port()
                cfg = os.path.join(work, f"{name}-{protocol}.toml")
                with open(cfg, "w") as f:
                    f.write(ours_config(protocol, port, work) if name == "ours"
                            else peer_config(protocol, peer, port, work))
                load_cfg = os.path.join(work, f"load-{protocol}.toml")
                with open(load_cfg, "w") as f:
                    f.write(load_config(protocol, load_binary, port, args.duration))
                command = [args.ours, "-c", cfg] if name == "ours" else [peer, "-c", cfg]
                results[name] = run_one(name, command, protocol, port, load_binary, load_cfg, args.duration, work)
            ratio = results["ours"]["per_cpu"] / results["aquatic"]["per_cpu"] if results["aquatic"]["per_cpu"] else 0
            for name in ["ours", "aquatic"]:
                r = results[name]
                shown = f"{ratio:.2f}" if name == "ours" else ""
                print(f"| {protocol} | {round_} | {name} | {r['rps']:,.0f} | {r['cpu']:.1f} | {r['per_cpu']:,.0f} | {r['rss']:.0f} | {shown} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
