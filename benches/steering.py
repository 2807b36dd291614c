#!/usr/bin/env python3
"""UDP kernel steering on against off: one build of ours, two workers.

The tracker runs with `workers = 2`, pinned to cores 0 and 1 (the whole
machine here); aquatic_udp_load_test (2 workers, 4 sockets each, one
loopback address per socket) shares the same two cores, for DURATION
seconds per run. The two configurations differ in `udp.kernel_steering`
only and alternate: on then off in odd rounds, off then on in even ones.

Per run: responses/s (the load tester's figure), the tracker's CPU time
over the load (utime+stime of the process, /proc/PID/stat), responses per
tracker CPU-second, and from the tracker's metrics endpoint the fraction
of announces and of scrapes that crossed the mesh
(aquatic_udp_routed_total{route="forwarded"} over all routed) and the
kernel's drops on the tracker's sockets (aquatic_udp_kernel_drops_total).
Then a summary: medians per configuration and on / off of the median
responses per CPU-second with the range of the per-round ratios.

Usage:
  python3 benches/steering.py [--binary target/release/aquatic] [--duration 10] [--rounds 4]
                              [--peers DIR]

aquatic_udp_load_test 0.9 is installed into DIR/bin with `cargo install`
when missing (default: benches/.peers, shared with compare.py).
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import compare  # noqa: E402  (the helpers the side-by-side benchmark uses)

WORKERS = 2
LOAD_WORKERS = 2
TORRENTS = 100_000
CONFIGS = ["on", "off"]


def tracker_config(steering, port, metrics_port):
    return "\n".join([
        f"workers = {WORKERS}",
        'log_level = "error"',
        "[runtime]",
        "pin_cpus = true",
        "first_core = 0",
        "[tracker]",
        "announce_interval_secs = 120",
        "default_numwant = 30",
        "max_numwant = 50",
        "[udp]",
        f'address = "127.0.0.1:{port}"',
        "socket_recv_buffer_size = 8000000",
        f"kernel_steering = {'true' if steering == 'on' else 'false'}",
        "[http]",
        "enabled = false",
        "[ws]",
        "enabled = false",
        "[metrics]",
        "enabled = true",
        f'address = "127.0.0.1:{metrics_port}"',
    ]) + "\n"


def load_config(binary, port, duration):
    text = compare.printed_config(binary)
    return compare.set_keys(text, {
        ("", "server_address"): f'"127.0.0.1:{port}"',
        ("", "duration"): str(duration),
        ("", "workers"): str(LOAD_WORKERS),
        ("requests", "number_of_torrents"): str(TORRENTS),
        ("requests", "number_of_peers"): "200000",
        ("requests", "announce_peers_wanted"): "30",
    })


def metric_sum(text, name, *labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def read_metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def fraction_forwarded(text, action):
    routed = "aquatic_udp_routed_total"
    forwarded = metric_sum(text, routed, f'action="{action}"', 'route="forwarded"')
    local = metric_sum(text, routed, f'action="{action}"', 'route="local"')
    return forwarded / (forwarded + local) if forwarded + local else 0.0


def run_one(steering, binary, load_binary, duration, work):
    port, metrics_port = compare.free_port(), compare.free_port()
    cfg = os.path.join(work, f"steering-{steering}.toml")
    with open(cfg, "w") as f:
        f.write(tracker_config(steering, port, metrics_port))
    load_cfg = os.path.join(work, "load.toml")
    with open(load_cfg, "w") as f:
        f.write(load_config(load_binary, port, duration))
    log = open(os.path.join(work, f"steering-{steering}.log"), "w")
    # The executors pin themselves to cores 0 and 1.
    tracker = subprocess.Popen([binary, "-c", cfg], stdout=log, stderr=log)
    try:
        compare.wait_for_port(port, "udp")
        time.sleep(0.5)
        cpu_before = compare.cpu_seconds(tracker.pid)
        load = subprocess.run(["taskset", "-c", "0,1", load_binary, "-c", load_cfg], capture_output=True,
                              text=True, timeout=duration + 60)
        cpu = compare.cpu_seconds(tracker.pid) - cpu_before
        rps, errors = compare.responses_per_second(f"steering {steering}", load, duration)
        if tracker.poll() is not None:
            raise RuntimeError(f"steering {steering}: the tracker exited during the run")
        time.sleep(1.5)  # executors publish their counters once a second
        text = read_metrics(metrics_port)
        gauge = metric_sum(text, "aquatic_udp_kernel_steering")
        if gauge != (WORKERS if steering == "on" else 0):
            raise RuntimeError(f"steering {steering}: aquatic_udp_kernel_steering is {gauge}")
        return {"rps": rps, "errors": errors, "cpu": cpu, "per_cpu": rps * duration / cpu if cpu > 0 else 0.0,
                "announce_fwd": fraction_forwarded(text, "announce"),
                "scrape_fwd": fraction_forwarded(text, "scrape"),
                "drops": metric_sum(text, "aquatic_udp_kernel_drops_total")}
    finally:
        compare.stop(tracker)


def print_row(round_, steering, r, ratio):
    cells = [str(round_), steering, f"{r['rps']:,.0f}", f"{r['errors']:,.0f}", f"{r['cpu']:.1f}",
             f"{r['per_cpu']:,.0f}", f"{r['announce_fwd']:.3f}", f"{r['scrape_fwd']:.3f}", f"{r['drops']:,.0f}",
             ratio]
    print("| " + " | ".join(cells) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/aquatic"))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--peers", default=os.path.join(HERE, ".peers"))
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (each order once)")
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release", "-p", "aquatic"], cwd=ROOT, check=True)
    compare.ensure_peers(args.peers, ["aquatic_udp_load_test"])
    load_binary = os.path.join(args.peers, "bin", "aquatic_udp_load_test")

    print("# " + shlex.join(["python3", *sys.argv]))
    print(f"# {args.binary} (sha256 {compare.sha256_prefix(args.binary)}), {args.duration} s per run, "
          f"{args.rounds} rounds, on off in odd rounds and off on in even ones; tracker: {WORKERS} workers pinned "
          f"to cores 0 and 1; load tester: {LOAD_WORKERS} workers on the same cores", flush=True)
    print("| round | steering | responses/s | of which errors/s | tracker CPU s | responses per CPU-second "
          "| announces forwarded | scrapes forwarded | kernel drops | on / off (per CPU-s) |")
    print("|---" * 10 + "|", flush=True)
    work = tempfile.mkdtemp(prefix="aquatic-steering-")
    runs = {c: [] for c in CONFIGS}
    try:
        for round_ in range(1, args.rounds + 1):
            order = CONFIGS if round_ % 2 == 1 else CONFIGS[::-1]
            results = {}
            for steering in order:
                results[steering] = run_one(steering, args.binary, load_binary, args.duration, work)
                runs[steering].append(results[steering])
            for steering in order:
                ratio = ""
                if steering == "on" and results["off"]["per_cpu"]:
                    ratio = f"{results['on']['per_cpu'] / results['off']['per_cpu']:.3f}"
                print_row(round_, steering, results[steering], ratio)
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| steering | rounds | median responses/s | median responses per CPU-second | median announces forwarded "
          "| median scrapes forwarded | on / off (median per CPU-s) | on / off per round, min–max |")
    print("|---" * 8 + "|")
    per_round = [on["per_cpu"] / off["per_cpu"] for on, off in zip(runs["on"], runs["off"]) if off["per_cpu"]]
    medians = {c: {k: statistics.median(r[k] for r in runs[c]) for k in ("rps", "per_cpu", "announce_fwd",
                                                                           "scrape_fwd")} for c in CONFIGS}
    for c in CONFIGS:
        m = medians[c]
        ratio = spread = ""
        if c == "on" and medians["off"]["per_cpu"]:
            ratio = f"{m['per_cpu'] / medians['off']['per_cpu']:.3f}"
            spread = f"{min(per_round):.3f}–{max(per_round):.3f}"
        print(f"| {c} | {len(runs[c])} | {m['rps']:,.0f} | {m['per_cpu']:,.0f} | {m['announce_fwd']:.3f} "
              f"| {m['scrape_fwd']:.3f} | {ratio} | {spread} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
