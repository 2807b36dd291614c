#!/usr/bin/env python3
"""Side-by-side throughput: our tracker against the original aquatic and opentracker.

One tracker at a time, pinned to core 0 with one worker; the original
aquatic's own load tester pinned to core 1 for DURATION seconds; trackers
alternate (ours, aquatic, opentracker per round). Per run: responses/s
(from the load tester), the tracker's CPU time over the load (utime+stime
from /proc/PID/stat), responses per tracker CPU-second (the fair figure
when one load-generator core cannot saturate the tracker) and peak RSS
(VmHWM). "of which errors/s": error responses and unreadable ones, counted
in responses/s by the load testers; an opentracker run with over 1% of
them is refused. The ratio columns divide each row's responses per
CPU-second by aquatic's (or opentracker's) in the same round.

"null" (UDP only) is aquatic/examples/udp_null_responder.rs: no tracker
work at all, batched system calls. Its figure is the ceiling the kernel
leaves any tracker on this machine.

Usage:
  python3 benches/compare.py [--protocols udp,http,ws] [--trackers ours,aquatic,opentracker,null]
                             [--duration 20] [--rounds 2] [--ours target/release/aquatic] [--peers DIR]
  python3 benches/compare.py --ab A_BINARY B_BINARY [--ab-labels A,B] [--protocols udp,http,ws]
                             [--duration 20] [--rounds 4] [--peers DIR]

A/B mode (--ab): two builds of ours, e.g. main against a branch, and
nothing else (--trackers and --ours are refused with it). Both get the
config "ours" gets. The order alternates: A then B in odd rounds, B then A
in even ones, so neither always runs first. --rounds defaults to 4 there
and may not be lower (a median of fewer runs on this noisy machine is not
worth printing). The output starts with the command line as given, then
the two binaries (path and the start of their sha256); per protocol, a
table with every round's runs (ratio column: this / A in that round),
then a summary: per build the median responses/s, responses per
CPU-second and peak RSS over the rounds, and B / A of the median
responses per CPU-second, with the range of the per-round ratios beside
it. Only the load testers are installed for this mode.

The peers (aquatic_udp/http/ws 0.9 and their load testers) are installed
into DIR/bin with `cargo install` when missing (default: benches/.peers);
opentracker and wrk with apt-get (Debian's packages; on a systemd host the
opentracker package also enables a service on port 6969).

opentracker is Debian's build, which serves only info hashes listed in its
whitelist. aquatic_udp_load_test draws its info hashes from a fixed seed,
so the whitelist holds exactly those (load_test_info_hashes); an info hash
outside it shows up as unreadable responses and refuses the run.
opentracker runs with its event loop only (no UDP worker threads), as
nobody in a chroot when started as root. Not configurable, compiled in:
the announce interval it hands out (30 min +- 3, against 120 s for the
others), peer timeout 45 min, numwant capped at 200 (the load testers ask
for 30, the cap never binds).

HTTP: aquatic_http_load_test relies on keep-alive and opentracker closes
every connection after its reply, so ours and opentracker are compared in
a second table under wrk (benches/wrk_announce.lua, 1 thread, 128
connections) with announce paths shaped like aquatic_http_load_test's
(wrk_paths). wrk reconnects after each close; opentracker's figure
therefore includes one TCP connection per request, ours does not.
"""

import argparse
import hashlib
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote_from_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = ["aquatic_udp", "aquatic_udp_load_test", "aquatic_http", "aquatic_http_load_test",
         "aquatic_ws", "aquatic_ws_load_test"]
TRACKERS = ["ours", "aquatic", "opentracker", "null"]
UDP_TORRENTS = 100_000
HTTP_TORRENTS = 10_000  # aquatic_http_load_test's default
WRK_CONNECTIONS = 128  # aquatic_http_load_test's default
CLK_TCK = os.sysconf("SC_CLK_TCK")
NULL_RESPONDER = os.path.join(ROOT, "target/release/examples/udp_null_responder")
U64 = (1 << 64) - 1


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ensure_peers(directory, names=PEERS):
    missing = [p for p in names if not os.path.exists(os.path.join(directory, "bin", p))]
    if missing:
        print(f"installing {' '.join(missing)} into {directory} (a few minutes, once)", flush=True)
        # Not --locked: aquatic_udp 0.9.0's lock file pins a metrics crate
        # that no longer builds on current rustc.
        subprocess.run(["cargo", "install", "--root", directory, *missing], check=True)


