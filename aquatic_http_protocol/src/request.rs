//! Tracker requests: their types, parsing from a request target
//! (`/announce?…`, `/scrape?…`, and a private tracker's
//! `/<passkey>/announce?…`, `/<passkey>/scrape?…`) and, for clients and
//! tests, writing them back.

use std::fmt;
use std::io::{self, Write};

use aquatic_common::{InfoHash, PeerId};

use crate::error::{Param, RequestError};
use crate::percent::{self, FixedError};

/// What the peer says happened, from the `event` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AnnounceEvent {
    /// `event=started`: the first announce of a download.
    Started,
    /// `event=stopped`: the peer is leaving the swarm.
    Stopped,
    /// `event=completed`: the download just finished.
    Completed,
    /// A regular announce: `event` absent, empty, `empty`, or BEP 21's `paused`
    /// (a paused peer is still a peer; partial seeds are not tracked apart).
    #[default]
    Empty,
}

impl AnnounceEvent {
    /// The query value a client sends, or `None` for [`AnnounceEvent::Empty`]
    /// (which clients express by leaving `event` out).
    pub fn as_query_value(self) -> Option<&'static str> {
        match self {
            AnnounceEvent::Started => Some("started"),
            AnnounceEvent::Stopped => Some("stopped"),
            AnnounceEvent::Completed => Some("completed"),
            AnnounceEvent::Empty => None,
        }
    }
}

/// The opaque `key` a client sends to prove it is the same peer after an
/// address change: 1 to [`PeerKey::MAX_LEN`] bytes, stored inline.
///
/// Real clients send 8 characters (libtorrent, transmission, aria2); a key
/// longer than 32 bytes is refused rather than truncated, so two different
/// keys never compare equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey {
    len: u8,
    // Bytes past `len` are always zero, so the derived `Eq` and `Hash` are right.
    bytes: [u8; PeerKey::MAX_LEN],
}

impl PeerKey {
    /// The longest key accepted.
    pub const MAX_LEN: usize = 32;

    /// A key of these bytes, or `None` when empty or longer than [`PeerKey::MAX_LEN`].
    pub fn new(key: &[u8]) -> Option<Self> {
        if key.is_empty() || key.len() > Self::MAX_LEN {
            return None;
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..key.len()].copy_from_slice(key);
        Some(Self {
            len: key.len() as u8,
            bytes,
        })
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A private tracker member's passkey, the first path segment of
/// `/<passkey>/announce`: exactly [`Passkey::LEN`] ASCII letters and digits,
/// as Gazelle sites issue them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Passkey(pub [u8; Passkey::LEN]);

impl Passkey {
    /// Characters in a passkey.
    pub const LEN: usize = 32;

    /// The passkey spelled by `bytes`, or `None` unless they are exactly
    /// [`Passkey::LEN`] ASCII letters and digits.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; Self::LEN] = bytes.try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(Self(bytes))
    }

    /// The passkey as text (always ASCII).
    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics get in (see `new`); the fallback is
        // never taken but keeps this free of a panic path.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Passkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Passkeys are credentials: logs get a prefix only.
        write!(
            f,
            "Passkey({}…)",
            &self.as_str()[..4.min(self.as_str().len())]
        )
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A BEP 3 announce: a peer reports its state and asks for other peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The announcing peer.
    pub peer_id: PeerId,
    /// The port the peer listens on. Port 0 is passed through: whether to
    /// hand such a peer out is the server's decision.
    pub port: u16,
    /// `uploaded`, 0 when absent; values above `u64::MAX` saturate.
    pub bytes_uploaded: u64,
    /// `downloaded`, 0 when absent; values above `u64::MAX` saturate.
    pub bytes_downloaded: u64,
    /// `left`: `None` when absent (magnet clients before they have the
    /// metadata). A value above `u64::MAX` saturates to `u64::MAX`: it
    /// still means "not a seeder", which is all the tracker needs from it.
    pub bytes_left: Option<u64>,
    /// `event`.
    pub event: AnnounceEvent,
    /// `numwant`: `None` when absent or negative (some clients send -1 for
    /// "the default"); values above `usize::MAX` saturate.
    pub numwant: Option<usize>,
    /// `key`, `None` when absent or empty.
    pub key: Option<PeerKey>,
    /// `compact=1`. Absent or `compact=0` means the BEP 3 list of
    /// dictionaries; see the crate docs for why.
    pub compact: bool,
    /// `no_peer_id=1`: leave `peer id` out of non-compact peer dictionaries.
    pub no_peer_id: bool,
    /// The passkey of `/<passkey>/announce`; `None` for `/announce`.
    pub passkey: Option<Passkey>,
}

/// A BEP 48 scrape of one or more torrents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeRequest {
    /// The torrents, in query order, duplicates kept; never empty and at
    /// most [`ParseLimits::max_scrape_torrents`](crate::ParseLimits::max_scrape_torrents)
    /// long when parsed.
    pub info_hashes: Vec<InfoHash>,
    /// The passkey of `/<passkey>/scrape`; `None` for `/scrape`.
    pub passkey: Option<Passkey>,
}

