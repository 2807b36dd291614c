//! Three nodes of the real binary, one tracker: peers announcing through
//! different nodes see each other (UDP, HTTP and a mix), scrapes agree
//! whichever node answers them, connection ids are valid on every node,
//! a killed node's torrents move to the survivors and come back when it
//! rejoins, links from impostors are refused, and members added or
//! removed on SIGHUP join or leave.
//!
//! Certificates are made here with rcgen: a CA, and one certificate per
//! node with its member name as subjectAltName.

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use aquatic::cluster::ownership::owner_index;
use aquatic_common::{
    connection_id::{ConnectionIdKey, ConnectionIdValidator},
    time::UnixSeconds,
    InfoHash,
};
use aquatic_http_protocol::bencode::Value;
use aquatic_udp_protocol::{AnnounceEvent, ConnectionId, OwnedResponse};
use aquatic_ws_protocol as ws;
use common::{
    eventually,
    http_client::{percent, read_responses},
    metrics_client::{metrics_text, sum},
    scratch_dir,
    udp_client::{counts, peers_v4, Client},
    Tracker,
};

const NAMES: [&str; 3] = ["a", "b", "c"];
/// Generous: links come up in well under a second on a quiet machine, but
/// a test machine is shared.
const SETTLE: Duration = Duration::from_secs(60);

/// A CA and the files of the nodes' certificates.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).expect("self-signed");
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).expect("write");
        Pki {
            dir: dir.to_owned(),
            ca,
            ca_key,
        }
    }

    fn ca_path(&self) -> PathBuf {
        let name = self
            .ca
            .params()
            .distinguished_name
            .get(&rcgen::DnType::CommonName)
            .and_then(|v| match v {
                rcgen::DnValue::Utf8String(s) => Some(s.clone()),
                _ => None,
            })
            .expect("CN");
        self.dir.join(format!("{name}-ca.pem"))
    }

    /// A certificate naming `san`, written as `<file>.pem` and `<file>.key`.
    fn node(&self, san: &str, file: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![san.to_owned()]).expect("params");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("signed");
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        (cert_path, key_path)
    }
}

/// Ports for the links: a member's address must be known before it starts.
fn free_ports() -> [u16; 3] {
    loop {
        let ports = [(); 3].map(|()| common::unused_port());
        if ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2] {
            return ports;
        }
    }
}

/// The files and ports of one test's cluster.
struct Spec {
    dir: PathBuf,
    pki: Pki,
    ports: [u16; 3],
    key_file: PathBuf,
}

impl Spec {
    fn new(name: &str) -> Spec {
        let dir = scratch_dir(name);
        let pki = Pki::new(&dir, "cluster");
        let key_file = dir.join("connection-id.key");
        let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        std::fs::write(&key_file, key).expect("write key");
        Spec {
            dir,
            pki,
            ports: free_ports(),
            key_file,
        }
    }

    /// Config of node `index`, presenting `cert` and `key` and trusting `ca`.
    fn config_with(&self, index: usize, ca: &Path, cert: &Path, key: &Path) -> String {
        let members: Vec<String> = NAMES
            .iter()
            .zip(self.ports)
            .map(|(name, port)| format!("{{ name = \"{name}\", address = \"127.0.0.1:{port}\" }}"))
            .collect();
        format!(
            "{}[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n\
             [cluster]\nenabled = true\nnode = \"{}\"\nlisten = \"127.0.0.1:{}\"\n\
             members = [{}]\nkey_file = {:?}\nca_certificate_path = {:?}\n\
             certificate_path = {:?}\nprivate_key_path = {:?}\nfailure_timeout_secs = 2\n",
            common::base_config(),
            NAMES[index],
            self.ports[index],
            members.join(", "),
            self.key_file.display().to_string(),
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        )
    }

    /// Config of node `index` with its own CA-signed certificate.
    fn config(&self, index: usize) -> String {
        let (cert, key) = self.pki.node(NAMES[index], NAMES[index]);
        self.config_with(index, &self.pki.ca_path(), &cert, &key)
    }

    fn start(&self, index: usize) -> Tracker {
        Tracker::start(&format!("cluster-{}", NAMES[index]), &self.config(index))
    }
}

impl Drop for Spec {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Members every executor of `node` believes live.
fn live_members(node: &Tracker) -> f64 {
    let text = metrics_text(node.metrics.expect("metrics on"));
    sum(&text, "aquatic_cluster_member_live", &[])
}

/// Waits until every executor of every node sees `members` live members.
fn wait_live(nodes: &[&Tracker], members: usize) {
    for node in nodes {
        // Two executors each.
        let want = (2 * members) as f64;
        let seen = eventually(SETTLE, || (live_members(node) == want).then_some(()));
        assert!(
            seen.is_some(),
            "live members: {} of {want}",
            live_members(node)
        );
    }
}

fn start_cluster(spec: &Spec) -> Vec<Tracker> {
    let nodes: Vec<Tracker> = (0..3).map(|i| spec.start(i)).collect();
    wait_live(&nodes.iter().collect::<Vec<_>>(), 3);
    nodes
}

/// An info hash whose owner (all three live) is member `owner`.
fn hash_owned_by(owner: usize, tag: u8) -> [u8; 20] {
    (0u8..=255)
        .map(|i| {
            let mut hash = [tag; 20];
            hash[19] = i;
            hash
        })
        .find(|hash| owner_index(NAMES, &InfoHash(*hash)) == Some(owner))
        .expect("some hash of 256 is owned by each member")
}

/// Sends one compact HTTP announce of peer `[peer; 20]` through `addr` and
/// reads its response (status, body), waiting at most `read_timeout`.
fn send_http_announce(
    addr: SocketAddr,
    hash: [u8; 20],
    peer: u8,
    port: u16,
    read_timeout: Duration,
) -> (u16, Value) {
    let target = format!(
        "/announce?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=100&compact=1",
        percent(&hash),
        percent(&[peer; 20])
    );
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(read_timeout))
        .expect("timeout");
    let raw = format!("GET {target} HTTP/1.1\r\nHost: tracker\r\nConnection: close\r\n\r\n");
    stream.write_all(raw.as_bytes()).expect("write");
    read_responses(&mut stream, 1).remove(0)
}

