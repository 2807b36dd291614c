//! WebTorrent tracker end to end: the real binary, two workers, real
//! WebSocket connections on loopback, messages as the npm client sends them.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use aquatic_ws_protocol::{
    AnnounceEvent, AnnounceOffer, AnnounceRequest, InMessage, InfoHash, OfferId, OwnedOutMessage,
    PeerId, ScrapeRequest,
};
use common::{base_config, eventually, hash_on_shard, Tracker};
use serde_json::value::RawValue;
use tungstenite::{Message, WebSocket};

type Socket<S> = WebSocket<S>;

fn ws_v4(tracker: &Tracker) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], tracker.ws.expect("ws enabled").port()))
}

/// `config` with `lines` added to its `[ws]` section.
fn with_ws(config: &str, lines: &str) -> String {
    config.replacen("[ws]\n", &format!("[ws]\n{lines}"), 1)
}

struct Client<S: Read + Write> {
    socket: Socket<S>,
}

fn connect(addr: SocketAddr) -> Client<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (socket, _) =
        tungstenite::client(format!("ws://{addr}/announce"), stream).expect("handshake");
    Client { socket }
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("raw json")
}

fn sdp(tag: &str) -> Box<RawValue> {
    raw(&format!(r#"{{"type":"offer","sdp":"v=0\r\no={tag}\r\n"}}"#))
}

fn announce(hash: [u8; 20], peer: u8) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: InfoHash(hash),
        peer_id: PeerId([peer; 20]),
        event: AnnounceEvent::Started,
        bytes_left: Some(100),
        numwant: Some(5),
        offers: Some(Vec::new()),
        answer: None,
        to_peer_id: None,
        offer_id: None,
    }
}

impl<S: Read + Write> Client<S> {
    fn send(&mut self, message: InMessage) {
        let mut out = Vec::new();
        message.write(&mut out).expect("write");
        self.send_text(&String::from_utf8(out).expect("utf8"));
    }

    fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .expect("send");
    }

    /// The next server message (pings are answered by tungstenite).
    fn recv(&mut self) -> OwnedOutMessage {
        loop {
            match self.socket.read().expect("a message within the timeout") {
                Message::Text(text) => {
                    return OwnedOutMessage::parse(text.as_bytes()).expect("valid server message")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Announces and returns (seeders, leechers) from the response.
    fn announce(&mut self, request: AnnounceRequest) -> (usize, usize) {
        self.send(InMessage::Announce(request));
        match self.recv() {
            OwnedOutMessage::AnnounceResponse(r) => (r.complete, r.incomplete),
            other => panic!("expected an announce response, got {other:?}"),
        }
    }

    fn scrape(&mut self, hashes: &[[u8; 20]]) -> Vec<(InfoHash, usize, usize)> {
        self.send(InMessage::Scrape(ScrapeRequest {
            info_hashes: hashes.iter().map(|h| InfoHash(*h)).collect(),
        }));
        match self.recv() {
            OwnedOutMessage::ScrapeResponse { files } => files
                .into_iter()
                .map(|(h, s)| (h, s.complete, s.incomplete))
                .collect(),
            other => panic!("expected a scrape response, got {other:?}"),
        }
    }

    fn leechers(&mut self, hash: [u8; 20]) -> usize {
        self.scrape(&[hash])[0].2
    }
}

#[test]
fn offers_and_answers_are_relayed_across_executors() {
    let tracker = Tracker::start("ws-relay", &base_config());
    let addr = ws_v4(&tracker);
    // Several connections per torrent: the kernel spreads them over both
    // executors, so relays cross the mesh as well as stay local.
    for (shard, tag) in [(0u64, 1u8), (1, 2)] {
        let hash = hash_on_shard(shard, 2, tag);
        let mut waiting: Vec<Client<TcpStream>> = (0..3).map(|_| connect(addr)).collect();
        for (i, client) in waiting.iter_mut().enumerate() {
            let (_, leechers) = client.announce(announce(hash, 10 + i as u8));
            assert_eq!(leechers, i + 1);
        }
        let mut offerer = connect(addr);
        let mut request = announce(hash, 99);
        request.offers = Some(
            (0..3u8)
                .map(|i| AnnounceOffer {
                    offer_id: OfferId([i; 20]),
                    offer: sdp(&format!("offer{i}")),
                })
                .collect(),
        );
        let (_, leechers) = offerer.announce(request);
        assert_eq!(leechers, 4);

        // Each waiting peer gets exactly one of the offers, verbatim.
        let mut seen = Vec::new();
        for (i, client) in waiting.iter_mut().enumerate() {
            match client.recv() {
                OwnedOutMessage::Offer {
                    info_hash,
                    peer_id,
                    offer_id,
                    offer,
                } => {
                    assert_eq!(info_hash, InfoHash(hash));
                    assert_eq!(peer_id, PeerId([99; 20]));
                    let n = offer_id.0[0];
                    assert_eq!(offer.get(), sdp(&format!("offer{n}")).get());
                    seen.push(n);
                    // Answer it.
                    let mut answer = announce(hash, 10 + i as u8);
                    answer.event = AnnounceEvent::Update;
                    answer.bytes_left = None;
                    answer.offers = None;
                    answer.answer = Some(raw(&format!(r#"{{"type":"answer","sdp":"a{n}"}}"#)));
                    answer.to_peer_id = Some(PeerId([99; 20]));
                    answer.offer_id = Some(offer_id);
                    client.send(InMessage::Announce(answer));
                }
                other => panic!("expected an offer, got {other:?}"),
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2], "each offer goes to one peer");

        // The offerer gets the three answers back.
        let mut answers = Vec::new();
        for _ in 0..3 {
            match offerer.recv() {
                OwnedOutMessage::Answer {
                    offer_id, answer, ..
                } => {
                    let n = offer_id.0[0];
                    assert_eq!(answer.get(), format!(r#"{{"type":"answer","sdp":"a{n}"}}"#));
                    answers.push(n);
                }
                other => panic!("expected an answer, got {other:?}"),
            }
        }
        answers.sort_unstable();
        assert_eq!(answers, vec![0, 1, 2]);
        // Answers do not count as announces: still four leechers.
        assert_eq!(offerer.leechers(hash), 4);
    }
}

#[test]
fn a_relayed_offer_wakes_an_idle_connection_at_once() {
    let config = with_ws(&base_config(), "idle_timeout_secs = 300\n");
    let tracker = Tracker::start("ws-wake", &config);
    let addr = ws_v4(&tracker);
    for (shard, tag) in [(0u64, 5u8), (1, 6), (0, 7), (1, 8)] {
        let hash = hash_on_shard(shard, 2, tag);
        let mut idle = connect(addr);
        idle.announce(announce(hash, 1));
        // Nothing else happens on `idle` until the offer.
        std::thread::sleep(Duration::from_millis(300));
        let mut offerer = connect(addr);
        let mut request = announce(hash, 2);
        request.offers = Some(vec![AnnounceOffer {
            offer_id: OfferId([1; 20]),
            offer: sdp("wake"),
        }]);
        let sent = Instant::now();
        offerer.announce(request);
        let message = idle.recv();
        let waited = sent.elapsed();
        assert!(
            matches!(message, OwnedOutMessage::Offer { .. }),
            "{message:?}"
        );
        // Without the wake-up the offer would sit in the queue until the
        // next ping, minutes later; the bound is generous for noisy machines.
        assert!(
            waited < Duration::from_secs(2),
            "the offer took {waited:?}: the idle connection's task was not woken"
        );
    }
}

#[test]
fn closing_a_connection_removes_its_peers_from_every_shard() {
    let tracker = Tracker::start("ws-close", &base_config());
    let addr = ws_v4(&tracker);
    let hashes = [
        hash_on_shard(0, 2, 20),
        hash_on_shard(1, 2, 21),
        hash_on_shard(0, 2, 22),
        hash_on_shard(1, 2, 23),
    ];
    let mut observer = connect(addr);

    // A clean close (close frame) ...
    let mut clean = connect(addr);
    for hash in hashes {
        clean.announce(announce(hash, 1));
    }
    // ... and an abrupt one (TCP reset, no close frame).
    let mut abrupt = connect(addr);
    for hash in hashes {
        abrupt.announce(announce(hash, 2));
    }
    for row in observer.scrape(&hashes) {
        assert_eq!(row.2, 2, "both peers in every swarm: {row:?}");
    }
    clean.socket.close(None).expect("close");
    let _ = clean.socket.flush();
    let gone = eventually(Duration::from_secs(5), || {
        let rows = observer.scrape(&hashes);
        rows.iter().all(|r| r.2 == 1).then_some(())
    });
    assert!(gone.is_some(), "a cleanly closed connection's peers linger");

    socket2::SockRef::from(abrupt.socket.get_ref())
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0 for a reset");
    drop(abrupt);
    let gone = eventually(Duration::from_secs(5), || {
        let rows = observer.scrape(&hashes);
        rows.iter().all(|r| r.2 == 0).then_some(())
    });
    assert!(gone.is_some(), "a reset connection's peers linger");
}

#[test]
fn a_silent_connection_times_out_and_its_peers_leave() {
    let config = with_ws(&base_config(), "idle_timeout_secs = 1\n");
    let tracker = Tracker::start("ws-idle", &config);
    let addr = ws_v4(&tracker);
    let hash = hash_on_shard(1, 2, 30);
    let mut silent = connect(addr);
    silent.announce(announce(hash, 1));
    // `silent` now reads nothing, so it never answers the server's ping.
    let mut observer = connect(addr);
    assert_eq!(observer.leechers(hash), 1);
    let gone = eventually(Duration::from_secs(8), || {
        (observer.leechers(hash) == 0).then_some(())
    });
    assert!(gone.is_some(), "the silent peer was not removed");
    drop(silent);
}

#[test]
fn bad_messages_get_failure_reasons_and_the_connection_lives_on() {
    let config = with_ws(&base_config(), "max_message_bytes = 4096\n");
    let tracker = Tracker::start("ws-bad", &config);
    let addr = ws_v4(&tracker);
    let mut client = connect(addr);
    let cases = [
        "not json",
        r#"{"action":"dance"}"#,
        r#"{"action":"announce","info_hash":"short","peer_id":"aaaaaaaaaaaaaaaaaaaa"}"#,
        r#"{"action":"scrape"}"#,
    ];
    for text in cases {
        client.send_text(text);
        match client.recv() {
            OwnedOutMessage::Error { failure_reason, .. } => {
                assert!(!failure_reason.is_empty(), "{text}")
            }
            other => panic!("{text}: expected an error, got {other:?}"),
        }
    }
    client.send_text(r#"{"action":"scrape"}"#);
    match client.recv() {
        OwnedOutMessage::Error { failure_reason, .. } => {
            assert_eq!(failure_reason, "full scrapes are not supported")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    client
        .socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .expect("send binary");
    assert!(matches!(client.recv(), OwnedOutMessage::Error { .. }));
    // Still the same connection, still serving.
    let hash = hash_on_shard(0, 2, 40);
    assert_eq!(client.announce(announce(hash, 1)), (0, 1));

    // A message over the limit ends that connection only.
    let mut big = connect(addr);
    big.send_text(&format!(
        r#"{{"action":"scrape","junk":"{}"}}"#,
        "x".repeat(10_000)
    ));
    let closed = loop {
        match big.socket.read() {
            Ok(Message::Close(_)) | Err(_) => break true,
            Ok(_) => continue,
        }
    };
    assert!(closed);
    assert_eq!(connect(addr).leechers(hash), 1);
}

#[test]
fn wss_with_a_generated_certificate() {
    let certificate = common::TestCertificate::new("wss-cert");
    let tracker = Tracker::start("wss", &with_ws(&base_config(), &certificate.config_lines));
    let stream = certificate.connect(ws_v4(&tracker));
    let (socket, _) = tungstenite::client("wss://localhost/announce", stream).expect("handshake");
    let mut client = Client { socket };
    assert_eq!(
        client.announce(announce(hash_on_shard(1, 2, 50), 1)),
        (0, 1)
    );
}

/// How long a reload may take to show.
const WAIT: Duration = Duration::from_secs(10);

/// A WSS connection that trusts only `certificate`; None if the handshake fails.
fn wss_connect(
    certificate: &common::TestCertificate,
    addr: SocketAddr,
) -> Option<Client<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>> {
    let stream = certificate.connect(addr);
    let (socket, _) = tungstenite::client("wss://localhost/announce", stream).ok()?;
    Some(Client { socket })
}

#[test]
fn sigusr1_reloads_the_wss_certificate_and_open_connections_go_on() {
    let (first, second) = (
        common::TestCertificate::new("wss-reload-a"),
        common::TestCertificate::new("wss-reload-b"),
    );
    let tracker = Tracker::start("wss-reload", &with_ws(&base_config(), &first.config_lines));
    let addr = ws_v4(&tracker);
    let mut open = wss_connect(&first, addr).expect("served with the first certificate");
    let hash = hash_on_shard(0, 2, 51);
    assert_eq!(open.announce(announce(hash, 1)), (0, 1));
    assert!(
        wss_connect(&second, addr).is_none(),
        "a client that trusts only the second certificate is refused at first"
    );

    // The second certificate's files take the first one's paths.
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(second.dir.join(file), first.dir.join(file)).expect("copy");
    }
    tracker.signal(libc::SIGUSR1);
    let mut fresh = eventually(WAIT, || wss_connect(&second, addr))
        .expect("the second certificate is served after SIGUSR1");
    assert_eq!(fresh.announce(announce(hash, 2)), (0, 2));
    // The connection opened before the reload goes on, over its old keys.
    assert_eq!(open.announce(announce(hash, 1)), (0, 2));
}

#[test]
fn sigterm_closes_websockets_with_a_close_frame_and_exits_zero() {
    let mut tracker = Tracker::start("ws-stop", &base_config());
    let addr = ws_v4(&tracker);
    let mut clients: Vec<_> = (0..4).map(|_| connect(addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.announce(announce(hash_on_shard(i as u64 % 2, 2, 60), i as u8));
    }
    tracker.signal(libc::SIGTERM);
    for client in &mut clients {
        let frame = loop {
            match client.socket.read() {
                Ok(Message::Close(frame)) => break frame,
                Ok(_) => continue,
                Err(err) => panic!("no close frame before the connection ended: {err}"),
            }
        };
        let code = frame.map(|f| u16::from(f.code));
        assert_eq!(code, Some(1001), "close code 'going away'");
    }
    let status = tracker
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn one_connection_may_hold_several_peers_of_one_torrent() {
    // Browsers share one WebSocket per tracker among all their clients.
    let tracker = Tracker::start("ws-shared", &base_config());
    let addr = ws_v4(&tracker);
    let hash = hash_on_shard(1, 2, 70);
    let mut shared = connect(addr);
    assert_eq!(shared.announce(announce(hash, 1)), (0, 1));
    assert_eq!(shared.announce(announce(hash, 2)), (0, 2));
    let mut observer = connect(addr);
    assert_eq!(observer.leechers(hash), 2);
    shared.socket.close(None).expect("close");
    let _ = shared.socket.flush();
    let gone = eventually(Duration::from_secs(5), || {
        (observer.leechers(hash) == 0).then_some(())
    });
    assert!(gone.is_some(), "both peers of the closed connection leave");
}

#[test]
fn a_connection_may_announce_only_so_many_peers() {
    let config = with_ws(&base_config(), "max_peers_per_connection = 2\n");
    let tracker = Tracker::start("ws-peer-cap", &config);
    let mut client = connect(ws_v4(&tracker));
    let hashes: Vec<[u8; 20]> = (0..3)
        .map(|i| hash_on_shard(i % 2, 2, 80 + i as u8))
        .collect();
    assert_eq!(client.announce(announce(hashes[0], 1)), (0, 1));
    assert_eq!(client.announce(announce(hashes[1], 1)), (0, 1));
    client.send(InMessage::Announce(announce(hashes[2], 1)));
    match client.recv() {
        OwnedOutMessage::Error { failure_reason, .. } => {
            assert_eq!(failure_reason, "too many torrents on one connection")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Peers it holds may still re-announce, and a stopped one frees a slot.
    assert_eq!(client.announce(announce(hashes[1], 1)), (0, 1));
    let mut stop = announce(hashes[0], 1);
    stop.event = AnnounceEvent::Stopped;
    assert_eq!(client.announce(stop), (0, 0));
    assert_eq!(client.announce(announce(hashes[2], 1)), (0, 1));
    assert_eq!(client.leechers(hashes[2]), 1);
}

/// The failure reason of the next message, which must be an error.
fn error_reason<S: Read + Write>(client: &mut Client<S>) -> String {
    match client.recv() {
        OwnedOutMessage::Error { failure_reason, .. } => failure_reason,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn another_connection_cannot_stop_or_take_over_a_peer() {
    let tracker = Tracker::start("ws-ownership", &base_config());
    let addr = ws_v4(&tracker);
    // Both shards: the owner may be the holder's executor or another one.
    for shard in 0..2 {
        let hash = hash_on_shard(shard, 2, 40);
        let mut holder = connect(addr);
        let mut intruder = connect(addr);
        assert_eq!(holder.announce(announce(hash, 1)), (0, 1));

        // Eviction by peer id: refused, the peer stays.
        let mut stop = announce(hash, 1);
        stop.event = AnnounceEvent::Stopped;
        intruder.send(InMessage::Announce(stop));
        assert_eq!(
            error_reason(&mut intruder),
            "peer id in use by another connection"
        );
        assert_eq!(intruder.leechers(hash), 1, "shard {shard}: not evicted");

        // Hijack by peer id: refused, offers still reach the holder.
        intruder.send(InMessage::Announce(announce(hash, 1)));
        assert_eq!(
            error_reason(&mut intruder),
            "peer id in use by another connection"
        );
        let mut offerer = connect(addr);
        let mut with_offer = announce(hash, 2);
        with_offer.offers = Some(vec![AnnounceOffer {
            offer_id: OfferId([7; 20]),
            offer: sdp("o"),
        }]);
        assert_eq!(offerer.announce(with_offer), (0, 2));
        match holder.recv() {
            OwnedOutMessage::Offer { peer_id, .. } => assert_eq!(peer_id, PeerId([2; 20])),
            other => panic!("shard {shard}: the holder should get the offer, got {other:?}"),
        }
        // The holder's close frees the id.
        drop(holder);
        let freed = eventually(Duration::from_secs(5), || {
            (intruder.leechers(hash) == 1).then_some(())
        });
        assert!(
            freed.is_some(),
            "shard {shard}: the holder's peer left on close"
        );
        assert_eq!(intruder.announce(announce(hash, 1)), (0, 2));
    }
}

#[test]
fn a_peer_inserted_by_an_incomplete_answer_leaves_with_its_connection() {
    let tracker = Tracker::start("ws-incomplete-answer", &base_config());
    let addr = ws_v4(&tracker);
    let mut watcher = connect(addr);
    for shard in 0..2 {
        let hash = hash_on_shard(shard, 2, 41);
        let mut client = connect(addr);
        // An answer without to_peer_id / offer_id is a plain announce.
        let mut odd = announce(hash, 3);
        odd.answer = Some(sdp("a"));
        assert_eq!(client.announce(odd), (0, 1));
        drop(client);
        let gone = eventually(Duration::from_secs(5), || {
            (watcher.leechers(hash) == 0).then_some(())
        });
        assert!(
            gone.is_some(),
            "shard {shard}: the peer left with its connection"
        );
    }
}
