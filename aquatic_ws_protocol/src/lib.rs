//! The WebTorrent tracker protocol, sans IO.
//!
//! WebTorrent clients (the npm `bittorrent-tracker` client) speak JSON text
//! frames over a WebSocket. The server parses each frame with
//! [`InMessage::parse`] and writes replies with [`OutMessage::write`] into a
//! buffer of its own; this crate never touches a socket.
//!
//! Info hashes, peer ids and offer ids travel as 20-character "binary
//! strings" (one byte per character); they are decoded into byte arrays and
//! encoded from them on the stack. SDP offers and answers are relayed
//! between peers verbatim as [`RtcPayload`]s, never parsed.
//!
//! [`OwnedOutMessage::parse`] and [`InMessage::write`] are the client side,
//! for tests and load generators.

mod binary_string;

use std::io::Write;

pub use aquatic_common::{InfoHash, PeerId};
use binary_string::Bin20;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An SDP offer or answer object, relayed byte for byte.
pub type RtcPayload = Box<RawValue>;

/// Names one offer, so its answer can find the way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OfferId(pub [u8; 20]);

/// `event` of an announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnnounceEvent {
    /// The first announce.
    Started,
    /// The peer leaves.
    Stopped,
    /// The download finished.
    Completed,
    /// A periodic announce (also: absent, empty or unknown).
    #[default]
    Update,
}

impl AnnounceEvent {
    fn as_str(self) -> Option<&'static str> {
        match self {
            Self::Started => Some("started"),
            Self::Stopped => Some("stopped"),
            Self::Completed => Some("completed"),
            Self::Update => None,
        }
    }
}

/// An offer a peer makes to whoever the tracker picks.
#[derive(Debug)]
pub struct AnnounceOffer {
    /// The offer's id.
    pub offer_id: OfferId,
    /// The SDP offer.
    pub offer: RtcPayload,
}

/// An announce: a peer joins, stays or leaves, maybe with offers, or it
/// answers another peer's offer.
#[derive(Debug)]
pub struct AnnounceRequest {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The announcing peer.
    pub peer_id: PeerId,
    /// What happened.
    pub event: AnnounceEvent,
    /// `left`: bytes still to download, if sent.
    pub bytes_left: Option<u64>,
    /// Peers wanted, if sent.
    pub numwant: Option<usize>,
    /// Offers for other peers.
    pub offers: Option<Vec<AnnounceOffer>>,
    /// An answer to the offer `offer_id` of `to_peer_id`.
    pub answer: Option<RtcPayload>,
    /// Whom the answer is for.
    pub to_peer_id: Option<PeerId>,
    /// The offer answered.
    pub offer_id: Option<OfferId>,
}

/// A scrape of one or several torrents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeRequest {
    /// The torrents; empty means a full scrape, which trackers refuse.
    pub info_hashes: Vec<InfoHash>,
}

/// A message from a client.
#[derive(Debug)]
pub enum InMessage {
    /// `"action": "announce"`.
    Announce(AnnounceRequest),
    /// `"action": "scrape"`.
    Scrape(ScrapeRequest),
}

/// Why a client message cannot be understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not JSON, or fields of the wrong type.
    #[error("invalid message: {0}")]
    Json(#[from] serde_json::Error),
    /// `action` is neither announce nor scrape.
    #[error("unknown action")]
    UnknownAction,
    /// No `action`.
    #[error("missing action")]
    MissingAction,
    /// An announce without `info_hash`, or with a list of them.
    #[error("announce needs one info_hash")]
    MissingInfoHash,
    /// An announce without `peer_id`.
    #[error("announce needs a peer_id")]
    MissingPeerId,
    /// A server message without what its kind needs.
    #[error("incomplete server message")]
    IncompleteResponse,
}