fn http_announce(addr: SocketAddr, hash: [u8; 20], peer: u8, port: u16) -> Value {
    let (status, body) = send_http_announce(addr, hash, peer, port, Duration::from_secs(10));
    assert_eq!(status, 200, "{body:?}");
    assert!(body.get(b"failure reason").is_none(), "failure: {body:?}");
    body
}

/// The ports of a compact HTTP announce response's IPv4 peers.
fn http_peer_ports(body: &Value) -> Vec<u16> {
    let Some(Value::Bytes(peers)) = body.get(b"peers") else {
        panic!("compact peers: {body:?}")
    };
    let mut ports: Vec<u16> = peers
        .chunks_exact(6)
        .map(|p| u16::from_be_bytes([p[4], p[5]]))
        .collect();
    ports.sort_unstable();
    ports
}

fn sorted(mut ports: Vec<u16>) -> Vec<u16> {
    ports.sort_unstable();
    ports
}

fn udp(node: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.udp.expect("udp").port()))
}

fn http(node: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.http.expect("http").port()))
}

#[test]
fn peers_through_different_nodes_see_each_other_and_scrapes_agree() {
    let spec = Spec::new("cluster-swarm");
    let nodes = start_cluster(&spec);
    let hashes: Vec<[u8; 20]> = (0..3).map(|owner| hash_owned_by(owner, 1)).collect();
    for (i, hash) in hashes.iter().enumerate() {
        // Peer 1 over UDP through A, peer 2 over HTTP through B, peer 3
        // over UDP through C: each sees those before it.
        let mut a = Client::new(udp(&nodes[0]));
        let first = a.announce(*hash, 1, 7001, AnnounceEvent::Started, 10);
        assert!(peers_v4(&first).is_empty(), "torrent {i}: empty at first");
        let second = http_announce(http(&nodes[1]), *hash, 2, 7002);
        assert_eq!(
            http_peer_ports(&second),
            [7001],
            "torrent {i} over HTTP via b"
        );
        let mut c = Client::new(udp(&nodes[2]));
        let third = c.announce(*hash, 3, 7003, AnnounceEvent::Started, 10);
        assert_eq!(sorted(peers_v4(&third)), [7001, 7002], "torrent {i} via c");
        assert_eq!(counts(&third), (0, 3), "torrent {i}: one swarm of three");
    }
    // A forwarded announce is answered from the address the client wrote
    // to (b owns hashes[1]; the client writes to a).
    let mut client = Client::new(udp(&nodes[0]));
    let request = client.announce_request(hashes[1], 60, 7060, AnnounceEvent::Started, 10, -1);
    let mut bytes = Vec::new();
    request.write(&mut bytes).expect("write");
    client.send_raw(&bytes);
    let mut buf = [0u8; 2048];
    let (_, from) = client.socket.recv_from(&mut buf).expect("a reply");
    assert_eq!(&buf[4..8], &bytes[12..16], "the announce's reply");
    assert_eq!(from, udp(&nodes[0]), "sent by a, which the client wrote to");
    let stop = client.announce_request(hashes[1], 60, 7060, AnnounceEvent::Stopped, 10, -1);
    client.request(&stop);
    // Torrent k gets k more peers, so each position has its own figures.
    for (k, hash) in hashes.iter().enumerate() {
        for extra in 0..k {
            let mut b = Client::new(udp(&nodes[1]));
            b.announce(
                *hash,
                10 + extra as u8,
                8000 + extra as u16,
                AnnounceEvent::Started,
                10,
            );
        }
    }
    let expected: Vec<(i32, i32, i32)> = (0..3).map(|k| (0, 3 + k, 0)).collect();
    let reversed: Vec<[u8; 20]> = hashes.iter().rev().copied().collect();
    for node in &nodes {
        let mut client = Client::new(udp(node));
        assert_eq!(
            client.scrape(&hashes),
            expected,
            "spanning three owners, in order"
        );
        let mut backwards = expected.clone();
        backwards.reverse();
        assert_eq!(client.scrape(&reversed), backwards, "in the order asked");
        // The same figures over HTTP (a dictionary by hash).
        let query: Vec<String> = hashes
            .iter()
            .map(|h| format!("info_hash={}", percent(h)))
            .collect();
        let body = http_get(http(node), &format!("/scrape?{}", query.join("&")));
        let Some(Value::Dict(files)) = body.get(b"files") else {
            panic!("files: {body:?}")
        };
        for (hash, (_, leechers, _)) in hashes.iter().zip(&expected) {
            let incomplete = files
                .get(hash.as_slice())
                .and_then(|s| s.get(b"incomplete"));
            assert_eq!(
                incomplete,
                Some(&Value::Int(i64::from(*leechers))),
                "{body:?}"
            );
        }
    }
}

fn http_get(addr: SocketAddr, target: &str) -> Value {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let raw = format!("GET {target} HTTP/1.1\r\nHost: tracker\r\nConnection: close\r\n\r\n");
    stream.write_all(raw.as_bytes()).expect("write");
    let (status, body) = read_responses(&mut stream, 1).remove(0);
    assert_eq!(status, 200, "{body:?}");
    body
}

