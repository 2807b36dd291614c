#!/usr/bin/env python3
"""Real BitTorrent clients against the real tracker, on loopback.

Each check: a random file, a private v1 torrent (no DHT/PEX/LSD can find
peers behind the tracker's back), one real client seeding and a different
real client downloading through our tracker, and the checksum compared.

WebTorrent: two npm bittorrent-tracker clients exchange an offer and an
answer through the WebSocket tracker (webtorrent/offer_answer.mjs; WebRTC
itself is faked there, see fake-webrtc.mjs for why), over WS and over WSS
(a self-signed certificate made with openssl), and two WebTorrent
pages in headless Chromium move a buffer over real WebRTC, found through
our tracker only (webtorrent/browser.mjs).

Cluster: two nodes linked over mutual TLS (certificates from
deploy/cluster/make-pki.sh); libtorrent seeds through node a and aria2c
downloads through node b, over UDP and over HTTP (the torrent is private:
they meet only if the nodes share its swarm).

Usage: real_clients.py PATH_TO_AQUATIC_BINARY
Prints one line per check and ends with "N passed, M failed"; exit 1 on
any failure.
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import libtorrent as lt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mariadb import free_port as unused_port  # noqa: E402

CHECK_TIMEOUT = 120
FILE_SIZE = 3 * 1024 * 1024 + 12345


def free_port(_kind):
    """See mariadb.free_port: below the ephemeral range, free for TCP and UDP."""
    return unused_port()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# libtorrent caches UDP connection ids per tracker *address* (not port) for
# a minute, process-wide; a new tracker process has a new key and refuses
# them, and libtorrent retries the stale id until the cache expires. Each
# check's tracker therefore gets its own loopback address.
_next_host = [10]


class Tracker:
    def __init__(self, binary, workdir, extra_config="", name="tracker", host=None, private_db=None, ws_config=""):
        if host is None:
            _next_host[0] += 1
            host = f"127.0.0.{_next_host[0]}"
        self.host = host
        self.binary = binary
        self.private_db = private_db
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.ws_port = free_port(socket.SOCK_STREAM)
        config = os.path.join(workdir, f"{name}.toml")
        # Private mode serves HTTP only: UDP and WS cannot carry a passkey.
        off = "enabled = false\n" if private_db is not None else ""
        with open(config, "w") as f:
            f.write(
                f"""workers = 2
log_level = "{os.environ.get('INTEROP_LOG', 'info')}"
[runtime]
pin_cpus = false
[udp]
{off}address = "{self.host}:{self.udp_port}"
[http]
address = "{self.host}:{self.http_port}"
[ws]
{off}address = "{self.host}:{self.ws_port}"
{ws_config}[snapshot]
dir = "{os.path.join(workdir, name + '-state')}"
interval_secs = 0
{extra_config}"""
            )
            if private_db is not None:
                f.write(private_db.config() + "flush_interval_secs = 1\nreload_interval_secs = 0\n")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.config = config
        self.log = open(self.log_path, "w")
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "-c", self.config], stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        ready = "aquatic: private data loaded" if self.private_db else "aquatic: ready"
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("tracker exited during start-up")
            if line.startswith(ready):
                return
        raise RuntimeError("tracker did not become ready")

    def udp(self):
        return f"udp://{self.host}:{self.udp_port}/announce"

    def http(self):
        return f"http://{self.host}:{self.http_port}/announce"

    def private_http(self, passkey):
        return f"http://{self.host}:{self.http_port}/{passkey}/announce"

    def ws(self):
        return f"ws://{self.host}:{self.ws_port}"

    def wss(self):
        return f"wss://{self.host}:{self.ws_port}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError("tracker did not stop within 10 s of SIGTERM")
        if code != 0:
            raise RuntimeError(f"tracker exited with {code}")

    def restart(self):
        """SIGTERM (the snapshot is written), then the same config again."""
        self.stop()
        self.start()


class Cluster:
    """Two cluster nodes, a and b, each on its own loopback address, with
    certificates and the shared key from deploy/cluster/make-pki.sh."""

    def __init__(self, binary, workdir):
        pki = os.path.join(workdir, "pki")
        here = os.path.dirname(os.path.abspath(__file__))
        make_pki = os.path.join(here, "..", "..", "deploy", "cluster", "make-pki.sh")
        subprocess.run(["sh", make_pki, pki, "a", "b"], check=True, capture_output=True)
        hosts = []
        for _ in range(2):
            _next_host[0] += 1
            hosts.append(f"127.0.0.{_next_host[0]}")
        links = [f"{host}:{free_port(socket.SOCK_STREAM)}" for host in hosts]
        members = ", ".join(f'{{ name = "{n}", address = "{a}" }}' for n, a in zip("ab", links))
        self.nodes = []
        for name, host, link in zip("ab", hosts, links):
            extra = f"""[cluster]