impl ParseError {
    /// A short reason fit for a client's "failure reason".
    pub fn failure_reason(&self) -> &'static str {
        match self {
            Self::Json(e) if e.is_syntax() || e.is_eof() => "invalid JSON",
            Self::Json(_) => "invalid field in message",
            Self::UnknownAction => "unknown action",
            Self::MissingAction => "missing action",
            Self::MissingInfoHash => "missing or invalid info_hash",
            Self::MissingPeerId => "missing or invalid peer_id",
            Self::IncompleteResponse => "incomplete message",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Action {
    Announce,
    Scrape,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireEvent {
    Started,
    Stopped,
    Completed,
    #[serde(other)]
    Other,
}

/// One info hash or a list of them (scrape accepts both).
#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Bin20),
    Many(Vec<Bin20>),
}

#[derive(Deserialize)]
struct WireOffer {
    offer_id: Bin20,
    offer: RtcPayload,
}

/// Every field a client message may carry; unknown ones are ignored.
#[derive(Deserialize)]
struct WireIn {
    action: Option<Action>,
    info_hash: Option<OneOrMany>,
    peer_id: Option<Bin20>,
    event: Option<WireEvent>,
    // JavaScript numbers: integers, floats or absurd values alike.
    left: Option<f64>,
    numwant: Option<f64>,
    offers: Option<Vec<WireOffer>>,
    answer: Option<RtcPayload>,
    to_peer_id: Option<Bin20>,
    offer_id: Option<Bin20>,
}

/// A JavaScript number as a count: negatives and NaN are 0, huge values saturate.
fn count(n: f64) -> u64 {
    if n.is_nan() || n <= 0.0 {
        0
    } else {
        n as u64
    }
}

impl InMessage {
    /// Parses one client message from bytes (checked to be UTF-8).
    pub fn parse(bytes: &[u8]) -> Result<InMessage, ParseError> {
        Self::from_wire(serde_json::from_slice(bytes)?)
    }

    /// Parses one client text frame. A WebSocket library has already
    /// checked that a text frame is UTF-8, so this skips a second check
    /// (with binary strings full of non-ASCII characters, UTF-8 checks
    /// were a fifth of the tracker's CPU time).
    pub fn parse_text(text: &str) -> Result<InMessage, ParseError> {
        Self::from_wire(serde_json::from_str(text)?)
    }

    fn from_wire(wire: WireIn) -> Result<InMessage, ParseError> {
        match wire.action.ok_or(ParseError::MissingAction)? {
            Action::Announce => {
                let Some(OneOrMany::One(info_hash)) = wire.info_hash else {
                    return Err(ParseError::MissingInfoHash);
                };
                let peer_id = wire.peer_id.ok_or(ParseError::MissingPeerId)?;
                let event = match wire.event {
                    Some(WireEvent::Started) => AnnounceEvent::Started,
                    Some(WireEvent::Stopped) => AnnounceEvent::Stopped,
                    Some(WireEvent::Completed) => AnnounceEvent::Completed,
                    Some(WireEvent::Other) | None => AnnounceEvent::Update,
                };
                let offers = wire.offers.map(|offers| {
                    offers
                        .into_iter()
                        .map(|o| AnnounceOffer {
                            offer_id: OfferId(o.offer_id.0),
                            offer: o.offer,
                        })
                        .collect()
                });
                Ok(InMessage::Announce(AnnounceRequest {
                    info_hash: InfoHash(info_hash.0),
                    peer_id: PeerId(peer_id.0),
                    event,
                    bytes_left: wire.left.map(count),
                    numwant: wire
                        .numwant
                        .map(|n| usize::try_from(count(n)).unwrap_or(usize::MAX)),
                    offers,
                    answer: wire.answer,
                    to_peer_id: wire.to_peer_id.map(|p| PeerId(p.0)),
                    offer_id: wire.offer_id.map(|o| OfferId(o.0)),
                }))
            }
            Action::Scrape => {
                let info_hashes = match wire.info_hash {
                    None => Vec::new(),
                    Some(OneOrMany::One(h)) => vec![InfoHash(h.0)],
                    Some(OneOrMany::Many(hs)) => hs.into_iter().map(|h| InfoHash(h.0)).collect(),
                };
                Ok(InMessage::Scrape(ScrapeRequest { info_hashes }))
            }
            Action::Other => Err(ParseError::UnknownAction),
        }
    }

    /// Appends the message as a client sends it (for tests and load generators).
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        #[derive(Serialize)]
        struct WireOfferOut<'a> {
            offer_id: Bin20,
            offer: &'a RawValue,
        }
        #[derive(Serialize)]
        struct WireAnnounceOut<'a> {
            action: Action,
            info_hash: Bin20,
            peer_id: Bin20,
            #[serde(skip_serializing_if = "Option::is_none")]
            event: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            left: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            numwant: Option<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            offers: Option<Vec<WireOfferOut<'a>>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            answer: Option<&'a RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            to_peer_id: Option<Bin20>,
            #[serde(skip_serializing_if = "Option::is_none")]
            offer_id: Option<Bin20>,
        }
        #[derive(Serialize)]
        struct WireScrapeOut {
            action: Action,
            info_hash: OneOrMany,
        }
        match self {
            InMessage::Announce(a) => serde_json::to_writer(
                out,
                &WireAnnounceOut {
                    action: Action::Announce,
                    info_hash: Bin20(a.info_hash.0),
                    peer_id: Bin20(a.peer_id.0),
                    event: a.event.as_str(),
                    left: a.bytes_left,
                    numwant: a.numwant,
                    offers: a.offers.as_ref().map(|offers| {
                        offers
                            .iter()
                            .map(|o| WireOfferOut {
                                offer_id: Bin20(o.offer_id.0),
                                offer: &o.offer,
                            })
                            .collect()
                    }),
                    answer: a.answer.as_deref(),
                    to_peer_id: a.to_peer_id.map(|p| Bin20(p.0)),
                    offer_id: a.offer_id.map(|o| Bin20(o.0)),
                },
            ),
            InMessage::Scrape(s) => serde_json::to_writer(
                out,
                &WireScrapeOut {
                    action: Action::Scrape,
                    info_hash: OneOrMany::Many(s.info_hashes.iter().map(|h| Bin20(h.0)).collect()),
                },
            ),
        }
    }
}

