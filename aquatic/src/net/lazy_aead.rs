//! TLS 1.3 record protection that keeps only the raw traffic key and IV
//! between records, for WSS: less memory per idle connection.
//!
//! rustls' ring provider builds a `ring::aead::LessSafeKey` per direction
//! when the traffic keys are installed and keeps it until the connection
//! ends. For AES-GCM that is the expanded AES key schedule and the GHASH
//! table, about 570 bytes on the heap per direction (ring sizes the key for
//! AES-GCM whatever the suite). A WebTorrent tracker holds many WSS
//! connections that send a record every few minutes, and those two keys
//! were over 1 KiB of every idle connection.
//!
//! The encrypters and decrypters here hold the [`AeadKey`] (32 bytes and a
//! length) and the 12-byte IV, and expand the key on the stack of each
//! `encrypt`/`decrypt` call. The cost is one key expansion per record (the
//! AES key schedule and the GHASH table; for ChaCha20-Poly1305 only a copy).
//!
//! Only the AEAD object changes. The suites reuse ring's hash, HKDF and QUIC
//! parts and ring's confidentiality limits, and the record is built as in
//! RFC 8446 §5.2, as rustls' ring provider builds it: nonce = IV XOR the
//! record sequence number, additional data = the record header, the inner
//! content type appended to the plaintext before sealing. TLS 1.2 suites
//! stay ring's own (WebTorrent clients speak TLS 1.3).

use std::sync::{Arc, OnceLock};

use ring::aead;
use rustls::{
    crypto::{
        cipher::{
            make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv,
            MessageDecrypter, MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage,
            PrefixedPayload, Tls13AeadAlgorithm, UnsupportedOperationError,
        },
        ring::cipher_suite,
        CryptoProvider,
    },
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};

/// ring's crypto provider with its TLS 1.3 suites' AEAD replaced by one
/// that expands the key per record (see the module doc). Suite order, key
/// exchange groups, signatures and TLS 1.2 are ring's defaults.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    for suite in &mut provider.cipher_suites {
        let SupportedCipherSuite::Tls13(stock) = suite else {
            continue;
        };
        if let Some(lazy) = suites()
            .iter()
            .find(|s| s.common.suite == stock.common.suite)
        {
            *suite = SupportedCipherSuite::Tls13(lazy);
        }
    }
    Arc::new(provider)
}

/// The three TLS 1.3 suites, built once: ring's suite with `aead_alg`
/// replaced (the other parts are not nameable outside rustls, so they are
/// copied from ring's suite at run time).
fn suites() -> &'static [Tls13CipherSuite; 3] {
    static SUITES: OnceLock<[Tls13CipherSuite; 3]> = OnceLock::new();
    SUITES.get_or_init(|| {
        [
            with_lazy_aead(cipher_suite::TLS13_AES_128_GCM_SHA256, &AES_128_GCM),
            with_lazy_aead(cipher_suite::TLS13_AES_256_GCM_SHA384, &AES_256_GCM),
            with_lazy_aead(
                cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                &CHACHA20_POLY1305,
            ),
        ]
    })
}

fn with_lazy_aead(stock: SupportedCipherSuite, aead_alg: &'static LazyAead) -> Tls13CipherSuite {
    let SupportedCipherSuite::Tls13(stock) = stock else {
        unreachable!("ring's TLS13_* suites are TLS 1.3 suites");
    };
    debug_assert_eq!(stock.common.suite, aead_alg.suite);
    Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: stock.common.suite,
            hash_provider: stock.common.hash_provider,
            confidentiality_limit: stock.common.confidentiality_limit,
        },
        hkdf_provider: stock.hkdf_provider,
        aead_alg,
        quic: stock.quic,
    }
}

static AES_128_GCM: LazyAead = LazyAead {
    suite: CipherSuite::TLS13_AES_128_GCM_SHA256,
    algorithm: &aead::AES_128_GCM,
};
static AES_256_GCM: LazyAead = LazyAead {
    suite: CipherSuite::TLS13_AES_256_GCM_SHA384,
    algorithm: &aead::AES_256_GCM,
};
static CHACHA20_POLY1305: LazyAead = LazyAead {
    suite: CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    algorithm: &aead::CHACHA20_POLY1305,
};

/// A TLS 1.3 AEAD whose encrypters and decrypters keep the raw key.
struct LazyAead {
    suite: CipherSuite,
    algorithm: &'static aead::Algorithm,
}

impl Tls13AeadAlgorithm for LazyAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Sealer(RecordKey::new(self.algorithm, key, iv)))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Opener(RecordKey::new(self.algorithm, key, iv)))
    }

    fn key_len(&self) -> usize {
        self.algorithm.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(match self.suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256 => {
                ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            }
            CipherSuite::TLS13_AES_256_GCM_SHA384 => {
                ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            }
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
                ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
            }
            _ => return Err(UnsupportedOperationError),
        })
    }
}

