//! Link frames: what nodes say to each other, and the byte framing around
//! it (sans-IO: bytes in, frames out, and back).
//!
//! ```text
//!   frame = version: u16 LE | length: u32 LE | body: `length` bytes (bincode 2, codec.rs)
//! ```
//!
//! A node speaks the current version and the previous one, so that a
//! rolling upgrade never splits the cluster; any other version ends the
//! link with an error naming both. Which of the two a link speaks is
//! agreed in the TLS handshake (ALPN, see `cluster::tls`): each side then
//! writes that version and reads nothing newer. A version differs from the
//! previous one only by frames appended to [`Frame`] (bincode numbers the
//! variants in order), so a previous-version body is a valid body of this
//! version, and a frame the previous version lacks is simply not sent on a
//! link that speaks it ([`Frame::since`]). The length is
//! checked against [`MAX_FRAME_BYTES`] before a byte of the body is
//! buffered, and the body decodes under the codec's own limit. Many frames
//! go out in one write: [`FrameWriter`] appends them to one buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aquatic_common::{
    AnnounceOutcome, InfoHash, PeerId, ScrapeStats, SelectedPeer, SelectedPeers, ShardId,
};
use aquatic_ws_protocol::OfferId;
use bincode::{Decode, Encode};
use serde_json::value::RawValue;

use crate::{
    codec,
    swarm::{AnnounceInput, ConnectionRef, PeerIdUse, WsAnnounce, WsAnswer},
};

/// The frame version this build writes to a member that speaks it.
/// Version 2 adds [`Frame::Handback`].
pub const FRAME_VERSION: u16 = 2;
/// The oldest version this build speaks (the previous release's): version
/// 1, every frame but [`Frame::Handback`].
pub const OLDEST_FRAME_VERSION: u16 = 1;
/// The header before each body.
pub const HEADER_BYTES: usize = 6;
/// The longest body: 1 MiB, well below the codec's 64 MiB decode limit. An
/// announce answer of 3000 IPv6 peers is about 120 KiB.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Why bytes from a link are not frames; each ends the link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer speaks a version this build does not.
    #[error("link frame version {theirs} is not one this node speaks ({OLDEST_FRAME_VERSION} to {ours})")]
    Version {
        /// This build's version.
        ours: u16,
        /// What the peer sent.
        theirs: u16,
    },
    /// A frame newer than the version the link agreed on (a peer that
    /// does not keep to its handshake).
    #[error("link frame version {theirs} on a link that agreed on version {agreed}")]
    NotAgreed {
        /// The link's version.
        agreed: u16,
        /// What the peer sent.
        theirs: u16,
    },
    /// A frame claims more than [`MAX_FRAME_BYTES`].
    #[error("link frame of {0} bytes is longer than the {MAX_FRAME_BYTES} allowed")]
    TooLong(usize),
    /// The body is not a frame.
    #[error("bad link frame: {0}")]
    Body(#[from] codec::CodecError),
}

/// Where the answer to a forwarded request goes on the node that asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct RemoteReply {
    /// The asking node's executor.
    pub executor: u32,
    /// What that executor waits with.
    pub target: ReplyTarget,
}

/// What the asking executor does with an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum ReplyTarget {
    /// Resolves the request it awaits under this token (HTTP).
    Token(u64),
    /// Answers this UDP client from its own socket.
    Udp {
        /// The client.
        client: SocketAddr,
        /// Its transaction id.
        transaction_id: i32,
    },
}

/// A UDP or HTTP announce, as the receiving node checked it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct WireAnnounce {
    /// The torrent.
    pub info_hash: [u8; 20],
    /// The peer.
    pub peer_id: [u8; 20],
    /// Its canonical source address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// The stopped event.
    pub stopped: bool,
    /// The completed event.
    pub completed: bool,
    /// `left`.
    pub bytes_left: Option<i64>,
    /// Peers wanted.
    pub numwant: Option<u64>,
    /// Most peers the reply can carry.
    pub max_peers: Option<u64>,
    /// How the owner treats the full peer id: 0 hashed (UDP), 1 kept
    /// (HTTP), 2 kept and shown (HTTP, non-compact).
    pub peer_ids: u8,
}