/// Counts for the announcing peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Seeders.
    pub complete: usize,
    /// Leechers.
    pub incomplete: usize,
    /// Seconds until the next announce.
    pub announce_interval: u32,
}

/// Another peer's offer, relayed.
#[derive(Debug, Clone, Copy)]
pub struct OfferMessage<'a> {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The offering peer.
    pub peer_id: PeerId,
    /// The offer's id.
    pub offer_id: OfferId,
    /// The SDP offer, verbatim.
    pub offer: &'a RawValue,
}

/// The answer to an offer, relayed to the peer that made it.
#[derive(Debug, Clone, Copy)]
pub struct AnswerMessage<'a> {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The answering peer.
    pub peer_id: PeerId,
    /// The offer answered.
    pub offer_id: OfferId,
    /// The SDP answer, verbatim.
    pub answer: &'a RawValue,
}

/// Figures for one scraped torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScrapeStatistics {
    /// Seeders.
    pub complete: usize,
    /// Leechers.
    pub incomplete: usize,
    /// Completed downloads.
    pub downloaded: usize,
}

impl From<aquatic_common::ScrapeStats> for ScrapeStatistics {
    fn from(s: aquatic_common::ScrapeStats) -> Self {
        Self {
            complete: s.seeders,
            incomplete: s.leechers,
            downloaded: s.completed as usize,
        }
    }
}

/// Figures for every torrent asked for.
#[derive(Debug, Clone, Copy)]
pub struct ScrapeResponse<'a> {
    /// Torrent and figures, in the order asked.
    pub files: &'a [(InfoHash, ScrapeStatistics)],
}

/// A refusal.
#[derive(Debug, Clone, Copy)]
pub struct ErrorResponse<'a> {
    /// Why.
    pub failure_reason: &'a str,
    /// The action refused, if known.
    pub action: Option<&'a str>,
    /// The torrent, if known.
    pub info_hash: Option<InfoHash>,
}

