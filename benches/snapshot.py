#!/usr/bin/env python3
"""Snapshots of a big tracker: write and restore times, file size, and the
longest wait of an announce while a periodic snapshot is written under load.

Per run: our release tracker, one worker, on core 0, with a state
directory; aquatic/examples/snapshot_probe.rs fills it with TORRENTS x
PEERS_PER_TORRENT distinct peers (1 M in 100 000 torrents by default), then
for DURATION seconds the probe (on core 1) sends one announce every
millisecond and records every response's delay: alone ("idle"), and beside
aquatic_udp_load_test (the original aquatic's, as in compare.py, on core 1
too; "load"), which reports no latency itself. The load tester saturates
the tracker, so under "load" the delays are mostly the socket buffer's
queue; the periodic snapshot's own cost is the difference to "stop only". Then SIGTERM: the stop-time
snapshot's peers, bytes and duration come from the tracker's log line; then
a start on the same directory: the restore's own duration (log line) and
the time from exec to "ready".

Two configurations alternate, A then B in odd rounds, B then A in even
ones: "periodic" writes a snapshot every INTERVAL seconds during the load
(the snapshot metrics say how many and how long the last took), "stop
only" (interval_secs = 0) writes none until the stop. The probe's largest
delay under "stop only" is the machine's own noise floor: the snapshot's
cost is the difference.

Usage:
  python3 benches/snapshot.py [--torrents 100000] [--peers-per-torrent 10]
                              [--duration 20] [--interval 5] [--rounds 2]
                              [--ours target/release/aquatic] [--peers DIR]
                              [--loads both|idle|load] [--realtime]

Needs `cargo build --release -p aquatic --bins --examples`; installs
aquatic_udp_load_test into DIR/bin (default benches/.peers) when missing.
"""

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import compare  # noqa: E402  (the load tester's install and config)

PROBE = os.path.join(ROOT, "target/release/examples/snapshot_probe")


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def duration_secs(text):
    """Rust's Debug of a Duration ("1.5s", "850.2ms", "12µs") in seconds."""
    match = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}[match.group(2)]
    return float(match.group(1)) * scale


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        name = name.split("{", 1)[0]
        out[name] = out.get(name, 0.0) + float(value)
    return out


def config(udp_port, metrics_port, state, interval):
    return f"""workers = 1
log_level = "info"
[runtime]
pin_cpus = false
[tracker]
announce_interval_secs = 120
default_numwant = 30
max_numwant = 50
[udp]
address = "127.0.0.1:{udp_port}"
socket_recv_buffer_size = 8000000
[http]
enabled = false
[ws]
enabled = false
[metrics]
enabled = true
address = "127.0.0.1:{metrics_port}"
[snapshot]
dir = "{state}"
interval_secs = {interval}
"""


