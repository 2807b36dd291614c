//! Messages as the npm `bittorrent-tracker` client sends them, and
//! round-trip properties.

use proptest::prelude::*;

use super::*;

/// A binary string as JavaScript's JSON.stringify writes it: control
/// characters escaped, everything else literal.
fn js_binary(bytes: &[u8; 20]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'"' => "\\\"".to_owned(),
            b'\\' => "\\\\".to_owned(),
            0..=0x1f => format!("\\u{b:04x}"),
            _ => char::from(b).to_string(),
        })
        .collect()
}

const HASH: [u8; 20] = [
    0xff, 0x00, 0x7f, 0x80, b'"', b'\\', 0x01, 0xe9, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xc3,
];

fn peer_id() -> [u8; 20] {
    *b"-WW0105-abcdefghijkl"
}

#[test]
fn announce_with_offers_as_the_js_client_sends_it() {
    let text = format!(
        r#"{{"action":"announce","info_hash":"{}","peer_id":"{}","numwant":5,"uploaded":0,"downloaded":0,"left":1234,"event":"started","offers":[{{"offer":{{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}},"offer_id":"{}"}}]}}"#,
        js_binary(&HASH),
        js_binary(&peer_id()),
        js_binary(&[0x90; 20]),
    );
    let InMessage::Announce(a) = InMessage::parse(text.as_bytes()).expect("parse") else {
        panic!("not an announce");
    };
    assert_eq!(a.info_hash, InfoHash(HASH));
    assert_eq!(a.peer_id, PeerId(peer_id()));
    assert_eq!(a.event, AnnounceEvent::Started);
    assert_eq!(a.bytes_left, Some(1234));
    assert_eq!(a.numwant, Some(5));
    let offers = a.offers.expect("offers");
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].offer_id, OfferId([0x90; 20]));
    assert_eq!(
        offers[0].offer.get(),
        r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#
    );
    assert!(a.answer.is_none());
}

#[test]
fn answer_and_update_announces() {
    let text = format!(
        r#"{{"action":"announce","info_hash":"{h}","peer_id":"{p}","to_peer_id":"{p}","answer":{{"type":"answer","sdp":"x"}},"offer_id":"{o}"}}"#,
        h = js_binary(&HASH),
        p = js_binary(&peer_id()),
        o = js_binary(&[7; 20]),
    );
    let InMessage::Announce(a) = InMessage::parse(text.as_bytes()).expect("parse") else {
        panic!("not an announce");
    };
    assert_eq!(a.event, AnnounceEvent::Update);
    assert_eq!(a.bytes_left, None);
    assert_eq!(a.to_peer_id, Some(PeerId(peer_id())));
    assert_eq!(a.offer_id, Some(OfferId([7; 20])));
    assert_eq!(
        a.answer.expect("answer").get(),
        r#"{"type":"answer","sdp":"x"}"#
    );

    // Odd numbers from JavaScript: floats, negatives, huge values; unknown
    // and empty events.
    let text = format!(
        r#"{{"action":"announce","info_hash":"{}","peer_id":"{}","left":1e30,"numwant":-3,"event":"","trackerid":"x"}}"#,
        js_binary(&HASH),
        js_binary(&peer_id()),
    );
    let InMessage::Announce(a) = InMessage::parse(text.as_bytes()).expect("parse") else {
        panic!("not an announce");
    };
    assert_eq!(a.bytes_left, Some(u64::MAX));
    assert_eq!(a.numwant, Some(0));
    assert_eq!(a.event, AnnounceEvent::Update);
}

#[test]
fn scrape_of_one_or_several_hashes() {
    let one = format!(
        r#"{{"action":"scrape","info_hash":"{}"}}"#,
        js_binary(&HASH)
    );
    let many = format!(
        r#"{{"action":"scrape","info_hash":["{}","{}"]}}"#,
        js_binary(&HASH),
        js_binary(&[1; 20])
    );
    let InMessage::Scrape(s) = InMessage::parse(one.as_bytes()).expect("one") else {
        panic!("not a scrape");
    };
    assert_eq!(s.info_hashes, vec![InfoHash(HASH)]);
    let InMessage::Scrape(s) = InMessage::parse(many.as_bytes()).expect("many") else {
        panic!("not a scrape");
    };
    assert_eq!(s.info_hashes, vec![InfoHash(HASH), InfoHash([1; 20])]);
    let InMessage::Scrape(s) = InMessage::parse(br#"{"action":"scrape"}"#).expect("full") else {
        panic!("not a scrape");
    };
    assert!(s.info_hashes.is_empty());
}