/// The owner's answer to an announce.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct WireAnswer {
    /// Seeders.
    pub seeders: u64,
    /// Leechers.
    pub leechers: u64,
    /// IPv4 peers: id (where the owner keeps it), address, port.
    pub v4: Vec<(Option<[u8; 20]>, Ipv4Addr, u16)>,
    /// IPv6 peers.
    pub v6: Vec<(Option<[u8; 20]>, Ipv6Addr, u16)>,
}

/// Scrape figures of one torrent: seeders, leechers, completed.
pub type WireStats = (u64, u64, u32);

/// A WebSocket connection anywhere in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct WireConnection {
    /// The member that holds it (its place in the member list).
    pub node: u32,
    /// Its executor there.
    pub executor: u32,
    /// Its number on that executor.
    pub connection: u64,
}

/// A WebTorrent announce the asking node's rules accepted; the SDP
/// payloads travel as the JSON text the client sent.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct WireWsAnnounce {
    /// The torrent.
    pub info_hash: [u8; 20],
    /// The announcing peer.
    pub peer_id: [u8; 20],
    /// Where the peer is connected.
    pub connection: WireConnection,
    /// `event=stopped`.
    pub stopped: bool,
    /// `event=completed`.
    pub completed: bool,
    /// `left`, if sent.
    pub bytes_left: Option<u64>,
    /// Offers: id and SDP JSON.
    pub offers: Vec<([u8; 20], String)>,
    /// How many offers to hand out at most.
    pub numwant: u64,
    /// An answer to relay: to peer, offer id, SDP JSON.
    pub answer: Option<([u8; 20], [u8; 20], String)>,
}

/// One peer of a swarm handed back to its owner: what a snapshot keeps of
/// it, with its lifetime left rather than a clock reading (the nodes'
/// clocks have different zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct WireHandbackPeer {
    /// Its address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// The hash of its peer id under the members' shared peer-id key
    /// (derived from `cluster.key_file`).
    pub peer_id_hash: u64,
    /// Its full id, where it was kept (it announced over HTTP).
    pub peer_id: Option<[u8; 20]>,
    /// Seeding, else leeching.
    pub seeder: bool,
    /// Seconds it has left before it expires unless it announces.
    pub remaining_secs: u32,
}

/// A torrent's swarm (or a part of a large one) handed back.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct WireHandbackTorrent {
    /// The torrent.
    pub info_hash: [u8; 20],
    /// `completed` events the sender counted while it owned the torrent
    /// (0 in the later parts of a split swarm).
    pub completed: u32,
    /// Its peers.
    pub peers: Vec<WireHandbackPeer>,
}

/// What crosses a link. New frames go at the end, each with the version
/// that introduced it in [`Frame::since`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Frame {
    /// The first frame each way: who is speaking (checked against its
    /// certificate).
    Hello {
        /// The sender's member name.
        name: String,
    },
    /// Sent on a timer; answered with [`Frame::HeartbeatAck`].
    Heartbeat {
        /// The sender's clock, microseconds, echoed back.
        sent_micros: u64,
    },
    /// The answer to a heartbeat.
    HeartbeatAck {
        /// The heartbeat's `sent_micros`.
        sent_micros: u64,
    },
    /// An announce for a torrent the receiver owns.
    Announce {
        /// Where the answer goes.
        reply: RemoteReply,
        /// The announce.
        input: WireAnnounce,
    },
    /// The answer; None when the owner could not answer (busy).
    AnnounceAnswer {
        /// From the announce.
        reply: RemoteReply,
        /// The figures and peers.
        answer: Option<WireAnswer>,
    },
    /// Scrape figures for torrents the receiver owns.
    Scrape {
        /// The asking executor.
        executor: u32,
        /// Its token.
        token: u64,
        /// WebTorrent swarms rather than BitTorrent ones.
        ws: bool,
        /// The hashes, in the order the answer keeps.
        hashes: Vec<[u8; 20]>,
    },
    /// The answer, hash by hash; None where the owner's shard did not
    /// answer in time.
    ScrapeAnswer {
        /// From the scrape.
        executor: u32,
        /// From the scrape.
        token: u64,
        /// Figures in the order asked.
        stats: Vec<Option<WireStats>>,
    },
    /// A WebTorrent announce for a torrent the receiver owns; what it
    /// causes comes back as [`Frame::WsDeliver`]s.
    WsAnnounce(WireWsAnnounce),
    /// A message for a WebSocket connection the receiver holds, as the
    /// JSON text the client will read.
    WsDeliver {
        /// The receiver's executor holding the connection.
        executor: u32,
        /// The connection's number there.
        connection: u64,
        /// The server message, serialized.
        message: Vec<u8>,
    },
    /// A connection of the sender closed: the receiver drops its peers.
    WsClosed {
        /// The connection.
        connection: WireConnection,
        /// Its peers in torrents the receiver owns.
        peers: Vec<([u8; 20], [u8; 20])>,
    },
    /// Swarms the sender served while the receiver was not live, handed
    /// back now that it owns them again (version 2).
    Handback {
        /// The torrents, each at most once per frame.
        torrents: Vec<WireHandbackTorrent>,
    },
}