/// A tracker request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET /announce?…`
    Announce(AnnounceRequest),
    /// `GET /scrape?…`
    Scrape(ScrapeRequest),
}

impl Request {
    /// Parses a request target such as `/announce?info_hash=…`.
    ///
    /// [`parse_request`](crate::parse_request) calls this after the HTTP
    /// head is complete; it is public for servers that parse HTTP elsewhere.
    pub fn parse_target(target: &[u8], max_scrape_torrents: usize) -> Result<Self, RequestError> {
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(i) => (&target[..i], &target[i + 1..]),
            None => (target, &[][..]),
        };
        let (passkey, path) = split_passkey(path)?;
        match path {
            b"/announce" => {
                parse_announce(query).map(|r| Request::Announce(AnnounceRequest { passkey, ..r }))
            }
            b"/scrape" => parse_scrape(query, max_scrape_torrents)
                .map(|r| Request::Scrape(ScrapeRequest { passkey, ..r })),
            _ => Err(RequestError::UnknownPath),
        }
    }

    /// Writes the request target, e.g. `/announce?info_hash=…&port=6881…`
    /// (`/<passkey>/announce?…` when the request carries a passkey).
    pub fn write_target(&self, w: &mut impl Write) -> io::Result<()> {
        let passkey = match self {
            Request::Announce(r) => r.passkey,
            Request::Scrape(r) => r.passkey,
        };
        if let Some(passkey) = passkey {
            write!(w, "/{}", passkey.as_str())?;
        }
        match self {
            Request::Announce(r) => {
                w.write_all(b"/announce?")?;
                r.write_query(w)
            }
            Request::Scrape(r) => {
                w.write_all(b"/scrape")?;
                if !r.info_hashes.is_empty() {
                    w.write_all(b"?")?;
                }
                r.write_query(w)
            }
        }
    }

    /// Writes a whole HTTP/1.1 `GET` request as a client would send it:
    /// request line, `Host`, `Connection: close` unless `keep_alive`, and
    /// the blank line.
    pub fn write_http_get(
        &self,
        w: &mut impl Write,
        host: &str,
        keep_alive: bool,
    ) -> io::Result<()> {
        w.write_all(b"GET ")?;
        self.write_target(w)?;
        write!(w, " HTTP/1.1\r\nHost: {host}\r\n")?;
        if !keep_alive {
            w.write_all(b"Connection: close\r\n")?;
        }
        w.write_all(b"\r\n")
    }
}

impl AnnounceRequest {
    /// Writes the query string (without `?`), percent-encoding binary values.
    ///
    /// `compact` is always written (`compact=1` or `compact=0`); `left`,
    /// `event`, `numwant`, `key` and `no_peer_id` only when set.
    pub fn write_query(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(b"info_hash=")?;
        percent::encode(w, &self.info_hash.0)?;
        w.write_all(b"&peer_id=")?;
        percent::encode(w, &self.peer_id.0)?;
        write!(
            w,
            "&port={}&uploaded={}&downloaded={}",
            self.port, self.bytes_uploaded, self.bytes_downloaded
        )?;
        if let Some(left) = self.bytes_left {
            write!(w, "&left={left}")?;
        }
        if let Some(event) = self.event.as_query_value() {
            write!(w, "&event={event}")?;
        }
        if let Some(numwant) = self.numwant {
            write!(w, "&numwant={numwant}")?;
        }
        if let Some(key) = &self.key {
            w.write_all(b"&key=")?;
            percent::encode(w, key.as_bytes())?;
        }
        write!(w, "&compact={}", u8::from(self.compact))?;
        if self.no_peer_id {
            w.write_all(b"&no_peer_id=1")?;
        }
        Ok(())
    }
}