enabled = true
node = "{name}"
listen = "{link}"
members = [{members}]
key_file = "{pki}/connection-id.key"
ca_certificate_path = "{pki}/ca.pem"
certificate_path = "{pki}/{name}.pem"
private_key_path = "{pki}/{name}.key"
"""
            self.nodes.append(Tracker(binary, workdir, extra, name=name, host=host))
        self.log_path = self.nodes[0].log_path
        # Serve only once each node has the other in its live set.
        deadline = time.time() + 20
        for node, other in zip(self.nodes, "ba"):
            while f"cluster member {other} is live" not in open(node.log_path).read():
                if time.time() > deadline:
                    raise RuntimeError(f"the nodes did not link: {open(node.log_path).read()[-2000:]}")
                time.sleep(0.1)

    @property
    def proc(self):
        return self.nodes[0].proc

    @property
    def log(self):
        return self.nodes[0].log

    def stop(self):
        for node in self.nodes:
            node.stop()


class WssTracker(Tracker):
    """A tracker serving WebSocket over TLS, with a self-signed certificate
    made by openssl for this run."""

    def __init__(self, binary, workdir):
        cert, key = os.path.join(workdir, "wss.pem"), os.path.join(workdir, "wss.key")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )
        super().__init__(
            binary, workdir, ws_config=f'tls_certificate_path = "{cert}"\ntls_private_key_path = "{key}"\n'
        )


def with_tracker_url(torrent_path, url, out_path):
    """A copy of a torrent announcing to `url`: same info dictionary, so the
    same info hash."""
    with open(torrent_path, "rb") as f:
        data = lt.bdecode(f.read())
    data[b"announce"] = url.encode()
    data.pop(b"announce-list", None)
    with open(out_path, "wb") as f:
        f.write(lt.bencode(data))
    return out_path


def check_cluster_lt_seeds_via_a_aria2_downloads_via_b(cluster, work, url_of):
    """libtorrent announces to node a, aria2c to node b: they find each
    other only if the nodes share the torrent's swarm."""
    a, b = cluster.nodes
    lt_seeds_aria2_downloads(work, url_of(a), downloader_url=url_of(b))


def make_torrent(data_dir, name, tracker_url):
    """A private torrent announcing to `tracker_url` (None: no tracker; each
    client then gets its own passkey URL)."""
    path = os.path.join(data_dir, name)
    with open(path, "wb") as f:
        f.write(os.urandom(FILE_SIZE))
    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs, 256 * 1024, flags=lt.create_torrent.v1_only)
    if tracker_url:
        t.add_tracker(tracker_url)
    t.set_priv(True)
    lt.set_piece_hashes(t, data_dir)
    torrent_path = os.path.join(os.path.dirname(data_dir), name + ".torrent")
    with open(torrent_path, "wb") as f:
        f.write(lt.bencode(t.generate()))
    return path, torrent_path


def lt_session():
    port = free_port(socket.SOCK_STREAM)
    settings = {
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "ssrf_mitigation": False,
        "allow_multiple_connections_per_ip": True,
        "announce_to_all_trackers": True,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.tracker_notification,
    }
    return lt.session(settings)


def lt_add(session, torrent_path, save_path):
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent_path)
    params.save_path = save_path
    return session.add_torrent(params)