impl Frame {
    /// The first frame version that has this frame: a link speaking an
    /// older one does not carry it.
    pub fn since(&self) -> u16 {
        match self {
            Frame::Handback { .. } => 2,
            _ => 1,
        }
    }
}

impl WireConnection {
    /// From the swarm's connection.
    pub fn from_ref(connection: ConnectionRef) -> Self {
        Self {
            node: connection.node,
            executor: u32::try_from(connection.executor.0).unwrap_or(u32::MAX),
            connection: connection.connection,
        }
    }

    /// Back into the swarm's connection.
    pub fn into_ref(self) -> ConnectionRef {
        ConnectionRef {
            node: self.node,
            executor: ShardId(self.executor as usize),
            connection: self.connection,
        }
    }
}

impl WireWsAnnounce {
    /// From a checked WebTorrent announce.
    pub fn from_announce(request: &WsAnnounce) -> Self {
        Self {
            info_hash: request.info_hash.0,
            peer_id: request.peer_id.0,
            connection: WireConnection::from_ref(request.connection),
            stopped: request.stopped,
            completed: request.completed,
            bytes_left: request.bytes_left,
            offers: request
                .offers
                .iter()
                .map(|(id, sdp)| (id.0, sdp.get().to_owned()))
                .collect(),
            numwant: request.numwant as u64,
            answer: request
                .answer
                .as_ref()
                .map(|a| (a.to_peer_id.0, a.offer_id.0, a.answer.get().to_owned())),
        }
    }

    /// Back into the swarm's announce; None if a payload is not JSON
    /// (the sender checked it, so only a broken sender gets here).
    pub fn into_announce(self) -> Option<WsAnnounce> {
        let payload = |json: String| RawValue::from_string(json).ok();
        let mut offers = Vec::with_capacity(self.offers.len());
        for (id, sdp) in self.offers {
            offers.push((OfferId(id), payload(sdp)?));
        }
        let answer = match self.answer {
            Some((to, offer, sdp)) => Some(WsAnswer {
                to_peer_id: PeerId(to),
                offer_id: OfferId(offer),
                answer: payload(sdp)?,
            }),
            None => None,
        };
        Some(WsAnnounce {
            info_hash: InfoHash(self.info_hash),
            peer_id: PeerId(self.peer_id),
            connection: self.connection.into_ref(),
            stopped: self.stopped,
            completed: self.completed,
            bytes_left: self.bytes_left,
            offers,
            numwant: usize::try_from(self.numwant).unwrap_or(usize::MAX),
            answer,
        })
    }
}

impl WireAnnounce {
    /// From a checked announce.
    pub fn from_input(input: &AnnounceInput) -> Self {
        Self {
            info_hash: input.info_hash.0,
            peer_id: input.peer_id.0,
            ip: input.ip,
            port: input.port,
            stopped: input.stopped,
            completed: input.completed,
            bytes_left: input.bytes_left,
            numwant: input.numwant.map(|n| n as u64),
            max_peers: input.max_peers.map(|n| n as u64),
            peer_ids: match input.peer_ids {
                PeerIdUse::Hashed => 0,
                PeerIdUse::Kept => 1,
                PeerIdUse::KeptAndShown => 2,
            },
        }
    }

    /// Back into the router's input.
    pub fn into_input(self) -> AnnounceInput {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        AnnounceInput {
            info_hash: InfoHash(self.info_hash),
            peer_id: PeerId(self.peer_id),
            ip: self.ip,
            port: self.port,
            stopped: self.stopped,
            completed: self.completed,
            bytes_left: self.bytes_left,
            numwant: self.numwant.map(size),
            max_peers: self.max_peers.map(size),
            // Only public announces cross a link: config refuses private
            // mode on a cluster node (see PrivateConfig::check).
            private: None,
            peer_ids: match self.peer_ids {
                0 => PeerIdUse::Hashed,
                1 => PeerIdUse::Kept,
                // Anything else is a newer node's: show what is kept.
                _ => PeerIdUse::KeptAndShown,
            },
        }
    }
}

