//! UDP replies over a real 1500-byte link: a network namespace joined to
//! the host by a veth pair, the tracker on the host side, the client inside.
//!
//! Loopback's MTU (65536) hides what this catches: the UDP sockets set DF
//! (`IP_PMTUDISC_PROBE`), so an IPv4 reply longer than the link is not
//! sent at all. Each test makes its own namespace and removes it on drop;
//! where namespaces cannot be made (not root, no iproute2) it says why and
//! passes without running.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    process::Command,
    time::Duration,
};

use aquatic_udp_protocol::{
    AnnounceEvent, AnnounceRequest, ConnectRequest, ConnectionId, InfoHash, OwnedResponse, PeerId,
    Request, TransactionId,
};
use common::{
    base_config, eventually, hash_on_shard, metrics_client::errors, udp_client::Client, Tracker,
};

/// A namespace with one end of a veth pair, the other end on the host;
/// removed (with the pair) on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

/// Runs `ip args`, returning its error text on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    /// A namespace for test `index` of this process, linked at MTU 1500.
    /// `Err` says why none could be made: then the test is skipped.
    fn new(index: u32) -> Result<Netns, String> {
        let pid = std::process::id();
        // A /30 of 10.231.0.0/16 per (process, test), so concurrent runs
        // do not share addresses; only these two addresses are ever used.
        let subnet = (pid.wrapping_mul(4).wrapping_add(index)) % 16384;
        let base = [10, 231, (subnet / 64) as u8, ((subnet % 64) * 4) as u8];
        let host_ip = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1);
        let ns_ip = Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2);
        let name = format!("aq-mtu-{pid}-{index}");
        ip(&["netns", "add", &name])?;
        // From here on, drop removes what was made.
        let netns = Netns {
            name,
            host_if: format!("aqm{pid}h{index}"),
            host_ip,
            ns_ip,
        };
        let ns_if = format!("aqm{pid}n{index}");
        let host_cidr = format!("{host_ip}/30");
        let ns_cidr = format!("{ns_ip}/30");
        let n = netns.name.as_str();
        let h = netns.host_if.as_str();
        ip(&[
            "link", "add", h, "mtu", "1500", "type", "veth", "peer", "name", &ns_if, "mtu", "1500",
        ])?;
        ip(&["link", "set", &ns_if, "netns", n])?;
        ip(&["addr", "add", &host_cidr, "dev", h])?;
        ip(&["link", "set", h, "up"])?;
        ip(&["-n", n, "addr", "add", &ns_cidr, "dev", &ns_if])?;
        ip(&["-n", n, "link", "set", &ns_if, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// A UDP socket bound inside the namespace. A socket stays in the
    /// namespace it was made in, so a short-lived thread joins the
    /// namespace (setns affects only the calling thread), makes it, and
    /// hands it back.
    fn socket(&self) -> UdpSocket {
        let path = format!("/var/run/netns/{}", self.name);
        let ns_ip = self.ns_ip;
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on a namespace fd we hold open, for this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let socket = UdpSocket::bind(SocketAddrV4::new(ns_ip, 0)).expect("bind in namespace");
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            socket
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth end inside it, and with
        // it the pair; the explicit delete covers a half-made setup.
        let _ = ip(&["link", "del", &self.host_if]);
        if let Err(err) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot remove namespace {}: {err}", self.name);
        }
    }
}

/// The namespace for a test, or None (having said why) where it cannot be made.
fn netns_or_skip(index: u32) -> Option<Netns> {
    match Netns::new(index) {
        Ok(netns) => Some(netns),
        Err(reason) => {
            eprintln!("skipped: cannot create a network namespace: {reason}");
            None
        }
    }
}

/// A BEP 15 client on a socket inside the namespace.
struct NsClient {
    socket: UdpSocket,
    tracker: SocketAddr,
    connection_id: ConnectionId,
}

impl NsClient {
    fn new(socket: UdpSocket, tracker: SocketAddr) -> NsClient {
        let mut client = NsClient {
            socket,
            tracker,
            connection_id: ConnectionId(0),
        };
        let connect = Request::Connect(ConnectRequest {
            transaction_id: TransactionId(1),
        });
        match client.request(&connect) {
            Some((OwnedResponse::Connect(r), _)) => client.connection_id = r.connection_id,
            other => panic!("expected a connect response, got {other:?}"),
        }
        client
    }