/// A UDP announce with `connection_id`: the response, or None if the
/// tracker was silent through a few read timeouts.
fn announce_with(
    client: &mut Client,
    connection_id: ConnectionId,
    hash: [u8; 20],
    peer: u8,
    port: u16,
) -> Option<OwnedResponse> {
    client.connection_id = connection_id;
    let request = client.announce_request(hash, peer, port, AnnounceEvent::Started, 10, -1);
    let mut bytes = Vec::new();
    request.write(&mut bytes).expect("write");
    for _ in 0..3 {
        client.send_raw(&bytes);
        while let Some(reply) = client.recv_raw() {
            if reply.get(4..8) == Some(&bytes[12..16]) {
                return OwnedResponse::parse(&reply, false).ok();
            }
        }
    }
    None
}

#[test]
fn connection_ids_are_valid_on_every_node_and_a_killed_node_is_replaced() {
    let spec = Spec::new("cluster-ids");
    let mut nodes = start_cluster(&spec);
    // An id from a, used at b and c.
    let from_a = Client::new(udp(&nodes[0])).connection_id;
    let hash = hash_owned_by(2, 2);
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let mut client = Client::new(udp(node));
        let answer = announce_with(&mut client, from_a, hash, 20 + i as u8, 9000 + i as u16)
            .expect("an answer");
        assert!(
            matches!(answer, OwnedResponse::AnnounceIpv4 { .. }),
            "a's id accepted by {}: {answer:?}",
            NAMES[i]
        );
    }
    // One made with the shared key file is accepted; one with another key
    // is refused.
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let now = UnixSeconds(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as u32,
    );
    let id_under = |material: &[u8]| {
        let key = ConnectionIdKey::from_material(material).expect("32 bytes");
        let id = ConnectionIdValidator::new(key, Duration::from_secs(120)).create(ip, now);
        ConnectionId(i64::from_be_bytes(id))
    };
    let shared = std::fs::read(&spec.key_file).expect("read key");
    let mut client = Client::new(udp(&nodes[1]));
    let good = announce_with(&mut client, id_under(&shared), hash, 30, 9100).expect("answer");
    assert!(
        matches!(good, OwnedResponse::AnnounceIpv4 { .. }),
        "{good:?}"
    );
    let bad = announce_with(&mut client, id_under(&[0x5a; 32]), hash, 31, 9101).expect("answer");
    assert!(
        matches!(bad, OwnedResponse::Error { .. }),
        "another key refused: {bad:?}"
    );

    // kill -9 of c, which owns `hash`: a and b answer for it once they
    // stop hearing c, and peers through a and b share one swarm.
    let killed = hash_owned_by(2, 3);
    nodes[2].child.kill().expect("kill -9");
    let _ = nodes[2].child.wait();
    wait_live(&[&nodes[0], &nodes[1]], 2);
    let mut a = Client::new(udp(&nodes[0]));
    let id = a.connection_id;
    let first = announce_with(&mut a, id, killed, 40, 9200).expect("a answers");
    assert!(
        matches!(first, OwnedResponse::AnnounceIpv4 { .. }),
        "{first:?}"
    );
    let second = http_announce(http(&nodes[1]), killed, 41, 9201);
    assert_eq!(
        http_peer_ports(&second),
        [9200],
        "one swarm on the survivors"
    );

    // c restarts and rejoins: its torrent is its own again, and peers
    // announcing through any node meet there (c's peer is seen through a;
    // the survivors' peers come back too, which the handback test checks).
    nodes[2] = spec.start(2);
    wait_live(&nodes.iter().collect::<Vec<_>>(), 3);
    let mut c = Client::new(udp(&nodes[2]));
    c.announce(killed, 42, 9202, AnnounceEvent::Started, 10);
    let through_a = http_announce(http(&nodes[0]), killed, 43, 9203);
    assert!(
        http_peer_ports(&through_a).contains(&9202),
        "c owns it again: {:?}",
        http_peer_ports(&through_a)
    );
}

/// BitTorrent torrents `node` holds, over its executors.
fn bt_torrents(node: &Tracker) -> f64 {
    let text = metrics_text(node.metrics.expect("metrics"));
    sum(&text, "aquatic_torrents", &["swarm=\"bt\""])
}

/// A handback counter of `node` (`what` torrents or peers, `direction`
/// out or in), over its members.
fn handback(node: &Tracker, what: &str, direction: &str) -> f64 {
    let text = metrics_text(node.metrics.expect("metrics"));
    let name = format!("aquatic_cluster_handback_{what}_total");
    sum(&text, &name, &[&format!("direction=\"{direction}\"")])
}

