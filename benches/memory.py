#!/usr/bin/env python3
"""Resident memory of a UDP or HTTP tracker before, at and after a load.

Each tracker (ours, then aquatic_udp or aquatic_http) runs with one worker
pinned to core 0, peers expiring after PEER_TIMEOUT s and cleaning every
CLEANING s. The aquatic load tester, configured as in compare.py, loads it
from core 1 for DURATION s. VmRSS comes from /proc: before the load, at its
peak (VmHWM), and 1, 2 and 4 cleaning intervals after the peers have
expired (PEER_TIMEOUT s after the load stopped). WebSocket memory has its
own script, ws_memory.py, since there the connections hold the peers.

Usage: python3 benches/memory.py [--protocol udp|http] [--duration 10]
                                 [--ours target/release/aquatic] [--peers DIR]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import compare

PEER_TIMEOUT = 10
CLEANING = 2


def config(protocol, name, binary, port, work):
    if name == "ours":
        text = compare.ours_config(protocol, port, work)
        return text.replace("[tracker]\n", f"[tracker]\npeer_timeout_secs = {PEER_TIMEOUT}\n"
                                           f"cleaning_interval_secs = {CLEANING}\n", 1)
    text = compare.peer_config(protocol, binary, port, work)
    return compare.set_keys(text, {("cleaning", "torrent_cleaning_interval"): str(CLEANING),
                                   ("cleaning", "max_peer_age"): str(PEER_TIMEOUT)})


def measure(protocol, name, binary, load_binary, duration, work):
    port = compare.free_port()
    cfg = os.path.join(work, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(config(protocol, name, binary, port, work))
    load_cfg = os.path.join(work, "load.toml")
    with open(load_cfg, "w") as f:
        f.write(compare.load_config(protocol, load_binary, port, duration))
    log = open(os.path.join(work, f"{name}.log"), "w")
    tracker = subprocess.Popen(["taskset", "-c", "0", binary, "-c", cfg], stdout=log, stderr=log)
    try:
        compare.wait_for_port(port, protocol)
        time.sleep(1)
        before = compare.status_mib(tracker.pid, "VmRSS:")
        print(f"{name}: loading for {duration} s", file=sys.stderr, flush=True)
        subprocess.run(["taskset", "-c", "1", load_binary, "-c", load_cfg], capture_output=True, check=True,
                       timeout=duration + 60)
        peak = compare.peak_rss_mib(tracker.pid)
        stopped = time.time()
        after = []
        for intervals in (1, 2, 4):
            time.sleep(max(0.0, stopped + PEER_TIMEOUT + intervals * CLEANING - time.time()))
            after.append(compare.status_mib(tracker.pid, "VmRSS:"))
        if tracker.poll() is not None:
            raise RuntimeError(f"{name} exited during the run")
        return before, peak, after
    finally:
        compare.stop(tracker)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=["udp", "http"], default="udp")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--ours", default=os.path.join(compare.ROOT, "target/release/aquatic"))
    parser.add_argument("--peers", default=os.path.join(compare.HERE, ".peers"))
    args = parser.parse_args()
    compare.ensure_peers(args.peers)
    if not os.path.exists(args.ours):
        subprocess.run(["cargo", "build", "--release", "-p", "aquatic"], cwd=compare.ROOT, check=True)
    bin_dir = os.path.join(args.peers, "bin")
    load_binary = os.path.join(bin_dir, f"aquatic_{args.protocol}_load_test")
    work = tempfile.mkdtemp(prefix="aquatic-memory-")
    print(f"# {args.protocol} load {args.duration} s; peers expire after {PEER_TIMEOUT} s, "
          f"cleaning every {CLEANING} s")
    print("| tracker | before load | peak | 1 / 2 / 4 cleaning intervals after the peers expired |")
    print("|---|---|---|---|")
    peer = f"aquatic_{args.protocol}"
    for name, binary in [("ours", args.ours), (peer, os.path.join(bin_dir, peer))]:
        before, peak, after = measure(args.protocol, name, binary, load_binary, args.duration, work)
        shown = " / ".join(f"{x:.1f}" for x in after)
        print(f"| {name} | {before:.1f} MiB | {peak:.1f} MiB | {shown} MiB |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