/// A message from the server.
#[derive(Debug, Clone, Copy)]
pub enum OutMessage<'a> {
    /// Counts after an announce.
    AnnounceResponse(AnnounceResponse),
    /// A relayed offer.
    Offer(OfferMessage<'a>),
    /// A relayed answer.
    Answer(AnswerMessage<'a>),
    /// Scrape figures.
    ScrapeResponse(ScrapeResponse<'a>),
    /// A refusal.
    Error(ErrorResponse<'a>),
}

struct Files<'a>(&'a [(InfoHash, ScrapeStatistics)]);

impl Serialize for Files<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(h, s)| (Bin20(h.0), s)))
    }
}

impl OutMessage<'_> {
    /// Appends the JSON text of the message to `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        #[derive(Serialize)]
        struct WireAnnounceResponse {
            action: Action,
            info_hash: Bin20,
            complete: usize,
            incomplete: usize,
            interval: u32,
        }
        #[derive(Serialize)]
        struct WireRelay<'a> {
            action: Action,
            info_hash: Bin20,
            peer_id: Bin20,
            offer_id: Bin20,
            #[serde(skip_serializing_if = "Option::is_none")]
            offer: Option<&'a RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            answer: Option<&'a RawValue>,
        }
        #[derive(Serialize)]
        struct WireScrapeResponse<'a> {
            action: Action,
            files: Files<'a>,
        }
        #[derive(Serialize)]
        struct WireError<'a> {
            #[serde(rename = "failure reason")]
            failure_reason: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            action: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            info_hash: Option<Bin20>,
        }
        let out: &mut dyn Write = out;
        match self {
            OutMessage::AnnounceResponse(r) => serde_json::to_writer(
                out,
                &WireAnnounceResponse {
                    action: Action::Announce,
                    info_hash: Bin20(r.info_hash.0),
                    complete: r.complete,
                    incomplete: r.incomplete,
                    interval: r.announce_interval,
                },
            ),
            OutMessage::Offer(o) => serde_json::to_writer(
                out,
                &WireRelay {
                    action: Action::Announce,
                    info_hash: Bin20(o.info_hash.0),
                    peer_id: Bin20(o.peer_id.0),
                    offer_id: Bin20(o.offer_id.0),
                    offer: Some(o.offer),
                    answer: None,
                },
            ),
            OutMessage::Answer(a) => serde_json::to_writer(
                out,
                &WireRelay {
                    action: Action::Announce,
                    info_hash: Bin20(a.info_hash.0),
                    peer_id: Bin20(a.peer_id.0),
                    offer_id: Bin20(a.offer_id.0),
                    offer: None,
                    answer: Some(a.answer),
                },
            ),
            OutMessage::ScrapeResponse(s) => serde_json::to_writer(
                out,
                &WireScrapeResponse {
                    action: Action::Scrape,
                    files: Files(s.files),
                },
            ),
            OutMessage::Error(e) => serde_json::to_writer(
                out,
                &WireError {
                    failure_reason: e.failure_reason,
                    action: e.action,
                    info_hash: e.info_hash.map(|h| Bin20(h.0)),
                },
            ),
        }
    }
}

/// A server message as a client reads it.
#[derive(Debug)]
pub enum OwnedOutMessage {
    /// Counts after an announce.
    AnnounceResponse(AnnounceResponse),
    /// A relayed offer.
    Offer {
        /// The torrent.
        info_hash: InfoHash,
        /// The offering peer.
        peer_id: PeerId,
        /// The offer's id.
        offer_id: OfferId,
        /// The SDP offer.
        offer: RtcPayload,
    },
    /// A relayed answer.
    Answer {
        /// The torrent.
        info_hash: InfoHash,
        /// The answering peer.
        peer_id: PeerId,
        /// The offer answered.
        offer_id: OfferId,
        /// The SDP answer.
        answer: RtcPayload,
    },
    /// Scrape figures (in the server's map order).
    ScrapeResponse {
        /// Torrent and figures.
        files: Vec<(InfoHash, ScrapeStatistics)>,
    },
    /// A refusal.
    Error {
        /// Why.
        failure_reason: String,
        /// The action refused, if given.
        action: Option<String>,
        /// The torrent, if given.
        info_hash: Option<InfoHash>,
    },
}

