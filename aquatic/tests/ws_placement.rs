//! WebTorrent relay between connections that are certainly on different
//! executors (a test-only hook tells which executor holds a connection).

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use aquatic_ws_protocol::{
    AnnounceEvent, AnnounceOffer, AnnounceRequest, InMessage, InfoHash, OfferId, OwnedOutMessage,
    PeerId, ScrapeRequest,
};
use common::{base_config, hash_on_shard, Tracker};
use serde_json::value::RawValue;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn connect(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    tungstenite::client(format!("ws://{addr}/"), stream)
        .expect("handshake")
        .0
}

fn text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn executor_of(ws: &mut Ws) -> u64 {
    ws.send(Message::Text("aquatic-test-hook:executor".into()))
        .expect("send");
    let reply: serde_json::Value = serde_json::from_str(&text(ws)).expect("json");
    reply["test_hook_executor"].as_u64().expect("executor id")
}

fn send(ws: &mut Ws, message: InMessage) {
    let mut out = Vec::new();
    message.write(&mut out).expect("write");
    ws.send(Message::Text(String::from_utf8(out).expect("utf8").into()))
        .expect("send");
}

fn recv(ws: &mut Ws) -> OwnedOutMessage {
    OwnedOutMessage::parse(text(ws).as_bytes()).expect("server message")
}

fn announce(hash: [u8; 20], peer: u8) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: InfoHash(hash),
        peer_id: PeerId([peer; 20]),
        event: AnnounceEvent::Started,
        bytes_left: Some(10),
        numwant: Some(3),
        offers: None,
        answer: None,
        to_peer_id: None,
        offer_id: None,
    }
}

/// One connection on each executor.
fn one_per_executor(addr: SocketAddr) -> [Ws; 2] {
    let mut slots: [Option<Ws>; 2] = [None, None];
    for _ in 0..200 {
        let mut ws = connect(addr);
        let executor = executor_of(&mut ws) as usize;
        if slots[executor].is_none() {
            slots[executor] = Some(ws);
        }
        if slots.iter().all(Option::is_some) {
            let [a, b] = slots;
            return [a.expect("slot"), b.expect("slot")];
        }
    }
    panic!("200 connections all landed on one executor");
}

#[test]
fn offer_and_answer_between_connections_on_different_executors() {
    let tracker = Tracker::start("ws-placement", &base_config());
    let addr = SocketAddr::from(([127, 0, 0, 1], tracker.ws.expect("ws").port()));
    // The torrent owned by executor 0, then by executor 1: each time one
    // peer is local to the owner and the other one is remote.
    for (owner, tag) in [(0u64, 1u8), (1, 2)] {
        let [mut a, mut b] = one_per_executor(addr);
        assert_eq!(executor_of(&mut a), 0);
        assert_eq!(executor_of(&mut b), 1);
        let hash = hash_on_shard(owner, 2, tag);
        // a (executor 0) waits; b (executor 1) offers.
        send(&mut a, InMessage::Announce(announce(hash, 1)));
        assert!(matches!(recv(&mut a), OwnedOutMessage::AnnounceResponse(_)));
        let mut offering = announce(hash, 2);
        let sdp = r#"{"type":"offer","sdp":"v=0\r\ncross"}"#;
        offering.offers = Some(vec![AnnounceOffer {
            offer_id: OfferId([9; 20]),
            offer: RawValue::from_string(sdp.to_owned()).expect("raw"),
        }]);
        send(&mut b, InMessage::Announce(offering));
        let OwnedOutMessage::AnnounceResponse(response) = recv(&mut b) else {
            panic!("expected b's announce response");
        };
        assert_eq!(response.incomplete, 2);
        match recv(&mut a) {
            OwnedOutMessage::Offer {
                peer_id,
                offer_id,
                offer,
                ..
            } => {
                assert_eq!(peer_id, PeerId([2; 20]));
                assert_eq!(offer_id, OfferId([9; 20]));
                assert_eq!(offer.get(), sdp);
            }
            other => panic!("expected the offer on executor 0, got {other:?}"),
        }
        let mut answer = announce(hash, 1);
        answer.event = AnnounceEvent::Update;
        answer.bytes_left = None;
        answer.answer =
            Some(RawValue::from_string(r#"{"type":"answer","sdp":"x"}"#.to_owned()).expect("raw"));
        answer.to_peer_id = Some(PeerId([2; 20]));
        answer.offer_id = Some(OfferId([9; 20]));
        send(&mut a, InMessage::Announce(answer));
        match recv(&mut b) {
            OwnedOutMessage::Answer {
                peer_id, offer_id, ..
            } => {
                assert_eq!(peer_id, PeerId([1; 20]));
                assert_eq!(offer_id, OfferId([9; 20]));
            }
            other => panic!("expected the answer on executor 1, got {other:?}"),
        }
        // Closing b's connection removes its peer at once, wherever the
        // torrent lives.
        b.close(None).expect("close");
        let _ = b.flush();
        let mut counts = None;
        for _ in 0..50 {
            send(
                &mut a,
                InMessage::Scrape(ScrapeRequest {
                    info_hashes: vec![InfoHash(hash)],
                }),
            );
            if let OwnedOutMessage::ScrapeResponse { files } = recv(&mut a) {
                counts = Some(files[0].1.incomplete);
                if counts == Some(1) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(counts, Some(1), "b's peer left when its connection closed");
    }
}