#[test]
fn bad_messages_have_typed_errors() {
    let cases: [(&[u8], &str); 6] = [
        (b"not json", "invalid JSON"),
        (br#"{"action":"dance"}"#, "unknown action"),
        (br#"{"numwant":1}"#, "missing action"),
        (
            br#"{"action":"announce","peer_id":"aaaaaaaaaaaaaaaaaaaa"}"#,
            "missing or invalid info_hash",
        ),
        (
            br#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa"}"#,
            "missing or invalid peer_id",
        ),
        (
            br#"{"action":"announce","info_hash":"short","peer_id":"aaaaaaaaaaaaaaaaaaaa"}"#,
            "invalid field in message",
        ),
    ];
    for (bytes, reason) in cases {
        let err = InMessage::parse(bytes).expect_err("must fail");
        assert_eq!(
            err.failure_reason(),
            reason,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn out_messages_match_what_the_js_client_reads() {
    let mut out = Vec::new();
    OutMessage::AnnounceResponse(AnnounceResponse {
        info_hash: InfoHash([b'a'; 20]),
        complete: 1,
        incomplete: 2,
        announce_interval: 120,
    })
    .write(&mut out)
    .expect("write");
    assert_eq!(
        std::str::from_utf8(&out).expect("utf8"),
        r#"{"action":"announce","info_hash":"aaaaaaaaaaaaaaaaaaaa","complete":1,"incomplete":2,"interval":120}"#
    );

    let offer =
        RawValue::from_string(r#"{"type":"offer","sdp":"v=0\r\n"}"#.to_owned()).expect("raw");
    out.clear();
    OutMessage::Offer(OfferMessage {
        info_hash: InfoHash([b'a'; 20]),
        peer_id: PeerId([b'b'; 20]),
        offer_id: OfferId([b'c'; 20]),
        offer: &offer,
    })
    .write(&mut out)
    .expect("write");
    let text = std::str::from_utf8(&out).expect("utf8");
    assert!(
        text.contains(r#""offer":{"type":"offer","sdp":"v=0\r\n"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#""offer_id":"cccccccccccccccccccc""#),
        "{text}"
    );

    out.clear();
    OutMessage::Error(ErrorResponse {
        failure_reason: "info hash not allowed",
        action: Some("announce"),
        info_hash: None,
    })
    .write(&mut out)
    .expect("write");
    assert_eq!(
        std::str::from_utf8(&out).expect("utf8"),
        r#"{"failure reason":"info hash not allowed","action":"announce"}"#
    );
}

fn bytes20() -> impl Strategy<Value = [u8; 20]> {
    proptest::array::uniform20(any::<u8>())
}

fn sdp() -> impl Strategy<Value = String> {
    "[ -~]{0,40}".prop_map(|s| {
        serde_json::to_string(&serde_json::json!({"type": "offer", "sdp": s})).expect("json")
    })
}

proptest! {
    #[test]
    fn announce_round_trips(
        info_hash in bytes20(),
        peer in bytes20(),
        event in 0u8..4,
        left in proptest::option::of(0u64..(1 << 53)),
        numwant in proptest::option::of(0usize..1000),
        offers in proptest::collection::vec((bytes20(), sdp()), 0..4),
        answer in proptest::option::of((bytes20(), bytes20(), sdp())),
    ) {
        let event = [AnnounceEvent::Started, AnnounceEvent::Stopped, AnnounceEvent::Completed, AnnounceEvent::Update][event as usize];
        let request = AnnounceRequest {
            info_hash: InfoHash(info_hash),
            peer_id: PeerId(peer),
            event,
            bytes_left: left,
            numwant,
            offers: Some(offers.iter().map(|(id, s)| AnnounceOffer {
                offer_id: OfferId(*id),
                offer: RawValue::from_string(s.clone()).expect("raw"),
            }).collect()),
            answer: answer.as_ref().map(|(_, _, s)| RawValue::from_string(s.clone()).expect("raw")),
            to_peer_id: answer.as_ref().map(|(p, _, _)| PeerId(*p)),
            offer_id: answer.as_ref().map(|(_, o, _)| OfferId(*o)),
        };
        let mut out = Vec::new();
        InMessage::Announce(request).write(&mut out).expect("write");
        let InMessage::Announce(back) = InMessage::parse(&out).expect("parse") else {
            panic!("not an announce");
        };
        prop_assert_eq!(back.info_hash, InfoHash(info_hash));
        prop_assert_eq!(back.peer_id, PeerId(peer));
        prop_assert_eq!(back.event, event);
        prop_assert_eq!(back.bytes_left, left);
        prop_assert_eq!(back.numwant, numwant);
        let back_offers = back.offers.expect("offers");
        prop_assert_eq!(back_offers.len(), offers.len());
        for (got, (id, s)) in back_offers.iter().zip(&offers) {
            prop_assert_eq!(got.offer_id, OfferId(*id));
            prop_assert_eq!(got.offer.get(), s.as_str());
        }
        prop_assert_eq!(back.answer.map(|a| a.get().to_owned()), answer.as_ref().map(|a| a.2.clone()));
        prop_assert_eq!(back.to_peer_id, answer.as_ref().map(|a| PeerId(a.0)));
    }

    #[test]
    fn scrape_round_trips(hashes in proptest::collection::vec(bytes20(), 0..10)) {
        let request = ScrapeRequest { info_hashes: hashes.iter().map(|h| InfoHash(*h)).collect() };
        let mut out = Vec::new();
        InMessage::Scrape(request.clone()).write(&mut out).expect("write");
        let InMessage::Scrape(back) = InMessage::parse(&out).expect("parse") else {
            panic!("not a scrape");
        };
        prop_assert_eq!(back, request);
    }

    #[test]
    fn out_messages_round_trip(hash in bytes20(), peer in bytes20(), id in bytes20(), n in 0usize..100_000, s in sdp(), reason in "[ -~]{0,30}") {
        let raw = RawValue::from_string(s.clone()).expect("raw");
        let mut out = Vec::new();
        OutMessage::AnnounceResponse(AnnounceResponse { info_hash: InfoHash(hash), complete: n, incomplete: n / 2, announce_interval: 120 }).write(&mut out).expect("write");
        match OwnedOutMessage::parse(&out).expect("parse") {
            OwnedOutMessage::AnnounceResponse(r) => {
                prop_assert_eq!(r, AnnounceResponse { info_hash: InfoHash(hash), complete: n, incomplete: n / 2, announce_interval: 120 });
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        out.clear();
        OutMessage::Answer(AnswerMessage { info_hash: InfoHash(hash), peer_id: PeerId(peer), offer_id: OfferId(id), answer: &raw }).write(&mut out).expect("write");
        match OwnedOutMessage::parse(&out).expect("parse") {
            OwnedOutMessage::Answer { info_hash, peer_id, offer_id, answer } => {
                prop_assert_eq!(info_hash, InfoHash(hash));
                prop_assert_eq!(peer_id, PeerId(peer));
                prop_assert_eq!(offer_id, OfferId(id));
                prop_assert_eq!(answer.get(), s.as_str());
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        out.clear();
        let files = [(InfoHash(hash), ScrapeStatistics { complete: n, incomplete: 1, downloaded: 2 })];
        OutMessage::ScrapeResponse(ScrapeResponse { files: &files }).write(&mut out).expect("write");
        match OwnedOutMessage::parse(&out).expect("parse") {
            OwnedOutMessage::ScrapeResponse { files: back } => prop_assert_eq!(back, files.to_vec()),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        out.clear();
        OutMessage::Error(ErrorResponse { failure_reason: &reason, action: Some("scrape"), info_hash: Some(InfoHash(hash)) }).write(&mut out).expect("write");
        match OwnedOutMessage::parse(&out).expect("parse") {
            OwnedOutMessage::Error { failure_reason, action, info_hash } => {
                prop_assert_eq!(failure_reason, reason);
                prop_assert_eq!(action.as_deref(), Some("scrape"));
                prop_assert_eq!(info_hash, Some(InfoHash(hash)));
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    /// A message the server keeps (queued for a connection, as the shard
    /// emits it) writes the same bytes as the borrowed form it came from.
    #[test]
    fn owned_messages_write_what_they_parsed_from(hash in bytes20(), peer in bytes20(), id in bytes20(), n in 0usize..100_000, s in sdp(), reason in "[ -~]{0,30}") {
        let raw = RawValue::from_string(s).expect("raw json");
        let files = [(InfoHash(hash), ScrapeStatistics { complete: n, incomplete: 1, downloaded: 2 })];
        let messages = [
            OutMessage::AnnounceResponse(AnnounceResponse { info_hash: InfoHash(hash), complete: n, incomplete: n / 2, announce_interval: 120 }),
            OutMessage::Offer(OfferMessage { info_hash: InfoHash(hash), peer_id: PeerId(peer), offer_id: OfferId(id), offer: &raw }),
            OutMessage::Answer(AnswerMessage { info_hash: InfoHash(hash), peer_id: PeerId(peer), offer_id: OfferId(id), answer: &raw }),
            OutMessage::ScrapeResponse(ScrapeResponse { files: &files }),
            OutMessage::Error(ErrorResponse { failure_reason: &reason, action: Some("announce"), info_hash: Some(InfoHash(hash)) }),
        ];
        for message in messages {
            let mut written = Vec::new();
            message.write(&mut written).expect("write");
            let owned = OwnedOutMessage::parse(&written).expect("parse");
            let mut again = Vec::new();
            owned.as_out_message().write(&mut again).expect("write again");
            prop_assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&written));
        }
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = InMessage::parse(&bytes);
        let _ = OwnedOutMessage::parse(&bytes);
    }

    #[test]
    fn parse_never_panics_on_near_json(text in r#"\{"action":"(announce|scrape)","info_hash":[\["a-z\\u00ff,]{0,50}\]?[,"a-z:0-9\{\}\[\]]{0,80}\}"#) {
        // Bytes and text (what a WebSocket text frame gives) parse alike.
        prop_assert_eq!(
            format!("{:?}", InMessage::parse(text.as_bytes())),
            format!("{:?}", InMessage::parse_text(&text))
        );
    }
}