    /// The parsed reply and its length, or None if none came in time.
    fn request(&self, request: &Request<'_>) -> Option<(OwnedResponse, usize)> {
        let mut bytes = Vec::new();
        request.write(&mut bytes).expect("write request");
        self.socket.send_to(&bytes, self.tracker).expect("send");
        let mut buf = [0u8; 65536];
        let (n, _) = self.socket.recv_from(&mut buf).ok()?;
        let response = OwnedResponse::parse(&buf[..n], false).expect("a valid response");
        Some((response, n))
    }

    fn announce(&self, hash: [u8; 20], numwant: i32) -> Option<(OwnedResponse, usize)> {
        self.request(&Request::Announce(AnnounceRequest {
            connection_id: self.connection_id,
            transaction_id: TransactionId(2),
            info_hash: InfoHash(hash),
            peer_id: PeerId([0xaa; 20]),
            bytes_downloaded: 0,
            bytes_left: 10,
            bytes_uploaded: 0,
            event: AnnounceEvent::Started,
            ip_address: None,
            key: 0,
            peers_wanted: numwant,
            port: 7777,
        }))
    }
}

/// A tracker with `udp_lines` in its `[udp]` table, a swarm of 320 IPv4
/// peers announced over loopback, and a client in the namespace; the
/// swarm's info hash.
fn swarm_of_320(netns: &Netns, name: &str, udp_lines: &str) -> (Tracker, NsClient, [u8; 20]) {
    let config = format!(
        "{}[tracker]\nmax_numwant = 300\n[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n",
        base_config().replace("[udp]\n", &format!("[udp]\n{udp_lines}"))
    );
    let tracker = Tracker::start(name, &config);
    let hash = hash_on_shard(1, 2, 31);
    let mut filler = Client::new(tracker.udp_v4());
    filler.fill_swarm(hash, 320);
    let port = tracker.udp.expect("udp").port();
    let at = SocketAddr::from((netns.host_ip, port));
    let client = NsClient::new(netns.socket(), at);
    (tracker, client, hash)
}

#[test]
fn announce_replies_fit_a_1500_byte_link() {
    let Some(netns) = netns_or_skip(0) else {
        return;
    };
    let (_tracker, client, hash) = swarm_of_320(&netns, "udp-mtu", "");
    // 240 peers: 20 + 6 × 240 = 1460 bytes, under the link's 1472.
    let (reply, _) = client.announce(hash, 240).expect("a reply to numwant 240");
    assert!(
        matches!(&reply, OwnedResponse::AnnounceIpv4 { peers, .. } if peers.len() == 240),
        "{reply:?}"
    );
    // 250 peers would be 1520 bytes: the reply must be cut to fit.
    let (reply, len) = client
        .announce(hash, 250)
        .expect("a reply to numwant 250 (none: it was larger than the link)");
    assert!(len <= 1472, "{len} bytes");
    match reply {
        OwnedResponse::AnnounceIpv4 {
            peers, leechers, ..
        } => {
            assert_eq!(peers.len(), (1472 - 20) / 6);
            assert_eq!(leechers, 321, "the counts stay whole");
        }
        other => panic!("expected an IPv4 announce response, got {other:?}"),
    }
}

#[test]
fn replies_the_link_refuses_are_counted() {
    let Some(netns) = netns_or_skip(1) else {
        return;
    };
    // A limit above what the link carries (a misconfiguration): the
    // kernel refuses the 1520-byte reply, and the refusal is counted.
    let udp_lines = "max_datagram_bytes = 1600\n";
    let (tracker, client, hash) = swarm_of_320(&netns, "udp-mtu-count", udp_lines);
    assert!(client.announce(hash, 250).is_none(), "no reply can pass");
    let metrics = tracker.metrics.expect("metrics");
    let counted = eventually(Duration::from_secs(5), || {
        let n = errors(metrics, "kind=\"send_too_large\"");
        (n >= 1.0).then_some(n)
    });
    assert_eq!(counted, Some(1.0), "one reply refused as too large");
}