def wait_lt_seeding(handle, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if handle.status().is_seeding:
            return
        time.sleep(0.2)
    raise RuntimeError("libtorrent did not start seeding (hash check)")


def aria2(args, cwd, timeout):
    base = [
        "aria2c",
        "--enable-dht=true",  # aria2 only speaks UDP trackers with DHT on
        "--dht-listen-port=" + str(free_port(socket.SOCK_DGRAM)),
        # A fresh DHT routing table each run: nodes saved by an earlier run
        # are dead, and aria2 waits on them before its UDP tracker requests.
        "--dht-file-path=" + os.path.join(cwd, "dht.dat"),
        "--dht-file-path6=" + os.path.join(cwd, "dht6.dat"),
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--listen-port=" + str(free_port(socket.SOCK_STREAM)),
        "--bt-tracker-connect-timeout=5",
        "--bt-tracker-interval=2",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--file-allocation=none",
        "--check-certificate=false",
    ]
    return subprocess.Popen(base + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lt_seeds_aria2_downloads(work, seeder_url, downloader_url=None, before_download=None):
    """libtorrent seeds a fresh torrent announcing to `seeder_url`; aria2c
    downloads the same torrent (same info hash) announcing to
    `downloader_url` (default: the same URL) and must get the same bytes.
    `before_download(session)` runs once libtorrent seeds and has been told
    to announce."""
    data = os.path.join(work, "seed")
    os.makedirs(data)
    src, torrent = make_torrent(data, "payload.bin", seeder_url)
    if downloader_url is not None:
        torrent_for_aria2 = with_tracker_url(torrent, downloader_url, os.path.join(work, "download.torrent"))
    else:
        torrent_for_aria2 = torrent
    session = lt_session()
    handle = lt_add(session, torrent, data)
    wait_lt_seeding(handle)
    handle.force_reannounce()
    if before_download is not None:
        before_download(session)
    aria2_downloads(work, [torrent_for_aria2], src)
    del session


def aria2_downloads(work, args, src):
    """aria2c downloads (`args`: the torrent and any extra options) into
    work/aria2-out, once, and must exit 0 with the bytes of `src`."""
    out = os.path.join(work, "aria2-out")
    os.makedirs(out)
    proc = aria2(["--seed-time=0", "--dir=" + out, *args], work, CHECK_TIMEOUT)
    try:
        output, _ = proc.communicate(timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise RuntimeError("aria2c did not finish in time:\n" + output[-2000:])
    if proc.returncode != 0:
        raise RuntimeError(f"aria2c exited {proc.returncode}:\n" + output[-2000:])
    if sha256(os.path.join(out, "payload.bin")) != sha256(src):
        raise RuntimeError("checksum mismatch")


def check_lt_seeds_aria2_downloads(tracker, work, url_of):
    lt_seeds_aria2_downloads(work, url_of(tracker))


def wait_lt_announced(session, timeout=20):
    """Until the tracker has answered an announce of libtorrent's."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for alert in session.pop_alerts():
            if os.environ.get("INTEROP_DEBUG"):
                print("  alert:", alert.what(), alert.message())
            if isinstance(alert, lt.tracker_reply_alert):
                return
        time.sleep(0.1)
    raise RuntimeError("libtorrent's announce got no reply")


def restored_peers(work):
    """Peers the last start restored, from its log line."""
    with open(os.path.join(work, "tracker.log")) as f:
        lines = [l for l in f if "restored " in l and " peers from " in l]
    if not lines:
        return 0
    return int(lines[-1].split("restored ", 1)[1].split(" ", 1)[0])


def check_restart_between_seeder_and_downloader(tracker, work, url_of):
    """libtorrent seeds and announces; the tracker restarts (SIGTERM, the
    same state directory); aria2c's first announce finds the seeder from
    the snapshot, since libtorrent does not announce again within the
    30-minute interval."""

    def restart_once_announced(session):
        wait_lt_announced(session)
        tracker.restart()
        if restored_peers(work) < 1:
            raise RuntimeError("the restarted tracker restored no peer")

    lt_seeds_aria2_downloads(work, url_of(tracker), before_download=restart_once_announced)


def check_aria2_seeds_lt_downloads(tracker, work, url_of):
    data = os.path.join(work, "seed")
    os.makedirs(data)
    src, torrent = make_torrent(data, "payload.bin", url_of(tracker))
    seeder = aria2(["--seed-ratio=0.0", "--seed-time=9999", "-V", "--dir=" + data, torrent], work, CHECK_TIMEOUT)
    try:
        session = lt_session()
        out = os.path.join(work, "lt-out")
        os.makedirs(out)
        handle = lt_add(session, torrent, out)
        deadline = time.time() + CHECK_TIMEOUT
        while time.time() < deadline and not handle.status().is_seeding:
            time.sleep(0.3)
            if os.environ.get("INTEROP_DEBUG"):
                for alert in session.pop_alerts():
                    print("  alert:", alert.what(), alert.message())
                st = handle.status()
                print(f"  t={time.time():.1f} peers={st.num_peers} progress={st.progress:.2f} state={st.state}")
            if int(time.time()) % 5 == 0:
                handle.force_reannounce()
        status = handle.status()
        if not status.is_seeding:
            raise RuntimeError(
                f"libtorrent did not finish: progress {status.progress:.2f}, peers {status.num_peers}, "
                f"tracker error {status.current_tracker!r}"
            )
        if sha256(os.path.join(out, "payload.bin")) != sha256(src):
            raise RuntimeError("checksum mismatch")
        # The tracker's scrape, as libtorrent asks for it, sees a seeder.
        handle.scrape_tracker()
        deadline = time.time() + 15
        while time.time() < deadline:
            for alert in session.pop_alerts():
                if isinstance(alert, lt.scrape_reply_alert):
                    if alert.complete >= 1:
                        return
                    raise RuntimeError(f"scrape shows {alert.complete} seeders")
                if isinstance(alert, lt.scrape_failed_alert):
                    raise RuntimeError("scrape failed: " + alert.error_message())
            time.sleep(0.2)
        raise RuntimeError("no scrape reply")
    finally:
        seeder.kill()
        seeder.wait()


WEBTORRENT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webtorrent")


SEEDER_PASSKEY = "seeder0000000000000000000000000a"
LEECHER_PASSKEY = "leecher000000000000000000000000b"


def check_private_accounting(binary, work):
    """Private mode: a libtorrent seeder and an aria2c downloader, each with
    its own passkey URL; the database then shows the transfer."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mariadb import MariaDb

    db = MariaDb(work)
    tracker = None
    try:
        data = os.path.join(work, "seed")
        os.makedirs(data)
        src, torrent = make_torrent(data, "payload.bin", None)
        info_hash = str(lt.torrent_info(torrent).info_hash())
        db.sql(f"INSERT INTO tracker_users (id, passkey) VALUES (1, '{SEEDER_PASSKEY}'), "
               f"(2, '{LEECHER_PASSKEY}'); "
               f"INSERT INTO tracker_torrents (id, info_hash) VALUES (7, UNHEX('{info_hash}'));")
        tracker = Tracker(binary, work, private_db=db)
        session = lt_session()
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(torrent)
        params.save_path = data
        params.trackers = [tracker.private_http(SEEDER_PASSKEY)]
        handle = session.add_torrent(params)
        wait_lt_seeding(handle)
        handle.force_reannounce()
        aria2_downloads(work, ["--bt-tracker=" + tracker.private_http(LEECHER_PASSKEY), torrent], src)
        # The seeder reports what it uploaded on its next announce.
        handle.force_reannounce()
        deadline = time.time() + 30
        while True:
            rows = dict((r[0], (int(r[1]), int(r[2]))) for r in db.rows(
                "SELECT user_id, uploaded, downloaded FROM tracker_transfer WHERE torrent_id = 7"))
            seeder_up = rows.get("1", (0, 0))[0]
            leecher_down = rows.get("2", (0, 0))[1]
            if seeder_up >= FILE_SIZE * 0.9 and leecher_down >= FILE_SIZE * 0.9:
                break
            if time.time() > deadline:
                raise RuntimeError(f"transfer not accounted: {rows}")
            time.sleep(0.5)
        if not (FILE_SIZE * 0.9 <= seeder_up <= FILE_SIZE * 1.2
                and FILE_SIZE * 0.9 <= leecher_down <= FILE_SIZE * 1.2):
            raise RuntimeError(f"accounted {rows}, file {FILE_SIZE} bytes")
        tracker.stop()
        tracker = None
        snatches = db.rows("SELECT user_id, times FROM tracker_snatches WHERE torrent_id = 7")
        stats = db.rows("SELECT seeders, leechers, snatched FROM tracker_torrent_stats "
                        "WHERE torrent_id = 7")
        if snatches != [["2", "1"]]:
            raise RuntimeError(f"snatches {snatches}")
        if stats != [["1", "0", "1"]]:
            raise RuntimeError(f"seeders, leechers, snatched: {stats}")
        print(f"  accounted: seeder uploaded {seeder_up}, downloader downloaded {leecher_down} "
              f"of {FILE_SIZE} bytes; snatches {snatches}; seeders/leechers/snatched {stats}")
        del session
    finally:
        if tracker is not None:
            tracker.proc.kill()
        db.stop()


def run_node_check(args, what, env=None):
    """Runs node with `args` in webtorrent/; the script prints PASS/FAIL lines."""
    proc = subprocess.run(
        ["node", *args],
        cwd=WEBTORRENT_DIR,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
    )
    for line in proc.stdout.splitlines():
        print("    " + line)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n" + proc.stdout[-2000:] + proc.stderr[-2000:])


def check_npm_clients_offer_and_answer(tracker, work, url_of):
    """Two npm bittorrent-tracker clients: offer, answer, scrape, leave."""
    run_node_check(["--import", "./register.mjs", "offer_answer.mjs", url_of(tracker)], "npm client check")


def check_npm_clients_offer_and_answer_over_wss(tracker, work, url_of):
    """The same two clients over WSS (the tracker's unbuffered TLS stream,
    Node's OpenSSL on the other side); the certificate is self-signed."""
    run_node_check(
        ["--import", "./register.mjs", "offer_answer.mjs", url_of(tracker)],
        "npm client check over wss",
        env={"NODE_TLS_REJECT_UNAUTHORIZED": "0"},
    )


def check_browsers_exchange_over_webrtc(tracker, work, url_of):
    """Two WebTorrent pages in headless Chromium: real WebRTC, via our tracker."""
    run_node_check(["browser.mjs", url_of(tracker)], "browser check")


def main():
    binary = sys.argv[1]
    checks = [
        ("udp: libtorrent seeds, aria2c downloads", check_lt_seeds_aria2_downloads, Tracker.udp),
        ("http: libtorrent seeds, aria2c downloads", check_lt_seeds_aria2_downloads, Tracker.http),
        ("http: aria2c seeds, libtorrent downloads and scrapes", check_aria2_seeds_lt_downloads, Tracker.http),
        ("udp: aria2c seeds, libtorrent downloads and scrapes", check_aria2_seeds_lt_downloads, Tracker.udp),
        ("udp: libtorrent seeds, the tracker restarts, aria2c downloads", check_restart_between_seeder_and_downloader, Tracker.udp),
        ("http: libtorrent seeds, the tracker restarts, aria2c downloads", check_restart_between_seeder_and_downloader, Tracker.http),
        ("ws: npm bittorrent-tracker clients exchange offer and answer", check_npm_clients_offer_and_answer, Tracker.ws),
        ("wss: npm bittorrent-tracker clients exchange offer and answer",
         check_npm_clients_offer_and_answer_over_wss, Tracker.wss, WssTracker),
        ("ws: two WebTorrent pages in Chromium exchange a buffer over WebRTC", check_browsers_exchange_over_webrtc, Tracker.ws),
        ("cluster udp: libtorrent seeds via node a, aria2c downloads via node b",
         check_cluster_lt_seeds_via_a_aria2_downloads_via_b, Tracker.udp, Cluster),
        ("cluster http: libtorrent seeds via node a, aria2c downloads via node b",
         check_cluster_lt_seeds_via_a_aria2_downloads_via_b, Tracker.http, Cluster),
    ]
    only = os.environ.get("INTEROP_ONLY")
    passed = failed = 0
    name = "private http: libtorrent seeds, aria2c downloads, MariaDB accounts both"
    if not only or only in name:
        work = tempfile.mkdtemp(prefix="aquatic-interop-")
        started = time.time()
        try:
            check_private_accounting(binary, work)
            passed += 1
            print(f"PASS {name} ({time.time() - started:.1f} s)", flush=True)
        except Exception as err:  # noqa: BLE001 - every failure is reported
            failed += 1
            print(f"FAIL {name}: {err}", flush=True)
            traceback.print_exc()
            log = os.path.join(work, "tracker.log")
            if os.path.exists(log):
                with open(log) as f:
                    print("tracker log tail:\n" + f.read()[-3000:])
        finally:
            if not os.environ.get("INTEROP_KEEP"):
                shutil.rmtree(work, ignore_errors=True)
    for name, check, url_of, *make in checks:
        make = make[0] if make else Tracker
        if only and only not in name:
            continue
        work = tempfile.mkdtemp(prefix="aquatic-interop-")
        started = time.time()
        tracker = None
        try:
            tracker = make(binary, work)
            check(tracker, work, url_of)
            tracker.stop()
            tracker = None
            passed += 1
            print(f"PASS {name} ({time.time() - started:.1f} s)", flush=True)
        except Exception as err:  # noqa: BLE001 - every failure is reported
            failed += 1
            print(f"FAIL {name}: {err}", flush=True)
            traceback.print_exc()
            if tracker is not None:
                tracker.proc.kill()
                tracker.log.flush()
                with open(tracker.log_path) as f:
                    print("tracker log tail:\n" + f.read()[-3000:])
        finally:
            if tracker is not None:
                tracker.proc.kill()
            if os.environ.get("INTEROP_KEEP"):
                print("kept " + work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
