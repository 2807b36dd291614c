//! A TLS server stream over rustls' unbuffered API, for idle WebSocket connections.
//!
//! futures-rustls wraps rustls' buffered `ServerConnection`, which keeps a
//! 4 KiB receive buffer (its deframer) allocated between reads for the
//! whole life of a connection, and the connection itself (about 1.2 KiB)
//! inline in the stream, so in the connection task's future. A WebTorrent
//! tracker holds many idle connections, and that was most of what a WSS
//! connection cost over a plain one.
//!
//! Here the caller owns the buffers ([`rustls::server::UnbufferedServerConnection`]):
//!
//! - `incoming` holds received TLS bytes only while a record is incomplete
//!   (a record split across reads); once every complete record is
//!   processed and nothing is left, it is freed. Reads from the socket go
//!   through a buffer on the stack of the poll call. Its size is bounded by
//!   rustls: a record longer than TLS allows, or a handshake message over
//!   64 KiB (whose fragments stay here until it is whole), is an error.
//! - `outgoing` holds encrypted bytes only until the socket took them.
//! - `plaintext` holds the rest of a decrypted record that the reader has
//!   not asked for yet (tungstenite reads in small pieces).
//! - the rustls connection is boxed, so the stream is a few words plus the
//!   socket.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::{
    server::UnbufferedServerConnection,
    unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus},
    ServerConfig,
};

/// Bytes read from the socket per read call (on the stack of the call).
const SOCKET_READ: usize = 4096;
/// At most this many plaintext bytes are encrypted per write call.
const MAX_WRITE: usize = 64 * 1024;

/// A server-side TLS stream whose buffers exist only while bytes are in flight.
pub(super) struct TlsStream<S> {
    io: S,
    conn: Box<UnbufferedServerConnection>,
    /// Received TLS bytes not processed yet: an incomplete record.
    incoming: Vec<u8>,
    /// Encrypted bytes the socket has not taken yet, from `outgoing_sent` on.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// Decrypted bytes the reader has not taken yet, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// The client sent close_notify: no more application data.
    peer_closed: bool,
    /// The socket reached its end.
    eof: bool,
    /// We queued our close_notify.
    close_sent: bool,
}

/// What a call wants from the TLS state machine once the received records
/// are processed.
enum Want<'d> {
    /// Nothing more (reading, or the handshake).
    Progress,
    /// Encrypt these bytes.
    Write(&'d [u8]),
    /// Queue close_notify.
    Close,
}

/// Where processing the received records stopped.
enum Reached {
    /// The handshake needs more bytes from the client.
    NeedData,
    /// Application data may flow (and `Want::Write`/`Want::Close` was done).
    Ready,
    /// Both sides sent close_notify.
    Closed,
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// Accepts a TLS connection on `io`: runs the whole handshake.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: Arc<ServerConfig>,
) -> io::Result<TlsStream<S>> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        io,
        conn: Box::new(conn),
        incoming: Vec::new(),
        outgoing: Vec::new(),
        outgoing_sent: 0,
        plaintext: Vec::new(),
        plaintext_read: 0,
        peer_closed: false,
        eof: false,
        close_sent: false,
    };
    futures_lite::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl<S> TlsStream<S> {
    /// Processes every complete record in `incoming`, encodes what rustls
    /// wants sent into `outgoing`, and then does `want` if data may flow.
    fn drive(&mut self, want: Want<'_>) -> io::Result<Reached> {
        let Self {
            conn,
            incoming,
            outgoing,
            plaintext,
            peer_closed,
            close_sent,
            ..
        } = self;
        let mut want = Some(want);
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
            let reached = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::ReadEarlyData(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(outgoing, |buf| match encode.encode(buf) {
                        Ok(n) => Ok(Ok(n)),
                        Err(EncodeError::InsufficientSize(e)) => Ok(Err(e.required_size)),
                        Err(err) => Err(io::Error::other(err)),
                    })?;
                    None
                }
                // Sent when the caller flushes `outgoing`, before it waits
                // for the client's answer; they are never sent twice.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Reached::NeedData),
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Reached::Closed),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match want.take() {
                        Some(Want::Write(data)) => {
                            append(outgoing, |buf| encrypted(traffic.encrypt(data, buf)))?
                        }
                        Some(Want::Close) => {
                            append(outgoing, |buf| encrypted(traffic.queue_close_notify(buf)))?;
                            *close_sent = true;
                        }
                        Some(Want::Progress) | None => {}
                    }
                    Some(Reached::Ready)
                }
                state => {
                    return Err(io::Error::other(format!("unexpected TLS state {state:?}")));
                }
            };
            if discard > 0 {
                incoming.drain(..discard);
            }
            if incoming.is_empty() && incoming.capacity() > 0 {
                *incoming = Vec::new();
            }
            if let Some(reached) = reached {
                return Ok(reached);
            }
        }
    }

    fn has_plaintext(&self) -> bool {
        self.plaintext_read < self.plaintext.len()
    }
}