impl WireAnswer {
    /// From the owner's result.
    pub fn new(outcome: &AnnounceOutcome, peers: &SelectedPeers) -> Self {
        Self {
            seeders: outcome.seeders as u64,
            leechers: outcome.leechers as u64,
            v4: peers
                .v4
                .iter()
                .map(|p| (p.peer_id.map(|id| id.0), p.ip_address, p.port))
                .collect(),
            v6: peers
                .v6
                .iter()
                .map(|p| (p.peer_id.map(|id| id.0), p.ip_address, p.port))
                .collect(),
        }
    }

    /// Back into the figures and peers.
    pub fn into_parts(self) -> (AnnounceOutcome, SelectedPeers) {
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let outcome = AnnounceOutcome {
            seeders: count(self.seeders),
            leechers: count(self.leechers),
        };
        let peers = SelectedPeers {
            v4: self
                .v4
                .into_iter()
                .map(|(id, ip_address, port)| SelectedPeer {
                    peer_id: id.map(PeerId),
                    ip_address,
                    port,
                })
                .collect(),
            v6: self
                .v6
                .into_iter()
                .map(|(id, ip_address, port)| SelectedPeer {
                    peer_id: id.map(PeerId),
                    ip_address,
                    port,
                })
                .collect(),
        };
        (outcome, peers)
    }
}

/// Scrape figures onto the wire.
pub fn wire_stats(stats: ScrapeStats) -> WireStats {
    (stats.seeders as u64, stats.leechers as u64, stats.completed)
}

/// Scrape figures off the wire.
pub fn stats_from_wire((seeders, leechers, completed): WireStats) -> ScrapeStats {
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    ScrapeStats {
        seeders: count(seeders),
        leechers: count(leechers),
        completed,
    }
}

/// Frames waiting for one write.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buffer: Vec<u8>,
    frames: usize,
}

impl FrameWriter {
    /// Appends `frame` in version `version` (the link's agreed one). A
    /// frame that would be too long, or that `version` lacks, is not
    /// written (false): the caller counts it dropped.
    pub fn push_version(&mut self, version: u16, frame: &Frame) -> bool {
        if frame.since() > version {
            return false;
        }
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&version.to_le_bytes());
        self.buffer.extend_from_slice(&[0; 4]);
        let encoded = codec::encode_into(frame, &mut self.buffer);
        let length = self.buffer.len() - start - HEADER_BYTES;
        if encoded.is_err() || length > MAX_FRAME_BYTES {
            self.buffer.truncate(start);
            return false;
        }
        let length = (length as u32).to_le_bytes();
        self.buffer[start + 2..start + HEADER_BYTES].copy_from_slice(&length);
        self.frames += 1;
        true
    }

    /// Appends `frame` in the current version.
    pub fn push(&mut self, frame: &Frame) -> bool {
        self.push_version(FRAME_VERSION, frame)
    }

    /// The bytes to write.
    pub fn bytes(&self) -> &[u8] {
        &self.buffer
    }

    /// Frames in [`Self::bytes`].
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Empties the buffer after a write, keeping its memory.
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.frames = 0;
    }
}

/// Frames out of the bytes a link delivers, however they were cut.
#[derive(Debug)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already decoded.
    consumed: usize,
    /// The newest version read: the one the link agreed on.
    newest: u16,
}

impl Default for FrameReader {
    /// A reader of every version this build speaks (before a link has
    /// agreed on one: the hello frames).
    fn default() -> Self {
        Self::up_to(FRAME_VERSION)
    }
}

impl FrameReader {
    /// A reader of the versions from [`OLDEST_FRAME_VERSION`] to `newest`
    /// (a link's agreed version; a test double's only one).
    pub fn up_to(newest: u16) -> Self {
        Self {
            buffer: Vec::new(),
            consumed: 0,
            newest: newest.min(FRAME_VERSION),
        }
    }

    /// The same buffered bytes, read up to `newest` from now on.
    pub fn limit_to(&mut self, newest: u16) {
        self.newest = newest.min(FRAME_VERSION);
    }