impl OwnedOutMessage {
    /// The message in its borrowed form, for [`OutMessage::write`]: a
    /// server that keeps messages (queued for a connection) writes them so.
    pub fn as_out_message(&self) -> OutMessage<'_> {
        match self {
            Self::AnnounceResponse(r) => OutMessage::AnnounceResponse(*r),
            Self::Offer {
                info_hash,
                peer_id,
                offer_id,
                offer,
            } => OutMessage::Offer(OfferMessage {
                info_hash: *info_hash,
                peer_id: *peer_id,
                offer_id: *offer_id,
                offer,
            }),
            Self::Answer {
                info_hash,
                peer_id,
                offer_id,
                answer,
            } => OutMessage::Answer(AnswerMessage {
                info_hash: *info_hash,
                peer_id: *peer_id,
                offer_id: *offer_id,
                answer,
            }),
            Self::ScrapeResponse { files } => OutMessage::ScrapeResponse(ScrapeResponse { files }),
            Self::Error {
                failure_reason,
                action,
                info_hash,
            } => OutMessage::Error(ErrorResponse {
                failure_reason,
                action: action.as_deref(),
                info_hash: *info_hash,
            }),
        }
    }

    /// Parses one server text frame.
    pub fn parse(bytes: &[u8]) -> Result<OwnedOutMessage, ParseError> {
        #[derive(Deserialize)]
        struct WireOut {
            action: Option<String>,
            info_hash: Option<Bin20>,
            peer_id: Option<Bin20>,
            offer_id: Option<Bin20>,
            offer: Option<RtcPayload>,
            answer: Option<RtcPayload>,
            complete: Option<usize>,
            incomplete: Option<usize>,
            interval: Option<u32>,
            files: Option<std::collections::BTreeMap<Bin20, ScrapeStatistics>>,
            #[serde(rename = "failure reason")]
            failure_reason: Option<String>,
        }
        let w: WireOut = serde_json::from_slice(bytes)?;
        let incomplete = || ParseError::IncompleteResponse;
        if let Some(failure_reason) = w.failure_reason {
            return Ok(OwnedOutMessage::Error {
                failure_reason,
                action: w.action,
                info_hash: w.info_hash.map(|h| InfoHash(h.0)),
            });
        }
        if let Some(files) = w.files {
            return Ok(OwnedOutMessage::ScrapeResponse {
                files: files.into_iter().map(|(h, s)| (InfoHash(h.0), s)).collect(),
            });
        }
        let info_hash = InfoHash(w.info_hash.ok_or_else(incomplete)?.0);
        if w.offer.is_some() || w.answer.is_some() {
            let peer_id = PeerId(w.peer_id.ok_or_else(incomplete)?.0);
            let offer_id = OfferId(w.offer_id.ok_or_else(incomplete)?.0);
            return Ok(match (w.offer, w.answer) {
                (Some(offer), _) => OwnedOutMessage::Offer {
                    info_hash,
                    peer_id,
                    offer_id,
                    offer,
                },
                (None, Some(answer)) => OwnedOutMessage::Answer {
                    info_hash,
                    peer_id,
                    offer_id,
                    answer,
                },
                (None, None) => return Err(incomplete()),
            });
        }
        Ok(OwnedOutMessage::AnnounceResponse(AnnounceResponse {
            info_hash,
            complete: w.complete.ok_or_else(incomplete)?,
            incomplete: w.incomplete.ok_or_else(incomplete)?,
            announce_interval: w.interval.ok_or_else(incomplete)?,
        }))
    }
}

#[cfg(test)]
mod tests;