/// One direction's traffic key and IV, as rustls derived them. `AeadKey`
/// zeroes itself when dropped.
struct RecordKey {
    algorithm: &'static aead::Algorithm,
    key: AeadKey,
    iv: Iv,
}

impl RecordKey {
    fn new(algorithm: &'static aead::Algorithm, key: AeadKey, iv: Iv) -> Self {
        // rustls derives the key with `key_len()` bytes.
        debug_assert_eq!(key.as_ref().len(), algorithm.key_len());
        Self { algorithm, key, iv }
    }

    /// The expanded key for one record. Fails only on a key of the wrong
    /// length, which rustls never passes.
    fn expand(&self) -> Option<aead::LessSafeKey> {
        aead::UnboundKey::new(self.algorithm, self.key.as_ref())
            .ok()
            .map(aead::LessSafeKey::new)
    }

    fn nonce(&self, seq: u64) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0)
    }
}

/// Seals TLS 1.3 records.
struct Sealer(RecordKey);

/// Opens TLS 1.3 records.
struct Opener(RecordKey);

impl MessageEncrypter for Sealer {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let key = self.0.expand().ok_or(Error::EncryptError)?;
        let total_len = self.encrypted_payload_len(msg.payload.len());
        // TLSInnerPlaintext: the content, then its real type.
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        key.seal_in_place_append_tag(
            self.0.nonce(seq),
            aead::Aad::from(make_tls13_aad(total_len)),
            &mut payload,
        )
        .map_err(|_| Error::EncryptError)?;
        // Every TLS 1.3 record goes out as TLS 1.2 application data
        // (RFC 8446 §5.1, legacy_record_version).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + self.0.algorithm.tag_len()
    }
}

impl MessageDecrypter for Opener {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < self.0.algorithm.tag_len() {
            return Err(Error::DecryptError);
        }
        let key = self.0.expand().ok_or(Error::DecryptError)?;
        let plain_len = key
            .open_in_place(
                self.0.nonce(seq),
                aead::Aad::from(make_tls13_aad(payload.len())),
                payload,
            )
            .map_err(|_| Error::DecryptError)?
            .len();
        payload.truncate(plain_len);
        // Strips the padding and reads the inner content type; refuses an
        // oversized record or an encrypted change_cipher_spec.
        msg.into_tls13_unpadded_message()
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::cipher::OutboundChunks;

    use super::*;

    const ALL: [SupportedCipherSuite; 3] = [
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];