impl ScrapeRequest {
    /// Writes the query string (without `?`): one `info_hash` per torrent.
    pub fn write_query(&self, w: &mut impl Write) -> io::Result<()> {
        for (i, info_hash) in self.info_hashes.iter().enumerate() {
            if i > 0 {
                w.write_all(b"&")?;
            }
            w.write_all(b"info_hash=")?;
            percent::encode(w, &info_hash.0)?;
        }
        Ok(())
    }
}

/// Splits `/<passkey>/rest` into the passkey and `/rest`; a path of one
/// segment has no passkey. A first segment of two or more that is not a
/// passkey is refused as one, so a mistyped passkey says so instead of
/// "unknown path".
fn split_passkey(path: &[u8]) -> Result<(Option<Passkey>, &[u8]), RequestError> {
    let Some(rest) = path.strip_prefix(b"/") else {
        return Ok((None, path));
    };
    match rest.iter().position(|&b| b == b'/') {
        None => Ok((None, path)),
        Some(i) => {
            let tail = &rest[i..];
            if tail != b"/announce" && tail != b"/scrape" {
                return Err(RequestError::UnknownPath);
            }
            let passkey = Passkey::new(&rest[..i]).ok_or(RequestError::InvalidPasskey)?;
            Ok((Some(passkey), tail))
        }
    }
}

/// `key=value` pairs of a query; a pair without `=` has an empty value.
fn pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        })
}

/// `info_hash` or `peer_id`: percent-decoded to exactly 20 bytes.
fn id20(value: &[u8], param: Param) -> Result<[u8; 20], RequestError> {
    percent::decode_exact::<20>(value).map_err(|e| match e {
        FixedError::Percent => RequestError::InvalidPercentEncoding(param),
        FixedError::Length => RequestError::WrongLength(param),
    })
}

/// A non-negative decimal integer, saturating at `u64::MAX`.
fn saturating_u64(value: &[u8], param: Param) -> Result<u64, RequestError> {
    let mut n: u64 = 0;
    let mut digits = 0usize;
    for b in percent::decode(value, true) {
        let b = b.map_err(|_| RequestError::InvalidPercentEncoding(param))?;
        if !b.is_ascii_digit() {
            return Err(RequestError::InvalidParameter(param));
        }
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        digits += 1;
    }
    if digits == 0 {
        return Err(RequestError::InvalidParameter(param));
    }
    Ok(n)
}

/// A short text value (event name, flag), percent- and `+`-decoded.
fn short_text<'b>(
    value: &[u8],
    param: Param,
    buf: &'b mut [u8; 16],
) -> Result<&'b [u8], RequestError> {
    match percent::decode_into(value, true, buf) {
        Ok(n) => Ok(&buf[..n]),
        Err(FixedError::Percent) => Err(RequestError::InvalidPercentEncoding(param)),
        Err(FixedError::Length) => Err(RequestError::InvalidParameter(param)),
    }
}

fn flag(value: &[u8], param: Param) -> Result<bool, RequestError> {
    match short_text(value, param, &mut [0; 16])? {
        b"1" => Ok(true),
        b"0" => Ok(false),
        _ => Err(RequestError::InvalidParameter(param)),
    }
}