#[test]
fn a_rejoining_node_gets_back_the_swarms_the_survivors_served() {
    let spec = Spec::new("cluster-handback");
    let mut nodes = start_cluster(&spec);
    nodes[2].child.kill().expect("kill -9");
    let _ = nodes[2].child.wait();
    wait_live(&[&nodes[0], &nodes[1]], 2);

    // While c is away, a and b serve its torrents: a UDP peer through a
    // and an HTTP peer through b in each, one swarm per torrent.
    let hashes = [
        hash_owned_by(2, 7),
        hash_owned_by(2, 8),
        hash_owned_by(2, 9),
    ];
    let mut through_a = Client::new(udp(&nodes[0]));
    for (i, hash) in hashes.iter().enumerate() {
        let i = i as u16;
        through_a.announce(*hash, 50 + i as u8, 9300 + i, AnnounceEvent::Started, 10);
        let body = http_announce(http(&nodes[1]), *hash, 60 + i as u8, 9400 + i);
        assert_eq!(http_peer_ports(&body), [9300 + i], "served by a survivor");
    }
    let held = eventually(SETTLE, || {
        (bt_torrents(&nodes[0]) + bt_torrents(&nodes[1]) == 3.0).then_some(())
    });
    assert!(held.is_some(), "the survivors hold c's three torrents");

    // c restarts empty; once live again the survivors hand it the swarms
    // and drop their copies.
    nodes[2] = spec.start(2);
    wait_live(&nodes.iter().collect::<Vec<_>>(), 3);
    let handed = eventually(SETTLE, || {
        let out = handback(&nodes[0], "peers", "out") + handback(&nodes[1], "peers", "out");
        let torrents_out =
            handback(&nodes[0], "torrents", "out") + handback(&nodes[1], "torrents", "out");
        let received = handback(&nodes[2], "peers", "in");
        let left = bt_torrents(&nodes[0]) + bt_torrents(&nodes[1]);
        (out == 6.0 && torrents_out == 3.0 && received == 6.0 && left == 0.0).then_some(())
    });
    assert!(
        handed.is_some(),
        "handed back: {} + {} peers out, {} in; survivors still hold {} torrents",
        handback(&nodes[0], "peers", "out"),
        handback(&nodes[1], "peers", "out"),
        handback(&nodes[2], "peers", "in"),
        bt_torrents(&nodes[0]) + bt_torrents(&nodes[1])
    );

    // A new peer through c, and one through a (forwarded to c), find the
    // peers announced while c was down, which did not announce again.
    let mut through_c = Client::new(udp(&nodes[2]));
    for (i, hash) in hashes.iter().enumerate() {
        let i = i as u16;
        // The merge reaches c's owning shard over its mesh: ask until it did.
        let seen = eventually(SETTLE, || {
            let answer =
                through_c.announce(*hash, 70 + i as u8, 9500 + i, AnnounceEvent::Started, 10);
            (sorted(peers_v4(&answer)) == [9300 + i, 9400 + i]).then_some(())
        });
        assert!(seen.is_some(), "c holds the swarm of torrent {i}");
        let body = http_announce(http(&nodes[0]), *hash, 80 + i as u8, 9600 + i);
        assert_eq!(
            http_peer_ports(&body),
            [9300 + i, 9400 + i, 9500 + i],
            "one swarm at c, seen through a"
        );
    }
    assert_eq!(
        bt_torrents(&nodes[0]) + bt_torrents(&nodes[1]),
        0.0,
        "the survivors no longer hold c's torrents"
    );
}