    /// Our suite for ring's `stock` one.
    fn lazy(stock: &Tls13CipherSuite) -> &'static Tls13CipherSuite {
        suites()
            .iter()
            .find(|s| s.common.suite == stock.common.suite)
            .expect("a lazy suite")
    }

    /// A traffic key and IV derived from `secret` as rustls derives them
    /// (HKDF-Expand-Label "key"/"iv", so the key has the suite's length).
    /// `rustls::internal` is rustls' hidden test API: fine in a test, the
    /// version is pinned by Cargo.lock.
    fn keys(suite: &Tls13CipherSuite, secret: &[u8]) -> (AeadKey, Iv) {
        let expander = suite.hkdf_provider.extract_from_secret(None, secret);
        (
            rustls::internal::derive_traffic_key(&*expander, suite.aead_alg),
            rustls::internal::derive_traffic_iv(&*expander),
        )
    }

    fn seal(
        encrypter: &mut dyn MessageEncrypter,
        typ: ContentType,
        data: &[u8],
        seq: u64,
    ) -> Vec<u8> {
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_3,
            payload: OutboundChunks::Single(data),
        };
        let record = encrypter.encrypt(msg, seq).expect("seal").encode();
        assert_eq!(
            record.len(),
            5 + encrypter.encrypted_payload_len(data.len())
        );
        assert_eq!(record[..3], [0x17, 0x03, 0x03], "application data, TLS 1.2");
        record
    }

    /// Opens a whole record (header included): its type and plaintext.
    fn open(
        decrypter: &mut dyn MessageDecrypter,
        record: &mut [u8],
        seq: u64,
    ) -> Result<(ContentType, Vec<u8>), Error> {
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut record[5..],
        );
        let plain = decrypter.decrypt(msg, seq)?;
        Ok((plain.typ, plain.payload.to_vec()))
    }

    /// Our encrypter against ring's decrypter, ring's encrypter against
    /// ours, and ours against ours, for every suite.
    #[test]
    fn records_open_with_ring_and_with_ours_in_both_directions() {
        let data = b"d8:completei1ee".repeat(100);
        for stock in ALL.map(|s| s.tls13().expect("TLS 1.3")) {
            let lazy = lazy(stock);
            assert_eq!(lazy.aead_alg.key_len(), stock.aead_alg.key_len());
            let pairs = [
                (lazy.aead_alg, stock.aead_alg),
                (stock.aead_alg, lazy.aead_alg),
                (lazy.aead_alg, lazy.aead_alg),
            ];
            for (sealer, opener) in pairs {
                let (key, iv) = keys(stock, b"traffic secret");
                let mut encrypter = sealer.encrypter(key, iv);
                let (key, iv) = keys(stock, b"traffic secret");
                let mut decrypter = opener.decrypter(key, iv);
                for seq in [0, 1, 2, u64::MAX >> 1] {
                    let mut record =
                        seal(&mut *encrypter, ContentType::ApplicationData, &data, seq);
                    let (typ, plain) = open(&mut *decrypter, &mut record, seq).expect("open");
                    assert_eq!(typ, ContentType::ApplicationData);
                    assert_eq!(plain, data);
                }
                let mut record = seal(&mut *encrypter, ContentType::Alert, &[1, 0], 5);
                let (typ, plain) = open(&mut *decrypter, &mut record, 5).expect("open");
                assert_eq!((typ, plain), (ContentType::Alert, vec![1, 0]));
            }
        }
    }

    #[test]
    fn a_wrong_sequence_number_tag_body_or_key_is_refused() {
        for stock in ALL.map(|s| s.tls13().expect("TLS 1.3")) {
            let aead = lazy(stock).aead_alg;
            let (key, iv) = keys(stock, b"secret");
            let mut encrypter = aead.encrypter(key, iv);
            let (key, iv) = keys(stock, b"secret");
            let mut decrypter = aead.decrypter(key, iv);
            let record = seal(&mut *encrypter, ContentType::ApplicationData, b"hello", 3);
            let refused = |result: Result<_, Error>| matches!(result, Err(Error::DecryptError));

            let mut wrong_seq = record.clone();
            assert!(refused(open(&mut *decrypter, &mut wrong_seq, 4)));

            let mut wrong_tag = record.clone();
            let last = wrong_tag.len() - 1;
            wrong_tag[last] ^= 1;
            assert!(refused(open(&mut *decrypter, &mut wrong_tag, 3)));

            let mut wrong_body = record.clone();
            wrong_body[5] ^= 1;
            assert!(refused(open(&mut *decrypter, &mut wrong_body, 3)));

            let (key, iv) = keys(stock, b"another secret");
            let mut stranger = aead.decrypter(key, iv);
            assert!(refused(open(&mut *stranger, &mut record.clone(), 3)));

            let mut short = record[..5 + 15].to_vec();
            assert!(refused(open(&mut *decrypter, &mut short, 3)));

            // The untouched record still opens: the failures were the changes.
            assert!(open(&mut *decrypter, &mut record.clone(), 3).is_ok());
        }
    }

    /// What an idle connection keeps per direction: the raw key and IV,
    /// not ring's expanded key.
    #[test]
    fn a_direction_holds_its_raw_key_not_the_expanded_one() {
        let held = std::mem::size_of::<Sealer>().max(std::mem::size_of::<Opener>());
        let expanded = std::mem::size_of::<aead::LessSafeKey>();
        assert!(held <= 64, "{held} bytes");
        assert!(held * 4 < expanded, "{held} held vs {expanded} expanded");
    }

    #[test]
    fn the_provider_swaps_every_tls13_suite_and_keeps_tls12() {
        let stock = rustls::crypto::ring::default_provider();
        let ours = provider();
        let names = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&ours), names(&stock));
        let mut swapped = 0;
        for (mine, theirs) in ours.cipher_suites.iter().zip(&stock.cipher_suites) {
            match (mine, theirs) {
                (SupportedCipherSuite::Tls13(mine), SupportedCipherSuite::Tls13(_)) => {
                    assert!(suites().iter().any(|s| std::ptr::eq(s, *mine)));
                    swapped += 1;
                }
                (mine, theirs) => assert!(mine == theirs, "{:?}", mine.suite()),
            }
        }
        assert_eq!(swapped, 3);
    }

    #[test]
    fn extracted_keys_name_the_suite() {
        for stock in ALL.map(|s| s.tls13().expect("TLS 1.3")) {
            let (key, iv) = keys(stock, b"secret");
            let secrets = lazy(stock).aead_alg.extract_keys(key, iv).expect("keys");
            let (key, iv) = keys(stock, b"secret");
            let expected = stock.aead_alg.extract_keys(key, iv).expect("keys");
            assert_eq!(
                std::mem::discriminant(&secrets),
                std::mem::discriminant(&expected)
            );
        }
    }
}
