#!/usr/bin/env python3
"""What a forwarded UDP announce costs, against a local one.

Starts two cluster nodes (a, b; one worker each, no pinning) with
certificates from deploy/cluster/make-pki.sh, then alternates, round by
round, two loads of the same size sent to node a:

  local:     info hashes node a owns (rendezvous hashing, computed here
             with the same SipHash-2-4 layout as aquatic/src/cluster/ownership.rs)
  forwarded: info hashes node b owns: a forwards each announce over the
             link, b answers, a sends the reply
  alone:     the forwarded load's info hashes sent to a third process, a
             node that is no cluster member (the same load served by one
             node alone)

Per run: responses, CPU seconds of both cluster nodes together (of the one
node for 'alone') (utime+stime from
/proc), responses per CPU-second, and for forwarded runs the link's bytes
(a -> b and b -> a, from a's metrics) per forwarded announce. The client
is one Python process sending batches of announces and waiting for every
reply (a window of WINDOW in flight), so the figures are per response, not
a throughput ceiling.

Usage: python3 benches/cluster_forwarding.py [--binary target/release/aquatic]
           [--announces 20000] [--rounds 4]
"""

import argparse
import os
import random
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
WINDOW = 64
MASK = (1 << 64) - 1


def rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK


def siphash24(k0, k1, message):
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rnd():
        v[0] = (v[0] + v[1]) & MASK; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & MASK; v[3] = rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & MASK; v[3] = rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & MASK; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)

    padded = bytearray(message) + bytes(8 - len(message) % 8)
    padded[-1] = len(message) & 0xFF
    for i in range(0, len(padded), 8):
        m = struct.unpack("<Q", padded[i:i + 8])[0]
        v[3] ^= m; rnd(); rnd(); v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(4):
        rnd()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


K0 = struct.unpack("<Q", b"aquatic-")[0]
K1 = struct.unpack("<Q", b"hrw-v1\0\0")[0]