fn parse_announce(query: &[u8]) -> Result<AnnounceRequest, RequestError> {
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut bytes_uploaded = 0;
    let mut bytes_downloaded = 0;
    let mut bytes_left = None;
    let mut event = AnnounceEvent::Empty;
    let mut numwant = None;
    let mut key = None;
    let mut compact = false;
    let mut no_peer_id = false;

    // A repeated parameter: the last one wins. Unknown parameters
    // (`corrupt`, `supportcrypto`, `redundant`, `ip`, …) are ignored.
    for (name, value) in pairs(query) {
        match name {
            b"info_hash" => info_hash = Some(InfoHash(id20(value, Param::InfoHash)?)),
            b"peer_id" => peer_id = Some(PeerId(id20(value, Param::PeerId)?)),
            b"port" => {
                let n = saturating_u64(value, Param::Port)?;
                port = Some(
                    u16::try_from(n).map_err(|_| RequestError::InvalidParameter(Param::Port))?,
                );
            }
            b"uploaded" => bytes_uploaded = saturating_u64(value, Param::Uploaded)?,
            b"downloaded" => bytes_downloaded = saturating_u64(value, Param::Downloaded)?,
            b"left" => bytes_left = Some(saturating_u64(value, Param::Left)?),
            b"event" => {
                event = match short_text(value, Param::Event, &mut [0; 16])? {
                    b"started" => AnnounceEvent::Started,
                    b"stopped" => AnnounceEvent::Stopped,
                    b"completed" => AnnounceEvent::Completed,
                    b"" | b"empty" | b"paused" => AnnounceEvent::Empty,
                    _ => return Err(RequestError::InvalidParameter(Param::Event)),
                }
            }
            b"numwant" => {
                numwant = match value.strip_prefix(b"-") {
                    Some(negative) => {
                        saturating_u64(negative, Param::Numwant)?;
                        None
                    }
                    None => {
                        let n = saturating_u64(value, Param::Numwant)?;
                        Some(usize::try_from(n).unwrap_or(usize::MAX))
                    }
                }
            }
            b"key" => {
                let mut buf = [0u8; PeerKey::MAX_LEN];
                let n = percent::decode_into(value, false, &mut buf).map_err(|e| match e {
                    FixedError::Percent => RequestError::InvalidPercentEncoding(Param::Key),
                    FixedError::Length => RequestError::InvalidParameter(Param::Key),
                })?;
                key = PeerKey::new(&buf[..n]);
            }
            b"compact" => compact = flag(value, Param::Compact)?,
            b"no_peer_id" => no_peer_id = flag(value, Param::NoPeerId)?,
            _ => {}
        }
    }

    Ok(AnnounceRequest {
        info_hash: info_hash.ok_or(RequestError::MissingParameter(Param::InfoHash))?,
        peer_id: peer_id.ok_or(RequestError::MissingParameter(Param::PeerId))?,
        port: port.ok_or(RequestError::MissingParameter(Param::Port))?,
        bytes_uploaded,
        bytes_downloaded,
        bytes_left,
        event,
        numwant,
        key,
        compact,
        no_peer_id,
        passkey: None,
    })
}