    /// Takes bytes read from the link.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed == self.buffer.len() {
            self.buffer.clear();
            self.consumed = 0;
        } else if self.consumed > 64 << 10 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let rest = &self.buffer[self.consumed..];
        if rest.len() < HEADER_BYTES {
            return Ok(None);
        }
        let version = u16::from_le_bytes([rest[0], rest[1]]);
        if !(OLDEST_FRAME_VERSION..=FRAME_VERSION).contains(&version) {
            return Err(FrameError::Version {
                ours: FRAME_VERSION,
                theirs: version,
            });
        }
        if version > self.newest {
            return Err(FrameError::NotAgreed {
                agreed: self.newest,
                theirs: version,
            });
        }
        let length = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(FrameError::TooLong(length));
        }
        let Some(body) = rest.get(HEADER_BYTES..HEADER_BYTES + length) else {
            return Ok(None);
        };
        // Version 2 only appended a variant: a version 1 body decodes as
        // itself. A frame newer than the version it came in is a broken
        // peer's.
        let frame = codec::decode::<Frame>(body)?;
        if frame.since() > version {
            return Err(FrameError::NotAgreed {
                agreed: version,
                theirs: frame.since(),
            });
        }
        self.consumed += HEADER_BYTES + length;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello { name: "b".into() },
            Frame::Heartbeat { sent_micros: 42 },
            Frame::Announce {
                reply: RemoteReply {
                    executor: 1,
                    target: ReplyTarget::Udp {
                        client: "10.0.0.1:6881".parse().expect("addr"),
                        transaction_id: -5,
                    },
                },
                input: WireAnnounce {
                    info_hash: [3; 20],
                    peer_id: [4; 20],
                    ip: "::1".parse().expect("ip"),
                    port: 1,
                    stopped: false,
                    completed: true,
                    bytes_left: Some(-1),
                    numwant: None,
                    max_peers: Some(70),
                    peer_ids: 1,
                },
            },
            Frame::ScrapeAnswer {
                executor: 0,
                token: 9,
                stats: vec![Some((1, 2, 3)), None],
            },
        ]
    }

    #[test]
    fn a_webtorrent_announce_crosses_a_link_unchanged() {
        let sdp = |text: &str| RawValue::from_string(text.to_owned()).expect("json");
        let announce = WsAnnounce {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([2; 20]),
            connection: ConnectionRef {
                node: 3,
                executor: ShardId(1),
                connection: 77,
            },
            stopped: false,
            completed: true,
            bytes_left: Some(5),
            offers: vec![(OfferId([4; 20]), sdp(r#"{"sdp":"o"}"#))],
            numwant: 9,
            answer: Some(WsAnswer {
                to_peer_id: PeerId([6; 20]),
                offer_id: OfferId([7; 20]),
                answer: sdp(r#"{"sdp":"a"}"#),
            }),
        };
        let wire = WireWsAnnounce::from_announce(&announce);
        let back = wire.clone().into_announce().expect("valid payloads");
        assert_eq!(WireWsAnnounce::from_announce(&back), wire);
        assert_eq!(back.connection, announce.connection);
        let mut broken = wire;
        broken.offers[0].1 = "not json".to_owned();
        assert!(broken.into_announce().is_none());
    }

    #[test]
    fn frames_survive_any_cut() {
        let mut writer = FrameWriter::default();
        for frame in frames() {
            assert!(writer.push(&frame));
        }
        assert_eq!(writer.frames(), 4);
        let bytes = writer.bytes().to_vec();
        for cut in 1..bytes.len() {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(cut) {
                reader.feed(piece);
                while let Some(frame) = reader.next_frame().expect("valid") {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames(), "pieces of {cut}");
        }
    }

    #[test]
    fn other_versions_are_refused_naming_both() {
        let mut writer = FrameWriter::default();
        assert!(writer.push_version(FRAME_VERSION + 1, &Frame::Heartbeat { sent_micros: 1 }));
        let mut reader = FrameReader::default();
        reader.feed(writer.bytes());
        let err = reader.next_frame().expect_err("newer");
        let text = err.to_string();
        assert!(text.contains(&format!("{}", FRAME_VERSION + 1)), "{text}");
        assert!(text.contains(&format!("{FRAME_VERSION}")), "{text}");
    }

    #[test]
    fn the_oldest_version_read_is_read() {
        let mut writer = FrameWriter::default();
        assert!(writer.push_version(OLDEST_FRAME_VERSION, &Frame::Hello { name: "a".into() }));
        let mut reader = FrameReader::default();
        reader.feed(writer.bytes());
        assert_eq!(
            reader.next_frame().expect("read"),
            Some(Frame::Hello { name: "a".into() })
        );
    }

    fn handback() -> Frame {
        Frame::Handback {
            torrents: vec![WireHandbackTorrent {
                info_hash: [9; 20],
                completed: 3,
                peers: vec![WireHandbackPeer {
                    ip: "10.0.0.2".parse().expect("ip"),
                    port: 6881,
                    peer_id_hash: 77,
                    peer_id: Some([1; 20]),
                    seeder: true,
                    remaining_secs: 1200,
                }],
            }],
        }
    }

    #[test]
    fn a_handback_crosses_a_version_2_link_and_never_a_version_1_one() {
        let mut writer = FrameWriter::default();
        assert!(writer.push_version(2, &handback()));
        let mut reader = FrameReader::up_to(2);
        reader.feed(writer.bytes());
        assert_eq!(reader.next_frame().expect("read"), Some(handback()));
        // Not written in version 1, which lacks it.
        let mut old = FrameWriter::default();
        assert!(!old.push_version(1, &handback()));
        assert!(old.bytes().is_empty());
        // A link that agreed on version 1 refuses a version 2 frame, and
        // a handback smuggled in a version 1 header.
        let mut reader = FrameReader::up_to(1);
        reader.feed(writer.bytes());
        assert!(matches!(
            reader.next_frame(),
            Err(FrameError::NotAgreed {
                agreed: 1,
                theirs: 2
            })
        ));
        let mut smuggled = writer.bytes().to_vec();
        smuggled[..2].copy_from_slice(&1u16.to_le_bytes());
        let mut reader = FrameReader::up_to(2);
        reader.feed(&smuggled);
        assert!(matches!(
            reader.next_frame(),
            Err(FrameError::NotAgreed { .. })
        ));
        // Every version 1 frame is read the same by a version 2 reader.
        let mut writer = FrameWriter::default();
        for frame in frames() {
            assert!(writer.push_version(1, &frame));
        }
        let mut reader = FrameReader::up_to(2);
        reader.feed(writer.bytes());
        for frame in frames() {
            assert_eq!(reader.next_frame().expect("read"), Some(frame));
        }
    }

    #[test]
    fn a_long_length_is_refused_before_buffering() {
        let mut bytes = FRAME_VERSION.to_le_bytes().to_vec();
        bytes.extend_from_slice(&(MAX_FRAME_BYTES as u32 + 1).to_le_bytes());
        let mut reader = FrameReader::default();
        reader.feed(&bytes);
        assert!(matches!(reader.next_frame(), Err(FrameError::TooLong(_))));
        let mut writer = FrameWriter::default();
        let huge = Frame::Hello {
            name: "x".repeat(MAX_FRAME_BYTES),
        };
        assert!(!writer.push(&huge), "not written");
        assert!(writer.bytes().is_empty());
    }

    #[test]
    fn answers_round_trip_into_router_types() {
        let input = WireAnnounce {
            info_hash: [1; 20],
            peer_id: [2; 20],
            ip: "10.1.1.1".parse().expect("ip"),
            port: 7,
            stopped: true,
            completed: false,
            bytes_left: None,
            numwant: Some(5),
            max_peers: None,
            peer_ids: 2,
        };
        assert_eq!(WireAnnounce::from_input(&input.clone().into_input()), input);
        let answer = WireAnswer {
            seeders: 1,
            leechers: 2,
            v4: vec![(Some([5; 20]), Ipv4Addr::new(1, 2, 3, 4), 80)],
            v6: vec![],
        };
        let (outcome, peers) = answer.clone().into_parts();
        assert_eq!(WireAnswer::new(&outcome, &peers), answer);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut reader = FrameReader::default();
            let mut with_header = FRAME_VERSION.to_le_bytes().to_vec();
            with_header.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            with_header.extend_from_slice(&bytes);
            reader.feed(&with_header);
            let _ = reader.next_frame();
            let mut raw = FrameReader::default();
            raw.feed(&bytes);
            let _ = raw.next_frame();
        }
    }
}