/// `config` with its member list replaced by `members` (name, link port).
fn with_members(config: &str, members: &[(&str, u16)]) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|(name, port)| format!("{{ name = \"{name}\", address = \"127.0.0.1:{port}\" }}"))
        .collect();
    config
        .lines()
        .map(|line| {
            if line.starts_with("members = ") {
                format!("members = [{}]", list.join(", "))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Rewrites `node`'s config with `members` and sends SIGHUP; waits until
/// every executor lists exactly those members in its metrics.
fn reload_members(node: &Tracker, members: &[(&str, u16)]) {
    let config = std::fs::read_to_string(&node.config_path).expect("config");
    let changed = with_members(&config, members);
    assert_ne!(changed, config, "the member list changed");
    std::fs::write(&node.config_path, changed).expect("write");
    node.signal(libc::SIGHUP);
    let want: std::collections::BTreeSet<String> =
        members.iter().map(|(name, _)| (*name).to_owned()).collect();
    let listed = eventually(SETTLE, || {
        let text = metrics_text(node.metrics.expect("metrics"));
        // Two executors, each listing every member once.
        let lines = text
            .lines()
            .filter(|l| l.starts_with("aquatic_cluster_member_live{"))
            .count();
        (listed_members(node) == want && lines == 2 * want.len()).then_some(())
    });
    assert!(
        listed.is_some(),
        "the member list is reloaded: {:?}",
        listed_members(node)
    );
}

/// The members `node`'s metrics list (live or not).
fn listed_members(node: &Tracker) -> std::collections::BTreeSet<String> {
    metrics_text(node.metrics.expect("metrics"))
        .lines()
        .filter(|l| l.starts_with("aquatic_cluster_member_live{"))
        .filter_map(|l| Some(l.split("member=\"").nth(1)?.split('"').next()?.to_owned()))
        .collect()
}

/// SIGHUP adds a fourth member: the three running nodes dial it once it
/// starts, it becomes live everywhere, the swarm the others served for a
/// torrent it now owns is handed to it, and announces through any node
/// reach it.
#[test]
fn a_member_added_on_sighup_is_dialled_and_owns_its_torrents() {
    let spec = Spec::new("cluster-members-add");
    let nodes = start_cluster(&spec);
    let four = ["a", "b", "c", "d"];
    let d_port = loop {
        let port = common::unused_port();
        if !spec.ports.contains(&port) {
            break port;
        }
    };
    // A hash the four-member rendezvous gives to d: served by a, b or c
    // until d is there.
    let hash = (0u8..=255)
        .map(|i| {
            let mut hash = [11u8; 20];
            hash[19] = i;
            hash
        })
        .find(|hash| owner_index(four, &InfoHash(*hash)) == Some(3))
        .expect("some hash of 256 is owned by d");
    let mut through_a = Client::new(udp(&nodes[0]));
    through_a.announce(hash, 1, 9701, AnnounceEvent::Started, 10);
    let held = eventually(SETTLE, || {
        let held = bt_torrents(&nodes[0]) + bt_torrents(&nodes[1]) + bt_torrents(&nodes[2]);
        (held == 1.0).then_some(())
    });
    assert!(held.is_some(), "one of the three holds it");

    let members: Vec<(&str, u16)> = NAMES
        .iter()
        .copied()
        .zip(spec.ports)
        .chain([("d", d_port)])
        .collect();
    for node in &nodes {
        reload_members(node, &members);
    }
    // d's own config: the four members, its certificate naming it.
    let (cert, key) = spec.pki.node("d", "d");
    let d_config = with_members(
        &spec.config_with(0, &spec.pki.ca_path(), &cert, &key),
        &members,
    )
    .replace("node = \"a\"", "node = \"d\"")
    .replace(
        &format!("listen = \"127.0.0.1:{}\"", spec.ports[0]),
        &format!("listen = \"127.0.0.1:{d_port}\""),
    );
    let d = Tracker::start("cluster-d", &d_config);
    let all: Vec<&Tracker> = nodes.iter().chain([&d]).collect();
    wait_live(&all, 4);

    // The handback moves the swarm to d; the others drop their copy.
    let moved = eventually(SETTLE, || {
        let others = bt_torrents(&nodes[0]) + bt_torrents(&nodes[1]) + bt_torrents(&nodes[2]);
        (bt_torrents(&d) == 1.0 && others == 0.0).then_some(())
    });
    assert!(
        moved.is_some(),
        "d holds {} torrents, the others {}",
        bt_torrents(&d),
        bt_torrents(&nodes[0]) + bt_torrents(&nodes[1]) + bt_torrents(&nodes[2])
    );
    // Announces through a (UDP) and b (HTTP) reach d's swarm.
    let seen = eventually(SETTLE, || {
        let body = http_announce(http(&nodes[1]), hash, 2, 9702);
        (http_peer_ports(&body) == [9701]).then_some(())
    });
    assert!(seen.is_some(), "the peer handed to d is seen through b");
    let answer = through_a.announce(hash, 3, 9703, AnnounceEvent::Started, 10);
    assert_eq!(sorted(peers_v4(&answer)), [9701, 9702], "through a");
    let answer = Client::new(udp(&d)).announce(hash, 4, 9704, AnnounceEvent::Started, 10);
    assert_eq!(sorted(peers_v4(&answer)), [9701, 9702, 9703], "at d itself");
    // Metrics are published on a timer: what they show is awaited.
    let only_d = eventually(SETTLE, || {
        let others = bt_torrents(&nodes[0]) + bt_torrents(&nodes[1]) + bt_torrents(&nodes[2]);
        (bt_torrents(&d) == 1.0 && others == 0.0).then_some(())
    });
    assert!(only_d.is_some(), "only d holds the torrent");
}

/// SIGHUP removes a member: its links close, the others serve its torrents
/// between them, and a later SIGHUP that lists it again brings it back.
#[test]
fn a_member_removed_on_sighup_leaves_and_can_come_back() {
    let spec = Spec::new("cluster-members-remove");
    let nodes = start_cluster(&spec);
    let hash = hash_owned_by(2, 12);
    // Served at c, through a.
    let mut through_a = Client::new(udp(&nodes[0]));
    through_a.announce(hash, 1, 9711, AnnounceEvent::Started, 10);
    let at_c = eventually(SETTLE, || (bt_torrents(&nodes[2]) == 1.0).then_some(()));
    assert!(at_c.is_some(), "c owns it");

    let two: Vec<(&str, u16)> = NAMES.iter().copied().zip(spec.ports).take(2).collect();
    for node in &nodes[..2] {
        reload_members(node, &two);
    }
    wait_live(&[&nodes[0], &nodes[1]], 2);
    // c still runs (and still lists a and b), but a and b no longer send
    // it anything: c loses them too once their links are closed.
    let alone = eventually(SETTLE, || (live_members(&nodes[2]) == 2.0).then_some(()));
    assert!(
        alone.is_some(),
        "c's links to a and b closed: {} live",
        live_members(&nodes[2])
    );
    let body = http_announce(http(&nodes[1]), hash, 2, 9712);
    assert!(
        http_peer_ports(&body).is_empty(),
        "a new swarm on a or b, not c's: {:?}",
        http_peer_ports(&body)
    );
    let answer = through_a.announce(hash, 3, 9713, AnnounceEvent::Started, 10);
    assert_eq!(peers_v4(&answer), [9712], "a and b share one owner");
    let held = eventually(SETTLE, || {
        (bt_torrents(&nodes[0]) + bt_torrents(&nodes[1]) == 1.0).then_some(())
    });
    assert!(held.is_some(), "a and b hold one copy");

    // Listed again: c comes back into its old place and owns its torrents.
    let three: Vec<(&str, u16)> = NAMES.iter().copied().zip(spec.ports).collect();
    for node in &nodes[..2] {
        reload_members(node, &three);
    }
    wait_live(&nodes.iter().collect::<Vec<_>>(), 3);
    let answer = eventually(SETTLE, || {
        let answer = through_a.announce(hash, 3, 9713, AnnounceEvent::Started, 10);
        let ports = sorted(peers_v4(&answer));
        // c's old peer plus the one b handed back to it.
        (ports == [9711, 9712]).then_some(ports)
    });
    assert!(answer.is_some(), "c owns the torrent again");
}

/// Links refused by `node` so far (on dial or on accept).
fn refused(node: &Tracker) -> f64 {
    let text = metrics_text(node.metrics.expect("metrics"));
    sum(
        &text,
        "aquatic_errors_total",
        &["protocol=\"cluster\"", "kind=\"link_refused\""],
    )
}

fn wait_refused(node: &Tracker, name: &str) {
    let counted = eventually(SETTLE, || (refused(node) >= 1.0).then_some(()));
    assert!(counted.is_some(), "{name} counted no refused link");
}

#[test]
fn a_certificate_of_another_ca_is_refused() {
    let spec = Spec::new("cluster-rogue");
    let rogue = Pki::new(&spec.dir, "rogue");
    let (c_cert, c_key) = rogue.node("c", "c-rogue");
    let nodes = [
        spec.start(0),
        spec.start(1),
        Tracker::start(
            "cluster-c",
            &spec.config_with(2, &spec.pki.ca_path(), &c_cert, &c_key),
        ),
    ];
    // a and b dial c and refuse its certificate; c fails both handshakes.
    for (node, name) in nodes.iter().zip(NAMES) {
        wait_refused(node, name);
    }
    wait_live(&[&nodes[0], &nodes[1]], 2);
    assert_eq!(live_members(&nodes[2]), 2.0, "c links with nobody");
}

#[test]
fn a_member_certificate_claiming_another_name_is_refused() {
    let spec = Spec::new("cluster-impostor");
    // The node configured as b presents the CA's certificate for c.
    let (b_cert, b_key) = spec.pki.node("c", "b-claims-c");
    let nodes = [
        spec.start(0),
        Tracker::start(
            "cluster-b",
            &spec.config_with(1, &spec.pki.ca_path(), &b_cert, &b_key),
        ),
        spec.start(2),
    ];
    // a dials "b" and finds c's name: refused on dial. "b" dials c and
    // says it is b with c's certificate: refused on accept.
    wait_refused(&nodes[0], "a");
    wait_refused(&nodes[2], "c");
    // a and c link with each other and with nobody else.
    wait_live(&[&nodes[0], &nodes[2]], 2);
    assert_eq!(
        live_members(&nodes[1]),
        2.0,
        "the impostor links with nobody"
    );
}

/// Plays member b in front of a real node a: accepts a's link with b's
/// certificate and no ALPN version choice (a node of the previous
/// release), speaking only the oldest frame version a reads (a hands it no
/// swarms: that version has no handback), then a version a does not speak.
#[test]
fn the_oldest_frame_version_links_and_an_unknown_one_is_refused() {
    use aquatic::cluster::frame::{
        Frame, FrameReader, FrameWriter, FRAME_VERSION, OLDEST_FRAME_VERSION,
    };
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use std::io::Read;

    let spec = Spec::new("cluster-versions");
    let listener = std::net::TcpListener::bind(("127.0.0.1", spec.ports[1])).expect("bind b");
    let (cert, key) = spec.pki.node("b", "b-double");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(spec.pki.ca_path()).expect("ca") {
        roots.add(ca.expect("ca pem")).expect("root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain: Vec<_> = CertificateDer::pem_file_iter(&cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert pem");
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, PrivateKeyDer::from_pem_file(&key).expect("key"))
        .expect("server config");

    let mut a = spec.start(0);
    // Before b links, a serves a torrent b will own: b speaks version 1,
    // which has no handback, so a keeps it (it expires there).
    let owned_by_b = (0u8..=255)
        .map(|i| {
            [
                0x42, i, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, i,
            ]
        })
        .find(|hash| owner_index(["a", "b"], &InfoHash(*hash)) == Some(1))
        .expect("some hash of 256 is b's");
    Client::new(udp(&a)).announce(owned_by_b, 1, 9700, AnnounceEvent::Started, 10);
    let (tcp, _) = listener.accept().expect("a dials b");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let connection = rustls::ServerConnection::new(std::sync::Arc::new(server)).expect("tls");
    let mut link = rustls::StreamOwned::new(connection, tcp);
    // Reads as a version 1 node does: a newer frame fails here.
    let mut reader = FrameReader::up_to(OLDEST_FRAME_VERSION);
    let mut read_frame = |link: &mut rustls::StreamOwned<_, _>| loop {
        if let Some(frame) = reader.next_frame().expect("a writes version 1 frames") {
            return frame;
        }
        let mut buf = [0u8; 4096];
        let n = link.read(&mut buf).expect("read");
        assert!(n > 0, "a closed the link");
        reader.feed(&buf[..n]);
    };
    assert_eq!(read_frame(&mut link), Frame::Hello { name: "a".into() });
    let mut writer = FrameWriter::default();
    assert!(writer.push_version(OLDEST_FRAME_VERSION, &Frame::Hello { name: "b".into() }));
    link.write_all(writer.bytes()).expect("hello");
    // a sends heartbeats; answering them in the oldest version keeps b live.
    let live = eventually(SETTLE, || {
        if let Frame::Heartbeat { sent_micros } = read_frame(&mut link) {
            let mut writer = FrameWriter::default();
            writer.push_version(OLDEST_FRAME_VERSION, &Frame::HeartbeatAck { sent_micros });
            writer.push_version(OLDEST_FRAME_VERSION, &Frame::Heartbeat { sent_micros: 1 });
            link.write_all(writer.bytes()).expect("ack");
        }
        // a and b, on both of a's executors.
        (live_members(&a) == 4.0).then_some(())
    });
    assert!(live.is_some(), "a took the double for b");
    let skipped = |a: &Tracker| {
        let text = metrics_text(a.metrics.expect("metrics"));
        sum(
            &text,
            "aquatic_cluster_handback_skipped_total",
            &["member=\"b\""],
        )
    };
    let kept = eventually(SETTLE, || {
        if let Frame::Heartbeat { sent_micros } = read_frame(&mut link) {
            let mut writer = FrameWriter::default();
            writer.push_version(OLDEST_FRAME_VERSION, &Frame::HeartbeatAck { sent_micros });
            link.write_all(writer.bytes()).expect("ack");
        }
        (skipped(&a) == 1.0 && bt_torrents(&a) == 1.0).then_some(())
    });
    assert!(
        kept.is_some(),
        "a skipped the handback to a version 1 member and kept the torrent: skipped {}, torrents {}",
        skipped(&a),
        bt_torrents(&a)
    );

    let mut writer = FrameWriter::default();
    writer.push_version(FRAME_VERSION + 1, &Frame::Heartbeat { sent_micros: 2 });
    link.write_all(writer.bytes()).expect("newer frame");
    let stderr = {
        // a ends the link: reads end (EOF or reset) once it refuses.
        let mut buf = [0u8; 4096];
        let closed = eventually(SETTLE, || match link.read(&mut buf) {
            Ok(0) | Err(_) => Some(()),
            Ok(_) => None,
        });
        assert!(
            closed.is_some(),
            "a kept a link speaking version {}",
            FRAME_VERSION + 1
        );
        a.stderr_text()
    };
    let both = format!(
        "link frame version {} is not one this node speaks ({OLDEST_FRAME_VERSION} to {FRAME_VERSION})",
        FRAME_VERSION + 1
    );
    assert!(
        stderr.contains(&both),
        "the log names both versions: {stderr}"
    );
}

#[test]
fn the_deploy_example_configs_are_valid() {
    let dir = scratch_dir("cluster-example");
    for file in [
        "connection-id.key",
        "ca.pem",
        "a.pem",
        "a.key",
        "b.pem",
        "b.key",
        "c.pem",
        "c.key",
    ] {
        std::fs::write(dir.join(file), [7u8; 32]).expect("write");
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster");
    for (i, name) in NAMES.iter().enumerate() {
        let text = std::fs::read_to_string(example.join(format!("{name}.toml"))).expect("read");
        let text = text.replace("\"pki/", &format!("\"{}/", dir.display()));
        let config = aquatic::config::Config::from_toml(&text, Path::new(name))
            .unwrap_or_else(|e| panic!("{name}.toml: {e}"));
        assert_eq!(config.cluster.node, *name);
        assert_eq!(config.cluster.members[i].address, config.cluster.listen);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn certificates_are_reloaded_on_sigusr1() {
    let spec = Spec::new("cluster-reload");
    // a starts with a CA-signed certificate that names someone else: b
    // refuses a's links until a has its own.
    let (cert, key) = spec.pki.node("x", "a-reloaded");
    let a = Tracker::start(
        "cluster-a",
        &spec.config_with(0, &spec.pki.ca_path(), &cert, &key),
    );
    let b = spec.start(1);
    wait_refused(&b, "b");
    assert_eq!(live_members(&a), 2.0, "a links with nobody yet");
    let (right_cert, right_key) = spec.pki.node("a", "a-right");
    std::fs::copy(right_cert, &cert).expect("replace certificate");
    std::fs::copy(right_key, &key).expect("replace key");
    a.signal(libc::SIGUSR1);
    wait_live(&[&a, &b], 2);
}

#[test]
fn direct_udp_replies_come_from_the_owner() {
    let spec = Spec::new("cluster-direct");
    let nodes: Vec<Tracker> = (0..3)
        .map(|i| {
            let config = spec.config(i) + "direct_udp_replies = true\n";
            Tracker::start(&format!("cluster-{}", NAMES[i]), &config)
        })
        .collect();
    wait_live(&nodes.iter().collect::<Vec<_>>(), 3);
    let hash = hash_owned_by(1, 4);
    let mut client = Client::new(udp(&nodes[0]));
    let request = client.announce_request(hash, 50, 9500, AnnounceEvent::Started, 10, -1);
    let mut bytes = Vec::new();
    request.write(&mut bytes).expect("write");
    client.send_raw(&bytes);
    let mut buf = [0u8; 2048];
    let (n, from) = client.socket.recv_from(&mut buf).expect("a reply");
    assert_eq!(&buf[4..8], &bytes[12..16], "the announce's reply");
    assert!(n >= 20);
    assert_eq!(from.port(), udp(&nodes[1]).port(), "sent by b, the owner");
}

/// A WebSocket client of one node (the npm client's messages).
struct WsClient {
    socket: tungstenite::WebSocket<TcpStream>,
}

fn ws_connect(node: &Tracker) -> WsClient {
    let addr = SocketAddr::from(([127, 0, 0, 1], node.ws.expect("ws").port()));
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (socket, _) =
        tungstenite::client(format!("ws://{addr}/announce"), stream).expect("handshake");
    WsClient { socket }
}

fn ws_announce_request(hash: [u8; 20], peer: u8) -> ws::AnnounceRequest {
    ws::AnnounceRequest {
        info_hash: ws::InfoHash(hash),
        peer_id: ws::PeerId([peer; 20]),
        event: ws::AnnounceEvent::Started,
        bytes_left: Some(100),
        numwant: Some(5),
        offers: Some(Vec::new()),
        answer: None,
        to_peer_id: None,
        offer_id: None,
    }
}

fn raw_json(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_owned()).expect("raw json")
}

impl WsClient {
    fn send(&mut self, message: ws::InMessage) {
        let mut out = Vec::new();
        message.write(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        self.socket
            .send(tungstenite::Message::Text(text.into()))
            .expect("send");
    }

    fn recv(&mut self) -> ws::OwnedOutMessage {
        loop {
            match self.socket.read().expect("a message within the timeout") {
                tungstenite::Message::Text(text) => {
                    return ws::OwnedOutMessage::parse(text.as_bytes()).expect("server message")
                }
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Announces; the leechers of the response.
    fn announce(&mut self, request: ws::AnnounceRequest) -> usize {
        self.send(ws::InMessage::Announce(request));
        match self.recv() {
            ws::OwnedOutMessage::AnnounceResponse(r) => r.incomplete,
            other => panic!("expected an announce response, got {other:?}"),
        }
    }

    fn leechers(&mut self, hash: [u8; 20]) -> usize {
        self.send(ws::InMessage::Scrape(ws::ScrapeRequest {
            info_hashes: vec![ws::InfoHash(hash)],
        }));
        match self.recv() {
            ws::OwnedOutMessage::ScrapeResponse { files } => {
                files.first().map_or(0, |(_, s)| s.incomplete)
            }
            other => panic!("expected a scrape response, got {other:?}"),
        }
    }
}

#[test]
fn webtorrent_peers_on_different_nodes_exchange_offers_and_answers() {
    let spec = Spec::new("cluster-ws");
    let mut nodes = start_cluster(&spec);
    // Owned by c; the peers are connected to a and b, so every message
    // crosses a link.
    let hash = hash_owned_by(2, 9);
    let mut on_a = ws_connect(&nodes[0]);
    assert_eq!(on_a.announce(ws_announce_request(hash, 1)), 1);
    let mut on_b = ws_connect(&nodes[1]);
    let mut request = ws_announce_request(hash, 2);
    request.offers = Some(vec![ws::AnnounceOffer {
        offer_id: ws::OfferId([7; 20]),
        offer: raw_json(r#"{"type":"offer","sdp":"v=0 from b"}"#),
    }]);
    assert_eq!(on_b.announce(request), 2, "one swarm across a and b");

    // a's peer gets b's offer, verbatim, and answers it.
    match on_a.recv() {
        ws::OwnedOutMessage::Offer {
            info_hash,
            peer_id,
            offer_id,
            offer,
        } => {
            assert_eq!(info_hash, ws::InfoHash(hash));
            assert_eq!(peer_id, ws::PeerId([2; 20]));
            assert_eq!(offer_id, ws::OfferId([7; 20]));
            assert_eq!(offer.get(), r#"{"type":"offer","sdp":"v=0 from b"}"#);
        }
        other => panic!("expected b's offer at a, got {other:?}"),
    }
    let mut answer = ws_announce_request(hash, 1);
    answer.event = ws::AnnounceEvent::Update;
    answer.bytes_left = None;
    answer.offers = None;
    answer.answer = Some(raw_json(r#"{"type":"answer","sdp":"from a"}"#));
    answer.to_peer_id = Some(ws::PeerId([2; 20]));
    answer.offer_id = Some(ws::OfferId([7; 20]));
    on_a.send(ws::InMessage::Announce(answer));
    match on_b.recv() {
        ws::OwnedOutMessage::Answer {
            peer_id,
            offer_id,
            answer,
            ..
        } => {
            assert_eq!(peer_id, ws::PeerId([1; 20]));
            assert_eq!(offer_id, ws::OfferId([7; 20]));
            assert_eq!(answer.get(), r#"{"type":"answer","sdp":"from a"}"#);
        }
        other => panic!("expected a's answer at b, got {other:?}"),
    }

    // Closing a's connection removes its peer at the owner: a scrape
    // through c shows it gone.
    let mut on_c = ws_connect(&nodes[2]);
    assert_eq!(on_c.leechers(hash), 2);
    on_a.socket.close(None).expect("close");
    let _ = on_a.socket.flush();
    let gone = eventually(SETTLE, || (on_c.leechers(hash) == 1).then_some(()));
    assert!(
        gone.is_some(),
        "a closed connection's peer lingers at its owner"
    );

    // A node lost with its connections: the owner drops their peers.
    let mut again_on_a = ws_connect(&nodes[0]);
    assert_eq!(again_on_a.announce(ws_announce_request(hash, 3)), 2);
    nodes[0].child.kill().expect("kill -9");
    let _ = nodes[0].child.wait();
    wait_live(&[&nodes[1], &nodes[2]], 2);
    let dropped = eventually(SETTLE, || (on_b.leechers(hash) == 1).then_some(()));
    assert!(
        dropped.is_some(),
        "the peer of a lost node's connection lingers: {} leechers",
        on_b.leechers(hash)
    );
    drop(again_on_a);
}

/// An HTTP announce through `addr`; its failure reason, if any.
#[cfg(feature = "test-hooks")]
fn http_announce_failure(addr: SocketAddr, hash: [u8; 20], peer: u8) -> Option<Vec<u8>> {
    let (_, body) = send_http_announce(addr, hash, peer, 7000, Duration::from_secs(30));
    match body.get(b"failure reason") {
        Some(Value::Bytes(reason)) => Some(reason.clone()),
        _ => None,
    }
}

#[cfg(feature = "test-hooks")]
#[test]
fn a_request_the_full_link_queue_refuses_is_answered_busy_at_once() {
    let spec = Spec::new("cluster-busy");
    // Small link queues: capacity is runtime.mesh_channel_size.
    let small = |i: usize| {
        spec.config(i)
            .replacen("[runtime]\n", "[runtime]\nmesh_channel_size = 4\n", 1)
    };
    let nodes: Vec<Tracker> = (0..3)
        .map(|i| Tracker::start(&format!("cluster-busy-{}", NAMES[i]), &small(i)))
        .collect();
    wait_live(&nodes.iter().collect::<Vec<_>>(), 3);
    let a = &nodes[0];
    let hash = hash_owned_by(1, 11);
    assert_eq!(http_announce_failure(http(a), hash, 1), None, "b answers");

    // a's links stop writing; their queues fill with heartbeats until
    // even those are dropped.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    socket
        .send_to(b"aquatic-test-hook:stall-links", udp(a))
        .expect("send");
    let mut ack = [0u8; 64];
    let (n, _) = socket.recv_from(&mut ack).expect("hook acknowledged");
    assert_eq!(&ack[..n], b"aquatic-test-hook:ok");
    let dropped = || {
        let text = metrics_text(a.metrics.expect("metrics"));
        sum(
            &text,
            "aquatic_cluster_link_dropped_total",
            &["member=\"b\""],
        )
    };
    let full = eventually(SETTLE, || (dropped() > 0.0).then_some(()));
    assert!(full.is_some(), "a's queue for b never filled");

    // Each announce for b's torrent is refused by the queue and answered
    // "busy" (counted), not left to wait for the deadline.
    let busy = |node: &Tracker| {
        let text = metrics_text(node.metrics.expect("metrics"));
        sum(
            &text,
            "aquatic_errors_total",
            &["protocol=\"cluster\"", "kind=\"link_busy\""],
        )
    };
    let before = busy(a);
    for peer in 2..8u8 {
        let reason = http_announce_failure(http(a), hash, peer);
        assert_eq!(reason.as_deref(), Some(&b"tracker busy, try again"[..]));
    }
    let counted = eventually(SETTLE, || (busy(a) >= before + 6.0).then_some(()));
    assert!(
        counted.is_some(),
        "busy answers counted: {} (before {before})",
        busy(a)
    );
}