def ensure_debian_packages(packages):
    missing = [p for p in packages if not shutil.which(p)]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get (Debian packages, once)", flush=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def load_test_info_hashes(count):
    """The info hashes aquatic_udp_load_test 0.9 announces and scrapes.

    InfoHashDist::new: SmallRng::seed_from_u64(0xc3aa8be617b3acce), then 20
    rng.gen::<u8>() per hash. rand 0.8's SmallRng on 64-bit is
    Xoshiro256PlusPlus, seeded by rand_core 0.6's default seed_from_u64
    (SmallRng does not forward to Xoshiro's SplitMix64 one): PCG32 output
    fills the 32-byte seed, read as four little-endian u64. A u8 sample is
    next_u32() truncated, and next_u32() is the upper half of next_u64().
    """
    state, words = 0xc3aa8be617b3acce, []
    for _ in range(8):
        state = (state * 6364136223846793005 + 11634580027462260723) & U64
        xorshifted = (((state >> 18) ^ state) >> 27) & 0xFFFFFFFF
        rot = state >> 59
        words.append(((xorshifted >> rot) | (xorshifted << (32 - rot))) & 0xFFFFFFFF)
    s = [words[i] | words[i + 1] << 32 for i in range(0, 8, 2)]

    def next_u64():
        total = (s[0] + s[3]) & U64
        result = (((total << 23) | (total >> 41)) + s[0]) & U64
        t = (s[1] << 17) & U64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & U64
        return result

    return [bytes((next_u64() >> 32) & 0xFF for _ in range(20)) for _ in range(count)]


def opentracker_root(work, hashes):
    """Directory opentracker chroots into (when started as root, then as nobody), holding its whitelist."""
    root = os.path.join(work, "opentracker")
    os.mkdir(root)
    os.chmod(root, 0o755)
    whitelist = os.path.join(root, "whitelist.txt")
    with open(whitelist, "w") as f:
        f.writelines(h.hex() + "\n" for h in hashes)
    os.chmod(whitelist, 0o644)
    return root