fn parse_scrape(query: &[u8], max_scrape_torrents: usize) -> Result<ScrapeRequest, RequestError> {
    let mut info_hashes = Vec::new();
    for (name, value) in pairs(query) {
        if name == b"info_hash" {
            if info_hashes.len() >= max_scrape_torrents {
                return Err(RequestError::TooManyInfoHashes);
            }
            info_hashes.push(InfoHash(id20(value, Param::InfoHash)?));
        }
    }
    if info_hashes.is_empty() {
        return Err(RequestError::FullScrapeNotSupported);
    }
    Ok(ScrapeRequest {
        info_hashes,
        passkey: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(query: &str) -> Result<Request, RequestError> {
        Request::parse_target(query.as_bytes(), 10)
    }

    fn announce(query: &str) -> Result<AnnounceRequest, RequestError> {
        match target(&format!("/announce?{query}"))? {
            Request::Announce(r) => Ok(r),
            other => panic!("not an announce: {other:?}"),
        }
    }

    const BASE: &str = "info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1";

    #[test]
    fn minimal_announce_defaults() {
        let r = announce(BASE).expect("valid");
        assert_eq!(
            r,
            AnnounceRequest {
                info_hash: InfoHash([b'a'; 20]),
                peer_id: PeerId([b'b'; 20]),
                port: 1,
                bytes_uploaded: 0,
                bytes_downloaded: 0,
                bytes_left: None,
                event: AnnounceEvent::Empty,
                numwant: None,
                key: None,
                compact: false,
                no_peer_id: false,
                passkey: None,
            }
        );
    }

    #[test]
    fn compact_values() {
        assert!(
            announce(&format!("{BASE}&compact=1"))
                .expect("valid")
                .compact
        );
        assert!(
            !announce(&format!("{BASE}&compact=0"))
                .expect("valid")
                .compact
        );
        assert!(!announce(BASE).expect("valid").compact);
        assert_eq!(
            announce(&format!("{BASE}&compact=yes")),
            Err(RequestError::InvalidParameter(Param::Compact))
        );
    }

    #[test]
    fn events() {
        for (value, event) in [
            ("started", AnnounceEvent::Started),
            ("stopped", AnnounceEvent::Stopped),
            ("completed", AnnounceEvent::Completed),
            ("", AnnounceEvent::Empty),
            ("empty", AnnounceEvent::Empty),
            ("paused", AnnounceEvent::Empty),
        ] {
            let r = announce(&format!("{BASE}&event={value}")).expect("valid");
            assert_eq!(r.event, event, "{value}");
        }
        assert_eq!(
            announce(&format!("{BASE}&event=finished")),
            Err(RequestError::InvalidParameter(Param::Event))
        );
        assert_eq!(
            announce(&format!("{BASE}&event=startedstartedstarted")),
            Err(RequestError::InvalidParameter(Param::Event))
        );
    }

    #[test]
    fn numbers() {
        let r = announce(&format!(
            "{BASE}&uploaded=5&downloaded=6&left=99999999999999999999999&numwant=-1"
        ))
        .expect("valid");
        assert_eq!(r.bytes_uploaded, 5);
        assert_eq!(r.bytes_downloaded, 6);
        assert_eq!(r.bytes_left, Some(u64::MAX));
        assert_eq!(r.numwant, None);
        assert_eq!(
            announce(&format!("{BASE}&left=-1")),
            Err(RequestError::InvalidParameter(Param::Left))
        );
        assert_eq!(
            announce(&format!("{BASE}&uploaded=")),
            Err(RequestError::InvalidParameter(Param::Uploaded))
        );
        assert_eq!(
            announce(&format!("{BASE}&numwant=-x")),
            Err(RequestError::InvalidParameter(Param::Numwant))
        );
    }

    #[test]
    fn port_rules() {
        assert_eq!(
            announce("info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb"),
            Err(RequestError::MissingParameter(Param::Port))
        );
        assert_eq!(
            announce(&format!("{BASE}0000000")),
            Err(RequestError::InvalidParameter(Param::Port))
        );
        assert_eq!(
            announce(&format!("{BASE}&port=65535")).expect("valid").port,
            65535
        );
    }

    #[test]
    fn id_errors() {
        assert_eq!(
            announce("info_hash=short&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1"),
            Err(RequestError::WrongLength(Param::InfoHash))
        );
        assert_eq!(
            announce("info_hash=aaaaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1"),
            Err(RequestError::WrongLength(Param::InfoHash))
        );
        assert_eq!(
            announce("info_hash=aaaaaaaaaaaaaaaaaaa%g1&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1"),
            Err(RequestError::InvalidPercentEncoding(Param::InfoHash))
        );
        assert_eq!(
            announce("info_hash=aaaaaaaaaaaaaaaaaaaa&peer_id=%&port=1"),
            Err(RequestError::InvalidPercentEncoding(Param::PeerId))
        );
        assert_eq!(
            announce("peer_id=bbbbbbbbbbbbbbbbbbbb&port=1"),
            Err(RequestError::MissingParameter(Param::InfoHash))
        );
        assert_eq!(
            announce("info_hash=aaaaaaaaaaaaaaaaaaaa&port=1"),
            Err(RequestError::MissingParameter(Param::PeerId))
        );
    }

    #[test]
    fn plus_is_a_byte_in_hashes() {
        let r = announce("info_hash=+aaaaaaaaaaaaaaaaaaa&peer_id=bbbbbbbbbbbbbbbbbbbb&port=1")
            .expect("valid");
        assert_eq!(r.info_hash.0[0], b'+');
    }

    #[test]
    fn keys() {
        let r = announce(&format!("{BASE}&key=ABCD1234")).expect("valid");
        assert_eq!(
            r.key.map(|k| k.as_bytes().to_vec()),
            Some(b"ABCD1234".to_vec())
        );
        assert_eq!(announce(&format!("{BASE}&key=")).expect("valid").key, None);
        let long = "k".repeat(33);
        assert_eq!(
            announce(&format!("{BASE}&key={long}")),
            Err(RequestError::InvalidParameter(Param::Key))
        );
    }

    #[test]
    fn paths() {
        assert_eq!(target("/"), Err(RequestError::UnknownPath));
        assert_eq!(target("/announce.php?x"), Err(RequestError::UnknownPath));
        assert_eq!(target("/scrape"), Err(RequestError::FullScrapeNotSupported));
        assert_eq!(
            target("/scrape?"),
            Err(RequestError::FullScrapeNotSupported)
        );
        assert_eq!(
            target("/announce"),
            Err(RequestError::MissingParameter(Param::InfoHash))
        );
    }

    #[test]
    fn full_scrape_failure_reason() {
        let e = target("/scrape?foo=bar").expect_err("full scrape");
        assert_eq!(e.failure_reason(), "full scrapes are not supported");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn multi_scrape() {
        let r =
            target("/scrape?info_hash=aaaaaaaaaaaaaaaaaaaa&x=1&info_hash=%01bbbbbbbbbbbbbbbbbbb");
        let mut second = [b'b'; 20];
        second[0] = 1;
        assert_eq!(
            r,
            Ok(Request::Scrape(ScrapeRequest {
                info_hashes: vec![InfoHash([b'a'; 20]), InfoHash(second)],
                passkey: None,
            }))
        );
        let many = "&info_hash=aaaaaaaaaaaaaaaaaaaa".repeat(11);
        assert_eq!(
            target(&format!("/scrape?{many}")),
            Err(RequestError::TooManyInfoHashes)
        );
    }

    pub(crate) fn arb_announce() -> impl Strategy<Value = AnnounceRequest> {
        (
            (any::<[u8; 20]>(), any::<[u8; 20]>(), any::<u16>()),
            (any::<u64>(), any::<u64>(), any::<Option<u64>>()),
            prop_oneof![
                Just(AnnounceEvent::Started),
                Just(AnnounceEvent::Stopped),
                Just(AnnounceEvent::Completed),
                Just(AnnounceEvent::Empty),
            ],
            any::<Option<usize>>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=PeerKey::MAX_LEN)),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |((ih, pid, port), (up, down, left), event, numwant, key, compact, no_peer_id)| {
                    AnnounceRequest {
                        info_hash: InfoHash(ih),
                        peer_id: PeerId(pid),
                        port,
                        bytes_uploaded: up,
                        bytes_downloaded: down,
                        bytes_left: left,
                        event,
                        numwant,
                        key: key.and_then(|k| PeerKey::new(&k)),
                        compact,
                        no_peer_id,
                        passkey: None,
                    }
                },
            )
    }

    pub(crate) fn arb_request(max_scrape: usize) -> impl Strategy<Value = Request> {
        prop_oneof![
            arb_announce().prop_map(Request::Announce),
            proptest::collection::vec(any::<[u8; 20]>().prop_map(InfoHash), 1..=max_scrape)
                .prop_map(|info_hashes| Request::Scrape(ScrapeRequest {
                    info_hashes,
                    passkey: None
                })),
        ]
    }

    /// A request with or without a passkey.
    pub(crate) fn arb_private_request(max_scrape: usize) -> impl Strategy<Value = Request> {
        let passkey = proptest::option::of("[a-zA-Z0-9]{32}")
            .prop_map(|p| p.and_then(|p| Passkey::new(p.as_bytes())));
        (arb_request(max_scrape), passkey).prop_map(|(request, passkey)| match request {
            Request::Announce(r) => Request::Announce(AnnounceRequest { passkey, ..r }),
            Request::Scrape(r) => Request::Scrape(ScrapeRequest { passkey, ..r }),
        })
    }

    const PASSKEY: &str = "0123456789abcdefABCDEF0123456789";

    #[test]
    fn passkey_paths() {
        let passkey = Passkey::new(PASSKEY.as_bytes());
        assert!(passkey.is_some());
        match target(&format!("/{PASSKEY}/announce?{BASE}")) {
            Ok(Request::Announce(r)) => assert_eq!(r.passkey, passkey),
            other => panic!("not an announce: {other:?}"),
        }
        match target(&format!("/{PASSKEY}/scrape?info_hash=aaaaaaaaaaaaaaaaaaaa")) {
            Ok(Request::Scrape(r)) => assert_eq!(r.passkey, passkey),
            other => panic!("not a scrape: {other:?}"),
        }
        assert_eq!(announce(BASE).expect("public").passkey, None);
        for bad in [
            format!("/{}/announce?{BASE}", &PASSKEY[..31]),
            format!("/{PASSKEY}0/announce?{BASE}"),
            format!("/{}%41/announce?{BASE}", &PASSKEY[..29]),
            format!("//announce?{BASE}"),
            format!("/{}-/announce?{BASE}", &PASSKEY[..31]),
        ] {
            assert_eq!(target(&bad), Err(RequestError::InvalidPasskey), "{bad}");
        }
        assert_eq!(
            target(&format!("/{PASSKEY}/other?{BASE}")),
            Err(RequestError::UnknownPath)
        );
        assert_eq!(
            target(&format!("/{PASSKEY}/x/announce?{BASE}")),
            Err(RequestError::UnknownPath)
        );
        let debug = format!("{:?}", passkey);
        assert!(
            !debug.contains(PASSKEY),
            "a passkey is not logged whole: {debug}"
        );
    }

    proptest! {
        #[test]
        fn target_round_trip(request in arb_private_request(10)) {
            let mut buf = Vec::new();
            request.write_target(&mut buf).expect("vec write");
            prop_assert_eq!(Request::parse_target(&buf, 10), Ok(request));
        }

        #[test]
        fn target_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::parse_target(&bytes, 10);
            let mut prefixed = b"/announce?".to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = Request::parse_target(&prefixed, 10);
        }
    }
}