def owner(names, info_hash):
    return max(names, key=lambda n: (siphash24(K0, K1, n.encode() + info_hash[4:]), n))


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port, name, labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(l in line for l in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_node(binary, work, name, cluster=""):
    """One tracker process (one worker, UDP and metrics only), with the
    `cluster` config section if given; waits until it is ready."""
    udp, metrics = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f"""workers = 1
log_level = "warn"
[runtime]
pin_cpus = false
[tracker]
default_numwant = 30
[udp]
address = "127.0.0.1:{udp}"
socket_recv_buffer_size = 8000000
[http]
enabled = false
[ws]
enabled = false
[metrics]
enabled = true
address = "127.0.0.1:{metrics}"
{cluster}""")
    proc = subprocess.Popen([binary, "-c", config], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while not proc.stdout.readline().startswith("aquatic: ready"):
        if proc.poll() is not None:
            sys.exit(f"node {name} did not start")
    return {"proc": proc, "udp": udp, "metrics": metrics}


def start_nodes(binary, work):
    pki = os.path.join(work, "pki")
    subprocess.run(["sh", os.path.join(HERE, "..", "deploy", "cluster", "make-pki.sh"), pki, "a", "b"],
                   check=True, capture_output=True)
    links = [free_port(socket.SOCK_STREAM) for _ in range(2)]
    members = ", ".join(f'{{ name = "{n}", address = "127.0.0.1:{p}" }}' for n, p in zip("ab", links))
    nodes = []
    for name, link in zip("ab", links):
        nodes.append(start_node(binary, work, name, f"""[cluster]
enabled = true
node = "{name}"
listen = "127.0.0.1:{link}"
members = [{members}]
key_file = "{pki}/connection-id.key"
ca_certificate_path = "{pki}/ca.pem"
certificate_path = "{pki}/{name}.pem"
private_key_path = "{pki}/{name}.key"
"""))
    deadline = time.time() + 20
    while any(metric(n["metrics"], "aquatic_cluster_member_live", []) < 2 for n in nodes):
        if time.time() > deadline:
            sys.exit("the nodes did not link")
        time.sleep(0.1)
    return nodes


def connect(sock, address):
    sock.sendto(struct.pack(">qii", 0x41727101980, 0, 1), address)
    data, _ = sock.recvfrom(2048)
    return struct.unpack(">iiq", data[:16])[2]


def announce_all(sock, address, connection_id, hashes):
    """Sends one announce per hash, WINDOW in flight; returns the replies."""
    replies = sent = 0
    sock.settimeout(2)
    while replies < len(hashes):
        while sent < len(hashes) and sent - replies < WINDOW:
            h = hashes[sent]
            peer_id = os.urandom(20)
            sock.sendto(struct.pack(">qii20s20sqqqiIIiH", connection_id, 1, sent, h, peer_id,
                                    0, 100, 0, 2, 0, 0, -1, 6881), address)
            sent += 1
        try:
            data, _ = sock.recvfrom(4096)
        except socket.timeout:
            break
        if struct.unpack(">i", data[:4])[0] == 1:
            replies += 1
    return replies


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release", "aquatic"))
    parser.add_argument("--announces", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    work = tempfile.mkdtemp(prefix="aquatic-cluster-bench-")
    nodes = start_nodes(args.binary, work)
    alone = start_node(args.binary, work, "alone")
    a = nodes[0]
    rng = random.Random(7)
    pools = {"local": [], "forwarded": []}
    while min(len(p) for p in pools.values()) < args.announces:
        h = bytes(rng.getrandbits(8) for _ in range(20))
        pool = pools["local" if owner(["a", "b"], h) == "a" else "forwarded"]
        if len(pool) < args.announces:
            pool.append(h)
    # "alone": the forwarded load's torrents, sent to one node that is no
    # cluster member and answers everything itself.
    pools["alone"] = pools["forwarded"]
    targets = {
        "local": (("127.0.0.1", a["udp"]), nodes),
        "forwarded": (("127.0.0.1", a["udp"]), nodes),
        "alone": (("127.0.0.1", alone["udp"]), [alone]),
    }
    socks = {}
    for kind, (address, _) in targets.items():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks[kind] = (sock, connect(sock, address))
    print(f"{'round':>5} {'load':>10} {'responses':>10} {'cpu s':>8} {'resp/cpu-s':>11} {'link B/fwd':>11}")
    results = {kind: [] for kind in targets}
    try:
        for r in range(args.rounds):
            order = ["local", "forwarded", "alone"] if r % 2 == 0 else ["alone", "forwarded", "local"]
            for kind in order:
                address, measured = targets[kind]
                sock, connection_id = socks[kind]
                out0 = metric(a["metrics"], "aquatic_cluster_link_bytes_total", ['direction="out"'])
                in0 = metric(a["metrics"], "aquatic_cluster_link_bytes_total", ['direction="in"'])
                cpu0 = sum(cpu_seconds(n["proc"].pid) for n in measured)
                got = announce_all(sock, address, connection_id, pools[kind])
                cpu = sum(cpu_seconds(n["proc"].pid) for n in measured) - cpu0
                time.sleep(1.2)  # metrics are published once a second
                link = (metric(a["metrics"], "aquatic_cluster_link_bytes_total", ['direction="out"']) - out0
                        + metric(a["metrics"], "aquatic_cluster_link_bytes_total", ['direction="in"']) - in0)
                per_cpu = got / cpu if cpu > 0 else 0.0
                per_fwd = link / got if kind == "forwarded" and got else 0.0
                results[kind].append(per_cpu)
                print(f"{r + 1:>5} {kind:>10} {got:>10} {cpu:>8.2f} {per_cpu:>11.0f} {per_fwd:>11.0f}", flush=True)
    finally:
        for n in nodes + [alone]:
            n["proc"].terminate()
            n["proc"].wait()
    med = {k: statistics.median(v) for k, v in results.items()}
    print("cpu s: both cluster nodes (a+b) for local and forwarded, the one node for alone")
    print("median responses per CPU-second: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()))
    print(f"CPU per forwarded announce (both nodes) / per local one: {med['local'] / med['forwarded']:.2f}; "
          f"/ per announce of one node alone: {med['alone'] / med['forwarded']:.2f}")


if __name__ == "__main__":
    main()