def wrk_paths(hashes, path, count=100_000):
    """Announce paths like aquatic_http_load_test's: the info hash index from
    Gamma(0.2, 100) over HTTP_TORRENTS hashes (mostly the first), a quarter
    of the peers seeding, random peer id and port; numwant=30 as in the UDP runs."""
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(count):
            p = rng.gammavariate(0.2, 100.0)
            index = int(max(0.0, (min(p, 101.0) - 1.0) / 100.0) * (HTTP_TORRENTS - 1))
            left = "event=completed&left=0" if rng.random() < 0.25 else "event=started&left=50"
            f.write(f"/announce?info_hash={quote_from_bytes(hashes[index], safe='')}"
                    f"&peer_id={quote_from_bytes(rng.randbytes(20), safe='')}&port={rng.randrange(65536)}"
                    f"&uploaded=0&downloaded=0&numwant=30&compact=1&{left}\n")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_mib(pid, field):
    """A memory figure of /proc/PID/status (VmRSS:, VmHWM:, ...) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib(pid):
    return status_mib(pid, "VmHWM:")


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
        # aquatic_ws has no such cap, and its load tester announces up to
        # number_of_torrents (10 000) torrents on each connection; 65536 is
        # the largest value our config accepts.
        "max_peers_per_connection = 65536",
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
        values.update({("", "workers"): "1", ("requests", "number_of_torrents"): str(UDP_TORRENTS),
                       ("requests", "number_of_peers"): "200000",
                       ("requests", "announce_peers_wanted"): "30"})
    elif protocol == "http":
        values.update({("", "num_workers"): "1", ("", "enable_tls"): "false"})
    else:
        values.update({("", "num_workers"): "1"})
    return set_keys(text, values)


def responses_per_second(name, load, duration):
    """The load tester's (or wrk's) figure, and how many of those per second
    were error responses or unreadable (aquatic_udp_load_test cannot parse
    opentracker's refusal of an info hash outside its whitelist)."""
    match = re.search(r"Average responses per second: ([0-9.]+)|Requests/sec:\s+([0-9.]+)", load.stdout)
    if not match:
        raise RuntimeError(f"{name}: no figure from the load tester:\n{load.stdout[-1500:]}{load.stderr[-1500:]}")
    rps = float(match.group(1) or match.group(2))
    errors = [float(x) for x in re.findall(r"(?:Error|Failure) responses:\s+([0-9.]+)", load.stdout)]
    failures = re.search(r"^failures: (\d+)$", load.stdout, re.M)
    bad = (sum(errors) / len(errors) if errors else 0.0) + (
        load.stderr.count("Received invalid response") + (int(failures.group(1)) if failures else 0)) / duration
    return rps, bad


def stop(tracker):
    """SIGTERM, and SIGKILL if the tracker has not exited within 10 s."""
    tracker.send_signal(signal.SIGTERM)
    try:
        tracker.wait(10)
    except subprocess.TimeoutExpired:
        tracker.kill()


def file_name(name):
    """A tracker's name (an --ab label may be anything) made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def run_one(name, command, kind, port, load_command, duration, work):
    log = open(os.path.join(work, f"{file_name(name)}.log"), "w")
    tracker = subprocess.Popen(["taskset", "-c", "0", *command], stdout=log, stderr=log)
    try:
        wait_for_port(port, kind)
        time.sleep(0.5)
        cpu_before = cpu_seconds(tracker.pid)
        load = subprocess.run(["taskset", "-c", "1", *load_command], capture_output=True, text=True,
                              timeout=duration + 60)
        cpu = cpu_seconds(tracker.pid) - cpu_before
        rss = peak_rss_mib(tracker.pid)
        rps, errors = responses_per_second(name, load, duration)
        if tracker.poll() is not None:
            raise RuntimeError(f"{name} exited during the run")
        if name == "opentracker" and errors > 0.01 * rps:
            raise RuntimeError(f"opentracker: {errors:,.0f} of {rps:,.0f} responses/s were errors or unreadable "
                               "(info hashes outside its whitelist?)")
        return {"rps": rps, "errors": errors, "cpu": cpu, "per_cpu": rps * duration / cpu if cpu > 0 else 0.0,
                "rss": rss}
    finally:
        stop(tracker)


def tracker_command(name, protocol, port, args, work, ot_root):
    if name == "null":
        return [NULL_RESPONDER, f"127.0.0.1:{port}"]
    if name == "opentracker":
        return ["opentracker", "-i", "127.0.0.1", "-P" if protocol == "udp" else "-p", str(port),
                "-d", ot_root, "-w", "whitelist.txt"]
    if name == "ours":
        return ours_command(name, args.ours, protocol, port, work)
    binary = os.path.join(args.peers, "bin", f"aquatic_{protocol}")
    cfg = os.path.join(work, f"{name}-{protocol}.toml")
    with open(cfg, "w") as f:
        f.write(peer_config(protocol, binary, port, work))
    return [binary, "-c", cfg]


def ours_command(name, binary, protocol, port, work):
    cfg = os.path.join(work, f"{file_name(name)}-{protocol}.toml")
    with open(cfg, "w") as f:
        f.write(ours_config(protocol, port, work))
    return [binary, "-c", cfg]


def print_table_header(ratio_against):
    ratios = "".join(f" this / {other} (per CPU-s) |" for other in ratio_against)
    print("| protocol | round | tracker | responses/s | of which errors/s | tracker CPU s | responses per CPU-second "
          "| peak RSS MiB |" + ratios)
    print("|---" * (8 + len(ratio_against)) + "|", flush=True)


def print_round(label, round_, results, ratio_against):
    for name, r in results.items():
        cells = [label, str(round_), name, f"{r['rps']:,.0f}", f"{r['errors']:,.0f}", f"{r['cpu']:.1f}",
                 f"{r['per_cpu']:,.0f}", f"{r['rss']:.0f}"]
        for other in ratio_against:
            ratio = name != other and other in results and results[other]["per_cpu"]
            cells.append(f"{r['per_cpu'] / results[other]['per_cpu']:.2f}" if ratio else "")
        print("| " + " | ".join(cells) + " |", flush=True)


AB_MIN_ROUNDS = 4


def make_certificate(work):
    """A self-signed certificate and key for WSS, work/cert.pem and work/key.pem."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem", "-subj", "/CN=example.com",
                    "-addext", "subjectAltName=DNS:example.com"], check=True, capture_output=True)


