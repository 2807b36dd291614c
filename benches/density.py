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

--fill N: before the load test, benches/udp_fill.py announces the first N
of the load tester's own peers (same torrents, ports, address and zero
peer id, each once, answers counted, dropped ones sent again), so that
every tracker holds the same peers however fast the load tester manages
to go on a loaded machine; the load test then re-announces peers the
tracker already holds. The table then also shows the fill's time and
answers and the live peers and RSS right after it. With --fill every run's
live peers must be within 1 % of the list's distinct peers: a run that is
not is named at the end and the script exits 1 (the comparison would mean
nothing).

Usage: python3 benches/density.py [--duration 20] [--rounds 4] [--fill 2000000]
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
import udp_fill

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


def run_one(name, binary, load_binary, duration, work, ot_root, fill):
    """One tracker: start, fill (if fill is given), load, read the figures."""
    port, stats_port = compare.free_port(), compare.free_port()
    command, read_peers = tracker(name, binary, port, stats_port, work, ot_root)
    log_path = os.path.join(work, f"{name}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(["taskset", "-c", "0", *command], stdout=log, stderr=log)
    try:
        compare.wait_for_port(port, "udp")
        time.sleep(0.5)
        filled = {}
        if fill:
            hashes, index, ports = fill
            # The filler runs on core 1, where the load tester runs next.
            os.sched_setaffinity(0, {1})
            try:
                filled = udp_fill.Filler(("127.0.0.1", port), hashes, index, ports).run()
            finally:
                os.sched_setaffinity(0, {0, 1})
            # Let aquatic_udp's statistics (every cleaning, 5 s here) catch up.
            time.sleep(6)
            filled["peers"] = read_peers(log_path)
            filled["rss"] = compare.status_mib(proc.pid, "VmRSS:")
            filled["peak"] = compare.peak_rss_mib(proc.pid)
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
                "bytes_per_peer": steady * 1024 * 1024 / live if live else float("nan"), "fill": filled}
    finally:
        compare.stop(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--fill", type=int, default=0, metavar="N",
                        help=f"announce the load tester's first N peers (at most {PEERS:,}) before the load")
    parser.add_argument("--trackers", default="ours,aquatic,opentracker")
    parser.add_argument("--ours", default=os.path.join(compare.ROOT, "target/release/aquatic"))
    parser.add_argument("--base", default=None, help="another build of ours, shown as 'base'")
    parser.add_argument("--peers", default=os.path.join(compare.HERE, ".peers"))
    args = parser.parse_args()
    names = args.trackers.split(",")
    if "base" in names and not args.base:
        parser.error("--trackers base needs --base PATH")
    if not 0 <= args.fill <= PEERS:
        parser.error(f"--fill takes 0 to {PEERS:,} peers")
    compare.ensure_peers(args.peers, ["aquatic_udp", "aquatic_udp_load_test"])
    if "opentracker" in names:
        compare.ensure_debian_packages(["opentracker"])
    bin_dir = os.path.join(args.peers, "bin")
    binaries = {"ours": args.ours, "base": args.base, "aquatic": os.path.join(bin_dir, "aquatic_udp"),
                "opentracker": "opentracker"}
    load_binary = os.path.join(bin_dir, "aquatic_udp_load_test")
    work = tempfile.mkdtemp(prefix="aquatic-density-")
    hashes = compare.load_test_info_hashes(TORRENTS) if args.fill or "opentracker" in names else None
    ot_root = None
    if "opentracker" in names:
        ot_root = compare.opentracker_root(work, hashes)
    fill = None
    expected = 0
    if args.fill:
        index, ports = udp_fill.load_test_peers(TORRENTS, PEERS, args.peers)
        index, ports = index[:args.fill], ports[:args.fill]
        expected = udp_fill.distinct_peers(index, ports)
        fill = (hashes, index, ports)
    print("# " + shlex.join(["python3", *sys.argv]))
    print(f"# {TORRENTS:,} torrents, {PEERS:,} peers, {args.duration} s per run, {args.rounds} rounds, "
          "order rotating; tracker on core 0 (one worker), aquatic_udp_load_test on core 1")
    if fill:
        print(f"# filled first with the load tester's first {args.fill:,} peers: {expected:,} distinct "
              f"(torrent, port) pairs over {len(udp_fill.peers_per_torrent(index)):,} torrents")
    print(f"# load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    fill_head = "| fill s | fill answers (errors) | live peers after fill | RSS after fill MiB " if fill else ""
    print("| round | tracker " + fill_head + "| responses/s | responses per CPU-second | live peers | peak RSS MiB "
          "| steady RSS MiB | bytes per live peer | load average |")
    print("|---" * (9 + (4 if fill else 0)) + "|", flush=True)
    runs = {n: [] for n in names}
    off = []
    for round_ in range(1, args.rounds + 1):
        shift = (round_ - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            r = run_one(name, binaries[name], load_binary, args.duration, work, ot_root, fill)
            runs[name].append(r)
            f = r["fill"]
            fill_cells = (f"{f['seconds']:.0f} | {f['announce']:,} ({f['error']:,}) | {f['peers']:,} | "
                          f"{f['rss']:.1f} | ") if fill else ""
            print(f"| {round_} | {name} | {fill_cells}{r['rps']:,.0f} | {r['per_cpu']:,.0f} | {r['peers']:,} | "
                  f"{r['peak']:.1f} | {r['steady']:.1f} | {r['bytes_per_peer']:.1f} | {os.getloadavg()[0]:.1f} |",
                  flush=True)
            if fill and abs(r["peers"] - expected) > 0.01 * expected:
                off.append(f"round {round_}, {name}: {r['peers']:,} live peers, not the {expected:,} filled")
    print()
    print("| tracker | rounds | median responses per CPU-second | median live peers | median peak RSS MiB "
          "| median steady RSS MiB | median bytes per live peer |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        m = {k: statistics.median(r[k] for r in runs[name])
             for k in ("per_cpu", "peers", "peak", "steady", "bytes_per_peer")}
        print(f"| {name} | {len(runs[name])} | {m['per_cpu']:,.0f} | {m['peers']:,.0f} | {m['peak']:.1f} | "
              f"{m['steady']:.1f} | {m['bytes_per_peer']:.1f} |", flush=True)
    if fill:
        print()
        print("NOT COMPARABLE (more than 1 % from the filled peers): " + "; ".join(off) if off else
              f"every run held its live peers within 1 % of the {expected:,} filled")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