/// Runs `encode` on room at the end of `out`, growing it to the size
/// rustls asks for. `encode` answers Ok(Ok(written)) or
/// Ok(Err(required size)).
fn append(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> io::Result<Result<usize, usize>>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = 0;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(Ok(written)) => {
                out.truncate(start + written);
                return Ok(());
            }
            Ok(Err(required)) if required > room => room = required,
            Ok(Err(required)) => {
                out.truncate(start);
                return Err(io::Error::other(format!(
                    "rustls asked for {required} bytes of room and had {room}"
                )));
            }
            Err(err) => {
                out.truncate(start);
                return Err(err);
            }
        }
    }
}

fn encrypted(result: Result<usize, EncryptError>) -> io::Result<Result<usize, usize>> {
    match result {
        Ok(n) => Ok(Ok(n)),
        Err(EncryptError::InsufficientSize(e)) => Ok(Err(e.required_size)),
        Err(err) => Err(io::Error::other(err)),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Writes `outgoing` to the socket until it is empty (then frees it).
    fn poll_send_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_sent < self.outgoing.len() {
            let n = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.outgoing_sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.outgoing_sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into `incoming`; Ok(false) at its end.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.eof {
            return Poll::Ready(Ok(false));
        }
        let mut buf = [0u8; SOCKET_READ];
        let n = ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        if n == 0 {
            self.eof = true;
            return Poll::Ready(Ok(false));
        }
        self.incoming.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(true))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let reached = self.drive(Want::Progress)?;
            ready!(self.poll_send_outgoing(cx))?;
            match reached {
                Reached::Ready => return Poll::Ready(Ok(())),
                Reached::NeedData => {
                    if !ready!(self.poll_receive(cx))? {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Reached::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.has_plaintext() {
                let available = &this.plaintext[this.plaintext_read..];
                let n = available.len().min(buf.len());
                buf[..n].copy_from_slice(&available[..n]);
                this.plaintext_read += n;
                if !this.has_plaintext() {
                    this.plaintext = Vec::new();
                    this.plaintext_read = 0;
                }
                return Poll::Ready(Ok(n));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(0));
            }
            let reached = this.drive(Want::Progress)?;
            // Alerts, tickets or key updates rustls wants sent go first.
            ready!(this.poll_send_outgoing(cx))?;
            if this.has_plaintext() || this.peer_closed {
                continue;
            }
            match reached {
                Reached::Closed => return Poll::Ready(Ok(0)),
                Reached::Ready | Reached::NeedData => {
                    if !ready!(this.poll_receive(cx))? {
                        return Poll::Ready(if this.incoming.is_empty() {
                            Ok(0)
                        } else {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        });
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // What is already encrypted goes first: a slow client holds back
        // its writer instead of growing `outgoing`.
        ready!(this.poll_send_outgoing(cx))?;
        let data = &data[..data.len().min(MAX_WRITE)];
        match this.drive(Want::Write(data))? {
            Reached::Ready => {}
            Reached::NeedData => {
                return Poll::Ready(Err(io::Error::other("TLS handshake not complete")));
            }
            Reached::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        // Start sending; what the socket does not take now goes on the
        // next write or flush.
        if let Poll::Ready(Err(err)) = this.poll_send_outgoing(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.poll_send_outgoing(cx))?;
            match this.drive(Want::Close)? {
                Reached::Ready if this.close_sent => {}
                // No session to close cleanly: just close the socket.
                _ => this.close_sent = true,
            }
        }
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        collections::VecDeque,
        future::Future,
        io::{Read, Write},
        rc::Rc,
    };

    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use rustls::{pki_types::ServerName, ClientConfig, ClientConnection, RootCertStore};

    use super::*;

    /// The bytes between the test's client and the stream under test.
    #[derive(Default)]
    struct Wire {
        to_server: VecDeque<u8>,
        to_client: Vec<u8>,
        /// At most this many bytes per socket read and write, so records
        /// are split across reads.
        chunk: usize,
        /// How many bytes of `to_server` the socket may hand out now.
        allowed: usize,
        client_closed: bool,
        server_closed: bool,
    }

    struct Socket(Rc<RefCell<Wire>>);

    impl AsyncRead for Socket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut wire = self.0.borrow_mut();
            let n = wire
                .to_server
                .len()
                .min(wire.chunk)
                .min(wire.allowed)
                .min(buf.len());
            if n == 0 {
                // The harness polls again after every pump.
                return match wire.client_closed && wire.to_server.is_empty() {
                    true => Poll::Ready(Ok(0)),
                    false => Poll::Pending,
                };
            }
            for (slot, byte) in buf.iter_mut().zip(wire.to_server.drain(..n)) {
                *slot = byte;
            }
            wire.allowed -= n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut wire = self.0.borrow_mut();
            let n = data.len().min(wire.chunk);
            wire.to_client.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.borrow_mut().server_closed = true;
            Poll::Ready(Ok(()))
        }
    }

    /// A rustls client on one end of a [`Wire`], and the server config.
    struct Harness {
        wire: Rc<RefCell<Wire>>,
        client: ClientConnection,
        server: Arc<ServerConfig>,
        /// Plaintext the client received.
        received: Vec<u8>,
    }

    impl Harness {
        fn new(chunk: usize) -> Self {
            Self::with_versions(chunk, rustls::DEFAULT_VERSIONS)
        }

        /// With a client that offers only `versions`.
        fn with_versions(
            chunk: usize,
            versions: &[&'static rustls::SupportedProtocolVersion],
        ) -> Self {
            Self::with_client(chunk, versions, None)
        }

        /// The server on the WSS provider (raw keys between records); the
        /// client on ring's stock provider, offering only `versions` and,
        /// when given, only `suite`.
        fn with_client(
            chunk: usize,
            versions: &[&'static rustls::SupportedProtocolVersion],
            suite: Option<rustls::SupportedCipherSuite>,
        ) -> Self {
            let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .expect("certificate");
            let cert = certified.cert.der().clone();
            let key =
                rustls::pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der())
                    .expect("key");
            let server = ServerConfig::builder_with_provider(super::super::lazy_aead::provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key)
                .expect("server config");
            let mut roots = RootCertStore::empty();
            roots.add(cert).expect("root");
            let mut provider = rustls::crypto::ring::default_provider();
            if let Some(suite) = suite {
                provider.cipher_suites = vec![suite];
            }
            let client = ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(versions)
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = ServerName::try_from("localhost").expect("name");
            let client = ClientConnection::new(Arc::new(client), name).expect("client");
            let wire = Wire {
                chunk,
                allowed: usize::MAX,
                ..Wire::default()
            };
            Self {
                wire: Rc::new(RefCell::new(wire)),
                client,
                server: Arc::new(server),
                received: Vec::new(),
            }
        }

        fn socket(&self) -> Socket {
            Socket(self.wire.clone())
        }

        /// Moves the client's TLS bytes onto the wire and the server's to
        /// the client.
        fn pump(&mut self) {
            let mut bytes = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut bytes).expect("client write_tls");
            }
            self.wire.borrow_mut().to_server.extend(bytes);
            let bytes = std::mem::take(&mut self.wire.borrow_mut().to_client);
            let mut bytes = &bytes[..];
            while !bytes.is_empty() {
                self.client.read_tls(&mut bytes).expect("client read_tls");
                self.client.process_new_packets().expect("client TLS state");
                self.client_reads();
            }
        }

        fn client_reads(&mut self) {
            let mut buf = [0u8; 4096];
            loop {
                match self.client.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => self.received.extend_from_slice(&buf[..n]),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => panic!("client read: {err}"),
                }
            }
        }

        /// Polls `future` and pumps until it completes.
        fn run<T>(&mut self, future: impl Future<Output = T>) -> T {
            let mut future = Box::pin(future);
            for _ in 0..100_000 {
                if let Some(out) =
                    futures_lite::future::block_on(futures_lite::future::poll_once(&mut future))
                {
                    self.pump();
                    return out;
                }
                self.pump();
            }
            panic!("the stream made no progress");
        }

        fn accept(&mut self) -> TlsStream<Socket> {
            let accepting = accept(self.socket(), self.server.clone());
            self.run(accepting).expect("handshake")
        }

        fn client_sends(&mut self, data: &[u8]) {
            self.client.writer().write_all(data).expect("client write");
            self.pump();
        }
    }

    /// What a stream keeps allocated besides the rustls connection.
    fn buffered(stream: &TlsStream<Socket>) -> usize {
        stream.incoming.capacity() + stream.outgoing.capacity() + stream.plaintext.capacity()
    }

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn read_exactly(
        mut stream: TlsStream<Socket>,
        len: usize,
        piece: usize,
    ) -> (TlsStream<Socket>, Vec<u8>) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; piece];
        while got.len() < len {
            let n = stream.read(&mut buf).await.expect("server read");
            assert_ne!(n, 0, "end of stream after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        (stream, got)
    }

    #[test]
    fn a_large_message_split_across_reads_and_records_arrives_whole_both_ways() {
        // 7-byte socket reads and writes: every record arrives in pieces.
        large_messages_both_ways(Harness::new(7));
    }

    #[test]
    fn tls_1_2_carries_messages_too() {
        let harness =
            large_messages_both_ways(Harness::with_versions(7, &[&rustls::version::TLS12]));
        assert_eq!(
            harness.client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
    }

    /// Each TLS 1.3 suite, ring's stock client against the server's raw-key
    /// AEAD (net::lazy_aead), and again after the client updates its keys
    /// and asks the server to update its own (KeyUpdate, both directions).
    #[test]
    fn every_tls_1_3_suite_carries_messages_and_survives_a_key_update() {
        use rustls::crypto::ring::cipher_suite;
        for suite in [
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let mut harness = Harness::with_client(7, &[&rustls::version::TLS13], Some(suite));
            let stream = harness.accept();
            assert_eq!(
                harness.client.negotiated_cipher_suite().map(|s| s.suite()),
                Some(suite.suite())
            );
            let sent = message(40_000);
            harness.client_sends(&sent);
            let (mut stream, got) = harness.run(read_exactly(stream, sent.len(), 1000));
            assert!(got == sent, "the server read other bytes");
            let reply = message(50_000);
            harness.run(async {
                stream.write_all(&reply).await.expect("write");
                stream.flush().await.expect("flush");
            });
            assert!(harness.received == reply, "the client read other bytes");

            harness.received.clear();
            harness.client.refresh_traffic_keys().expect("key update");
            harness.client_sends(b"after the update");
            let (mut stream, got) = harness.run(read_exactly(stream, 16, 64));
            assert_eq!(got, b"after the update");
            harness.run(async {
                stream.write_all(b"updated too").await.expect("write");
                stream.flush().await.expect("flush");
            });
            assert_eq!(harness.received, b"updated too");
        }
    }

    fn large_messages_both_ways(mut harness: Harness) -> Harness {
        let stream = harness.accept();
        assert_eq!(buffered(&stream), 0, "buffers kept after the handshake");
        // Three records of up to 16 KiB; the reader takes 1000 bytes a
        // time, as tungstenite takes its 1 KiB.
        let sent = message(40_000);
        harness.client_sends(&sent);
        let (mut stream, got) = harness.run(read_exactly(stream, sent.len(), 1000));
        assert!(got == sent, "the server read other bytes");
        assert_eq!(
            buffered(&stream),
            0,
            "buffers kept once the message was read"
        );
        let reply = message(50_000);
        harness.run(async {
            stream.write_all(&reply).await.expect("write");
            stream.flush().await.expect("flush");
        });
        assert!(harness.received == reply, "the client read other bytes");
        assert_eq!(buffered(&stream), 0, "buffers kept once the reply was sent");
        drop(stream);
        harness
    }

    #[test]
    fn an_incomplete_record_is_kept_until_the_rest_arrives() {
        let mut harness = Harness::new(usize::MAX);
        let stream = harness.accept();
        harness.wire.borrow_mut().allowed = 0;
        harness.client_sends(b"hello tracker");
        let record = harness.wire.borrow().to_server.len();
        // Half the record, then the socket has nothing more.
        harness.wire.borrow_mut().allowed = record / 2;
        let mut reading = Box::pin(read_exactly(stream, 13, 64));
        for _ in 0..10 {
            let poll =
                futures_lite::future::block_on(futures_lite::future::poll_once(&mut reading));
            assert!(poll.is_none(), "read a record that had not arrived");
        }
        assert_eq!(
            harness.wire.borrow().allowed,
            0,
            "the first half was not read"
        );
        harness.wire.borrow_mut().allowed = usize::MAX;
        let (stream, got) = harness.run(reading);
        assert_eq!(got, b"hello tracker");
        assert_eq!(buffered(&stream), 0);
    }

    #[test]
    fn close_notify_ends_the_stream_both_ways() {
        let mut harness = Harness::new(100);
        let mut stream = harness.accept();
        harness.client_sends(b"last words");
        harness.client.send_close_notify();
        harness.pump();
        let got = harness.run(async {
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.expect("read to the end");
            got
        });
        assert_eq!(got, b"last words");
        // Our close_notify reaches the client, and the socket is closed.
        harness.run(stream.close()).expect("close");
        assert!(harness
            .client
            .process_new_packets()
            .expect("client")
            .peer_has_closed());
        assert!(harness.wire.borrow().server_closed);
        let written = harness.run(stream.write(b"more"));
        assert!(written.is_err(), "wrote after close_notify");
    }

    #[test]
    fn a_socket_that_ends_mid_record_is_an_error() {
        let mut harness = Harness::new(usize::MAX);
        let stream = harness.accept();
        harness.wire.borrow_mut().allowed = 0;
        harness.client_sends(b"cut short");
        let record = harness.wire.borrow().to_server.len();
        {
            let mut wire = harness.wire.borrow_mut();
            wire.to_server.truncate(record - 3);
            wire.allowed = usize::MAX;
            wire.client_closed = true;
        }
        let mut stream = stream;
        let mut buf = [0u8; 64];
        let read = harness.run(stream.read(&mut buf));
        let err = read.expect_err("a truncated record was read");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn garbage_instead_of_a_handshake_is_an_error() {
        let harness = Harness::new(usize::MAX);
        {
            let mut wire = harness.wire.borrow_mut();
            wire.to_server
                .extend(b"GET /announce HTTP/1.1\r\n\r\n".iter().copied());
            wire.client_closed = true;
        }
        let accepting = accept(harness.socket(), harness.server.clone());
        let result = futures_lite::future::block_on(accepting);
        assert!(result.is_err(), "accepted plain HTTP as TLS");
    }
}