def load_command(protocol, load_binary, port, duration, work):
    load_cfg = os.path.join(work, f"load-{protocol}.toml")
    with open(load_cfg, "w") as f:
        f.write(load_config(protocol, load_binary, port, duration))
    return [load_binary, "-c", load_cfg]


def sha256_prefix(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def print_ab_summary(protocol, labels, runs):
    """Per build the medians over its rounds; on B's row B / A of the median
    responses per CPU-second, and the lowest and highest per-round ratio."""
    a, b = labels
    print(f"| protocol | tracker | rounds | median responses/s | median responses per CPU-second "
          f"| median peak RSS MiB | this / {a} (median per CPU-s) | this / {a} per round, min–max (per CPU-s) |")
    print("|---" * 8 + "|")
    medians = {label: {key: statistics.median(r[key] for r in runs[label]) for key in ("rps", "per_cpu", "rss")}
               for label in labels}
    per_round = [rb["per_cpu"] / ra["per_cpu"] for ra, rb in zip(runs[a], runs[b]) if ra["per_cpu"]]
    for label in labels:
        m = medians[label]
        ratio = spread = ""
        if label == b and medians[a]["per_cpu"]:
            ratio = f"{m['per_cpu'] / medians[a]['per_cpu']:.3f}"
            spread = f"{min(per_round):.3f}–{max(per_round):.3f}" if per_round else ""
        cells = [protocol, label, str(len(runs[label])), f"{m['rps']:,.0f}", f"{m['per_cpu']:,.0f}",
                 f"{m['rss']:.0f}", ratio, spread]
        print("| " + " | ".join(cells) + " |", flush=True)


def run_ab(args, protocols, labels, binaries, work):
    """Two builds of ours, alternating: A B in odd rounds, B A in even ones."""
    a = labels[0]
    print("# " + shlex.join(["python3", *sys.argv]))
    for label, binary in zip(labels, binaries):
        print(f"# {label} = {binary} (sha256 {sha256_prefix(binary)})")
    print(f"# {args.duration} s per run, {args.rounds} rounds, order {labels[0]} {labels[1]} in odd rounds and "
          f"{labels[1]} {labels[0]} in even ones, tracker on core 0, load tester on core 1", flush=True)
    bin_dir = os.path.join(args.peers, "bin")
    for protocol in protocols:
        load_binary = os.path.join(bin_dir, f"aquatic_{protocol}_load_test")
        print(f"\n## {protocol}\n")
        print_table_header([a])
        runs = {label: [] for label in labels}
        for round_ in range(1, args.rounds + 1):
            order = [0, 1] if round_ % 2 == 1 else [1, 0]
            results = {}
            for i in order:
                port = free_port()
                command = ours_command(labels[i], binaries[i], protocol, port, work)
                results[labels[i]] = run_one(labels[i], command, protocol, port,
                                             load_command(protocol, load_binary, port, args.duration, work),
                                             args.duration, work)
                runs[labels[i]].append(results[labels[i]])
            print_round(protocol, round_, results, [a])
        print()
        print_ab_summary(protocol, labels, runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default="udp,http,ws")
    parser.add_argument("--trackers", default=None,
                        help="opentracker takes part in udp, and in http under wrk; null only in udp "
                             f"(default: {','.join(TRACKERS)})")
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"default 2, and {AB_MIN_ROUNDS} (also the least allowed) with --ab")
    parser.add_argument("--ours", default=None, help="default: target/release/aquatic")
    parser.add_argument("--ab", nargs=2, metavar=("A_BINARY", "B_BINARY"),
                        help="two builds of ours against each other, and nothing else")
    parser.add_argument("--ab-labels", default="A,B", metavar="A,B",
                        help="their names in the tables (default: A,B)")
    parser.add_argument("--peers", default=os.path.join(HERE, ".peers"))
    args = parser.parse_args()
    protocols = args.protocols.split(",")
    unknown = [p for p in protocols if p not in ("udp", "http", "ws")]
    if unknown:
        parser.error(f"unknown protocol(s): {','.join(unknown)}")

    if args.ab:
        if args.trackers is not None or args.ours is not None:
            parser.error("--ab compares its two binaries only: no --trackers, no --ours with it")
        labels = args.ab_labels.split(",")
        if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
            parser.error("--ab-labels takes two different names, as A,B")
        if args.rounds is None:
            args.rounds = AB_MIN_ROUNDS
        if args.rounds < AB_MIN_ROUNDS:
            parser.error(f"--ab needs at least {AB_MIN_ROUNDS} rounds (got {args.rounds})")
        binaries = [os.path.abspath(b) for b in args.ab]
        for binary in binaries:
            if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
                parser.error(f"not an executable file: {binary}")
        ensure_peers(args.peers, [f"aquatic_{p}_load_test" for p in protocols])
        work = tempfile.mkdtemp(prefix="aquatic-bench-")
        try:
            if "ws" in protocols:
                make_certificate(work)
            run_ab(args, protocols, labels, binaries, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return

    if args.rounds is None:
        args.rounds = 2
    if args.ours is None:
        args.ours = os.path.join(ROOT, "target/release/aquatic")
    if args.trackers is None:
        args.trackers = ",".join(TRACKERS)
    trackers = [t for t in TRACKERS if t in args.trackers.split(",")]
    with_opentracker = "opentracker" in trackers and ("udp" in protocols or "http" in protocols)

    ensure_peers(args.peers)
    if with_opentracker:
        ensure_debian_packages(["opentracker", "wrk"] if "http" in protocols else ["opentracker"])
    if not os.path.exists(args.ours):
        subprocess.run(["cargo", "build", "--release", "-p", "aquatic"], cwd=ROOT, check=True)
    if "null" in trackers and "udp" in protocols:
        subprocess.run(["cargo", "build", "--release", "-p", "aquatic", "--example", "udp_null_responder"],
                       cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="aquatic-bench-")
    make_certificate(work)
    ot_root = None
    if with_opentracker:
        hashes = load_test_info_hashes(UDP_TORRENTS)
        ot_root = opentracker_root(work, hashes)
        wrk_paths(hashes, os.path.join(work, "wrk-paths.txt"))
    bin_dir = os.path.join(args.peers, "bin")
    ratio_against = [t for t in trackers if t == "aquatic" or t == "opentracker" and "udp" in protocols]
    print(f"# {args.duration} s per run, {args.rounds} rounds, tracker on core 0, load tester on core 1")
    print_table_header(ratio_against)
    for protocol in protocols:
        load_binary = os.path.join(bin_dir, f"aquatic_{protocol}_load_test")
        names = [t for t in trackers if t not in ("opentracker", "null") or protocol == "udp"]
        for round_ in range(1, args.rounds + 1):
            results = {}
            for name in names:
                port = free_port()
                results[name] = run_one(name, tracker_command(name, protocol, port, args, work, ot_root), protocol,
                                        port, load_command(protocol, load_binary, port, args.duration, work),
                                        args.duration, work)
            print_round(protocol, round_, results, ratio_against)

    if "http" in protocols and with_opentracker:
        names = [t for t in trackers if t in ("ours", "opentracker")]
        print(f"\n# http under wrk (1 thread, {WRK_CONNECTIONS} connections), ours against opentracker")
        print_table_header(["opentracker"])
        for round_ in range(1, args.rounds + 1):
            results = {}
            for name in names:
                port = free_port()
                wrk = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{args.duration}s",
                       "-s", os.path.join(HERE, "wrk_announce.lua"), f"http://127.0.0.1:{port}",
                       "--", os.path.join(work, "wrk-paths.txt")]
                results[name] = run_one(name, tracker_command(name, "http", port, args, work, ot_root), "http",
                                        port, wrk, args.duration, work)
            print_round("http (wrk)", round_, results, ["opentracker"])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
