#!/usr/bin/env python3
"""Memory density under aquatic_udp_load_test: bytes per live peer.

Per round, each tracker in turn (the order rotates from round to round)
runs with one worker pinned to core 0 while aquatic_udp_load_test loads it
from core 1 for DURATION s with NUMBER_OF_TORRENTS torrents and
NUMBER_OF_PEERS peers (1 000 000 and 2 000 000, the load tester's own
defaults; every peer announces one torrent, drawn from a skewed
distribution, so about 430 000 torrents end up with peers). Per run:

- peak RSS (VmHWM) and steady RSS (VmRSS once the load has stopped, with
  every peer still alive: no tracker expires a peer within minutes);
- live peers, read from each tracker's own statistics after the load:
  ours from its Prometheus endpoint (aquatic_peers, swarm bt), aquatic_udp
  from its statistics printout (peers:, refreshed every cleaning), and
  opentracker from /stats?mode=peer on an HTTP port (127.0.0.1 blessed
  with -A); the table shows them, so that a tracker holding fewer peers
  does not look denser than it is;
- steady RSS / live peers: bytes per live peer, process overhead included;
- responses/s and responses per tracker CPU-second, as in compare.py.

The summary gives the median of each figure per tracker over the rounds.
"base" is another build of ours (--base, e.g. main), for the before/after.

Usage: python3 benches/density.py [--duration 20] [--rounds 4]
                                  [--trackers ours,base,aquatic,opentracker]
                                  [--ours target/release/aquatic] [--base PATH] [--peers DIR]
"""

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import compare

TORRENTS = 1_000_000
PEERS = 2_000_000


def load_command(load_binary, port, duration, work):
    text = compare.load_config("udp", load_binary, port, duration)
    text = compare.set_keys(text, {("requests", "number_of_torrents"): str(TORRENTS),
                                   ("requests", "number_of_peers"): str(PEERS)})
    path = os.path.join(work, "load.toml")
    with open(path, "w") as f:
        f.write(text)
    return [load_binary, "-c", path]


def tracker(name, binary, port, stats_port, work, ot_root):
    """The command line, and a function reading the live peers."""
    if name == "opentracker":
        command = ["opentracker", "-i", "127.0.0.1", "-P", str(port), "-p", str(stats_port),
                   "-A", "127.0.0.1", "-d", ot_root, "-w", "whitelist.txt"]

        def peers(_log):
            body = urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats?mode=peer", timeout=10).read()
            return int(body.split()[0])
        return command, peers
    cfg = os.path.join(work, f"{name}.toml")
    if name in ("ours", "base"):
        text = compare.ours_config("udp", port, work)
        text += f'[metrics]\nenabled = true\naddress = "127.0.0.1:{stats_port}"\n'

        def peers(_log):
            body = urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/metrics", timeout=10).read().decode()
            return sum(int(float(v)) for v in
                       re.findall(r'^aquatic_peers\{[^}]*swarm="bt"[^}]*\}\s+([0-9.e+]+)', body, re.M))
    else:
        text = compare.peer_config("udp", binary, port, work)
        text = compare.set_keys(text, {("statistics", "interval"): "1",
                                       ("statistics", "print_to_stdout"): "true",
                                       ("cleaning", "torrent_cleaning_interval"): "5"})

        def peers(log):
            with open(log) as f:
                found = re.findall(r"^\s*peers:\s+([0-9,]+)", f.read(), re.M)
            return int(found[-1].replace(",", "")) if found else 0
    with open(cfg, "w") as f:
        f.write(text)
    return [binary, "-c", cfg], peers


def run_one(name, binary, load_binary, duration, work, ot_root):
    port, stats_port = compare.free_port(), compare.free_port()
    command, read_peers = tracker(name, binary, port, stats_port, work, ot_root)
    log_path = os.path.join(work, f"{name}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(["taskset", "-c", "0", *command], stdout=log, stderr=log)
    try:
        compare.wait_for_port(port, "udp")
        time.sleep(0.5)
        cpu_before = compare.cpu_seconds(proc.pid)
        load = subprocess.run(["taskset", "-c", "1", *load_command(load_binary, port, duration, work)],
                              capture_output=True, text=True, timeout=duration + 120)
        cpu = compare.cpu_seconds(proc.pid) - cpu_before
        rps, errors = compare.responses_per_second(name, load, duration)
        # aquatic_udp counts peers at its cleaning (every 5 s here); ours
        # publishes every second.
        time.sleep(6)
        steady = compare.status_mib(proc.pid, "VmRSS:")
        peak = compare.peak_rss_mib(proc.pid)
        live = read_peers(log_path)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited during the run")
        return {"rps": rps, "errors": errors, "per_cpu": rps * duration / cpu if cpu > 0 else 0.0,
                "peak": peak, "steady": steady, "peers": live,
                "bytes_per_peer": steady * 1024 * 1024 / live if live else float("nan")}
    finally:
        compare.stop(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--trackers", default="ours,aquatic,opentracker")
    parser.add_argument("--ours", default=os.path.join(compare.ROOT, "target/release/aquatic"))
    parser.add_argument("--base", default=None, help="another build of ours, shown as 'base'")
    parser.add_argument("--peers", default=os.path.join(compare.HERE, ".peers"))
    args = parser.parse_args()
    names = args.trackers.split(",")
    if "base" in names and not args.base:
        parser.error("--trackers base needs --base PATH")
    compare.ensure_peers(args.peers, ["aquatic_udp", "aquatic_udp_load_test"])
    if "opentracker" in names:
        compare.ensure_debian_packages(["opentracker"])
    bin_dir = os.path.join(args.peers, "bin")
    binaries = {"ours": args.ours, "base": args.base, "aquatic": os.path.join(bin_dir, "aquatic_udp"),
                "opentracker": "opentracker"}
    load_binary = os.path.join(bin_dir, "aquatic_udp_load_test")
    work = tempfile.mkdtemp(prefix="aquatic-density-")
    ot_root = None
    if "opentracker" in names:
        ot_root = compare.opentracker_root(work, compare.load_test_info_hashes(TORRENTS))
    print("# " + shlex.join(["python3", *sys.argv]))
    print(f"# {TORRENTS:,} torrents, {PEERS:,} peers, {args.duration} s per run, {args.rounds} rounds, "
          "order rotating; tracker on core 0 (one worker), aquatic_udp_load_test on core 1")
    print("| round | tracker | responses/s | responses per CPU-second | live peers | peak RSS MiB "
          "| steady RSS MiB | bytes per live peer |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    runs = {n: [] for n in names}
    for round_ in range(1, args.rounds + 1):
        shift = (round_ - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            r = run_one(name, binaries[name], load_binary, args.duration, work, ot_root)
            runs[name].append(r)
            print(f"| {round_} | {name} | {r['rps']:,.0f} | {r['per_cpu']:,.0f} | {r['peers']:,} | "
                  f"{r['peak']:.1f} | {r['steady']:.1f} | {r['bytes_per_peer']:.1f} |", flush=True)
    print()
    print("| tracker | rounds | median responses per CPU-second | median live peers | median peak RSS MiB "
          "| median steady RSS MiB | median bytes per live peer |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        m = {k: statistics.median(r[k] for r in runs[name])
             for k in ("per_cpu", "peers", "peak", "steady", "bytes_per_peer")}
        print(f"| {name} | {len(runs[name])} | {m['per_cpu']:,.0f} | {m['peers']:,.0f} | {m['peak']:.1f} | "
              f"{m['steady']:.1f} | {m['bytes_per_peer']:.1f} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