def start(binary, config_path, log_path):
    """The tracker on core 0; returns (process, seconds from exec to ready)."""
    log = open(log_path, "a")
    began = time.monotonic()
    proc = subprocess.Popen(["taskset", "-c", "0", binary, "-c", config_path],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    for line in proc.stdout:
        if line.startswith("aquatic: ready"):
            return proc, time.monotonic() - began
    raise RuntimeError(f"tracker did not start; see {log_path}")


def executor_threads(pid):
    """The executor threads of a tracker: per name "aquatic-<i>" the first
    made (the blocking thread glommio starts from it shares its name)."""
    first = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        if re.fullmatch(r"aquatic-\d+", name) and name not in first:
            first[name] = tid
    return list(first.values())


def make_realtime(pid):
    """SCHED_FIFO for the executor threads only (not the blocking or
    snapshot threads): other processes on the shared machine then no longer
    delay them, and what is left is the tracker's own pauses."""
    for tid in executor_threads(pid):
        subprocess.run(["chrt", "-f", "-p", "10", str(tid)], check=True)


def stop(proc):
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return time.monotonic() - began


def log_figures(log_path):
    with open(log_path) as f:
        text = f.read()
    stop_line = re.findall(r"snapshot \(at stop\): (\d+) peers, (\d+) bytes in \S+ in (\S+)", text)
    restore_line = re.findall(r"restored (\d+) peers from \d+ snapshot files .* in (\S+)$", text, re.M)
    return stop_line, restore_line


def run_one(args, label, interval, load_binary, work, run):
    state = os.path.join(work, f"state-{run}")
    log_path = os.path.join(work, f"{run}.log")
    udp_port, metrics_port = free_port(socket.SOCK_DGRAM), free_port()
    config_path = os.path.join(work, f"{run}.toml")
    with open(config_path, "w") as f:
        f.write(config(udp_port, metrics_port, state, interval))
    address = f"127.0.0.1:{udp_port}"
    tracker, _ = start(args.ours, config_path, log_path)
    if args.realtime:
        make_realtime(tracker.pid)
    rt = ["chrt", "-f", "10"] if args.realtime else []
    try:
        fill = subprocess.run(["taskset", "-c", "1", PROBE, "fill", address, str(args.torrents),
                               str(args.peers_per_torrent)], capture_output=True, text=True, check=True)
        filled = int(re.search(r"filled (\d+)", fill.stdout).group(1))
        before = metrics(metrics_port)
        load = None
        if load_binary:
            load_cfg = os.path.join(work, "load.toml")
            with open(load_cfg, "w") as f:
                f.write(compare.load_config("udp", load_binary, udp_port, args.duration))
            load = subprocess.Popen(["taskset", "-c", "1", load_binary, "-c", load_cfg],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        probe = subprocess.run([*rt, "taskset", "-c", "1", PROBE, "probe", address, str(args.duration)],
                               capture_output=True, text=True, check=True)
        load_out = load.communicate(timeout=args.duration + 60)[0] if load else ""
        after = metrics(metrics_port)
    finally:
        stop(tracker)
    restarted, ready_secs = start(args.ours, config_path, log_path)
    restored_metric = metrics(metrics_port).get("aquatic_snapshot_peers_restored", 0.0)
    stop(restarted)
    stops, restores = log_figures(log_path)
    p = dict(re.findall(r"(\w+) ([0-9.]+)", probe.stdout.split("probe:", 1)[1]))
    rps = re.search(r"Average responses per second: ([0-9.]+)", load_out)
    return {
        "label": label,
        "filled": filled,
        "peers": before.get("aquatic_peers", 0.0),
        "writes": after.get("aquatic_snapshot_writes_total", 0.0) - before.get("aquatic_snapshot_writes_total", 0.0),
        "periodic_ms": after.get("aquatic_snapshot_duration_milliseconds", 0.0),
        "max_ms": float(p["max_ms"]), "p999_ms": float(p["p999_ms"]), "p99_ms": float(p["p99_ms"]),
        "lost": int(p["lost"]), "sent": int(p["sent"]),
        "load_rps": float(rps.group(1)) if rps else 0.0,
        "stop_peers": int(stops[-1][0]), "bytes": int(stops[-1][1]), "write_s": duration_secs(stops[-1][2]),
        "restored": int(restores[-1][0]), "restore_s": duration_secs(restores[-1][1]),
        "restored_metric": restored_metric, "ready_s": ready_secs,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torrents", type=int, default=100_000)
    parser.add_argument("--peers-per-torrent", type=int, default=10)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ours", default=os.path.join(ROOT, "target/release/aquatic"))
    parser.add_argument("--peers", default=os.path.join(HERE, ".peers"))
    parser.add_argument("--loads", choices=["both", "idle", "load"], default="both",
                        help="'idle' runs the probe alone and needs no load tester")
    parser.add_argument("--realtime", action="store_true",
                        help="run the executor threads and the probe SCHED_FIFO (needs root), so that "
                             "other processes on a shared machine do not add their delays")
    args = parser.parse_args()
    print("command: " + " ".join(shlex.quote(a) for a in ["python3", "benches/snapshot.py", *sys.argv[1:]]))
    for path in [args.ours, PROBE]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: cargo build --release -p aquatic --bins --examples")
    load_binary = os.path.join(args.peers, "bin", "aquatic_udp_load_test")
    if args.loads != "idle":
        compare.ensure_peers(args.peers, ["aquatic_udp_load_test"])
    configs = [("stop-only", 0), ("periodic", args.interval)]
    loads = [("idle", None), ("load", load_binary)]
    loads = [l for l in loads if args.loads in ("both", l[0])]
    header = ("round  load  config     peers_held  writes  periodic_ms  probe_max_ms  p99.9_ms  p99_ms  lost/sent"
              "  load_rps   stop:peers  bytes  write_s  restored  restore_s  ready_s")
    print(header)
    with tempfile.TemporaryDirectory(prefix="aquatic-snapshot-bench-") as work:
        for round_ in range(1, args.rounds + 1):
            order = configs if round_ % 2 else list(reversed(configs))
            for (load_label, load), (label, interval) in [(l, c) for l in loads for c in order]:
                run = f"{round_}-{load_label}-{label}"
                r = run_one(args, label, interval, load, work, run)
                print(f"{round_:>5}  {load_label:<4}  {label:<9}  {r['peers']:>10,.0f}  {r['writes']:>6.0f}  {r['periodic_ms']:>11.0f}"
                      f"  {r['max_ms']:>12.2f}  {r['p999_ms']:>8.2f}  {r['p99_ms']:>6.2f}  {r['lost']:>4}/{r['sent']:<5}"
                      f"  {r['load_rps']:>8,.0f}   {r['stop_peers']:>10,}  {r['bytes'] / 1e6:>5.1f}M"
                      f"  {r['write_s']:>7.3f}  {r['restored']:>8,}  {r['restore_s']:>9.3f}  {r['ready_s']:>7.3f}",
                      flush=True)
    print("probe_max_ms: the longest any of the probe's announces (one a millisecond, on core 1, beside the load "
          "tester under 'load', alone under 'idle') waited for its answer; write_s: the stop-time snapshot; restore_s: reading and "
          "re-sharding the files (log line), ready_s: exec to ready, restore included.")


if __name__ == "__main__":
    sys.exit(main())
