//! IP networks in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`): which
//! socket peers are trusted reverse proxies.
//!
//! A dozen lines of bit masks do not justify a dependency; what matters is
//! that a written network means what it says, so the parser is strict: a
//! prefix length within the family's bits, and no address bits set past it
//! (`10.0.0.1/8` is refused rather than silently widened to `10.0.0.0/8`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An IPv4 or IPv6 network: an address whose bits past `prefix` are zero.
///
/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is stored as the
/// IPv4 one it names (`10.0.0.0/8`), as socket addresses are canonicalised
/// before they are matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    address: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpNetwork`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidNetwork {
    /// The part before the `/` is not an IPv4 or IPv6 address.
    #[error("not an IPv4 or IPv6 address before the '/'")]
    Address,
    /// The part after the `/` is not a number of bits the family has.
    #[error("the prefix length after the '/' must be a number from 0 to {max}")]
    PrefixLength {
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
    /// Address bits are set past the prefix: probably a typo for a single
    /// host or for the network named here.
    #[error("address bits are set past the prefix length: the network is {network}")]
    HostBits {
        /// The network with those bits cleared.
        network: IpNetwork,
    },
}

impl IpNetwork {
    /// The network's first address.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// How many leading bits of an address must match.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address counts
    /// as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `bits` with everything past the first `prefix` bits cleared.
fn mask_v4(bits: u32, prefix: u8) -> u32 {
    bits.checked_shr(32 - u32::from(prefix))
        .and_then(|b| b.checked_shl(32 - u32::from(prefix)))
        .unwrap_or(0)
}

/// `bits` with everything past the first `prefix` bits cleared.
fn mask_v6(bits: u128, prefix: u8) -> u128 {
    bits.checked_shr(128 - u32::from(prefix))
        .and_then(|b| b.checked_shl(128 - u32::from(prefix)))
        .unwrap_or(0)
}

impl FromStr for IpNetwork {
    type Err = InvalidNetwork;

    /// `address/prefix-length`, or a bare address for that single host.
    fn from_str(text: &str) -> Result<Self, InvalidNetwork> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| InvalidNetwork::Address)?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // u8's parser takes a leading '+', which no one means here.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or(InvalidNetwork::PrefixLength { max })?,
            Some(_) => return Err(InvalidNetwork::PrefixLength { max }),
        };
        let network = canonical(address, prefix);
        let host_bits_set = match address {
            IpAddr::V4(ip) => mask_v4(u32::from(ip), prefix) != u32::from(ip),
            IpAddr::V6(ip) => mask_v6(u128::from(ip), prefix) != u128::from(ip),
        };
        if host_bits_set {
            return Err(InvalidNetwork::HostBits { network });
        }
        Ok(network)
    }
}

/// The network `address/prefix` with its host bits cleared, IPv4-mapped
/// IPv6 networks as IPv4 ones.
fn canonical(address: IpAddr, prefix: u8) -> IpNetwork {
    match address {
        IpAddr::V4(ip) => IpNetwork {
            address: IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(ip), prefix))),
            prefix,
        },
        IpAddr::V6(ip) => {
            let masked = Ipv6Addr::from(mask_v6(u128::from(ip), prefix));
            match masked.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => IpNetwork {
                    address: IpAddr::V4(v4),
                    prefix: prefix - 96,
                },
                _ => IpNetwork {
                    address: IpAddr::V6(masked),
                    prefix,
                },
            }
        }
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(text: &str) -> IpNetwork {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} must parse: {e}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn parses_and_prints() {
        for text in [
            "127.0.0.1/32",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0",
            "::1/128",
        ] {
            assert_eq!(net(text).to_string(), text);
        }
        assert_eq!(net("192.0.2.7"), net("192.0.2.7/32"));
        assert_eq!(net("2001:db8::7"), net("2001:db8::7/128"));
        assert_eq!(net("::ffff:10.0.0.0/104"), net("10.0.0.0/8"));
    }

    #[test]
    fn refuses_what_is_not_a_network() {
        for (text, error) in [
            ("", InvalidNetwork::Address),
            ("localhost/8", InvalidNetwork::Address),
            ("10.0.0/8", InvalidNetwork::Address),
            ("10.0.0.0/", InvalidNetwork::PrefixLength { max: 32 }),
            ("10.0.0.0/33", InvalidNetwork::PrefixLength { max: 32 }),
            ("10.0.0.0/+8", InvalidNetwork::PrefixLength { max: 32 }),
            ("10.0.0.0/8/8", InvalidNetwork::PrefixLength { max: 32 }),
            ("::/129", InvalidNetwork::PrefixLength { max: 128 }),
            ("::/300", InvalidNetwork::PrefixLength { max: 128 }),
            (
                "10.0.0.1/8",
                InvalidNetwork::HostBits {
                    network: net("10.0.0.0/8"),
                },
            ),
            (
                "2001:db8::1/32",
                InvalidNetwork::HostBits {
                    network: net("2001:db8::/32"),
                },
            ),
        ] {
            assert_eq!(text.parse::<IpNetwork>(), Err(error), "{text:?}");
        }
        assert_eq!(
            "10.0.0.1/8".parse::<IpNetwork>().map_err(|e| e.to_string()),
            Err("address bits are set past the prefix length: the network is 10.0.0.0/8".into())
        );
    }

    #[test]
    fn membership() {
        let loopback = net("127.0.0.1/32");
        assert!(loopback.contains(ip("127.0.0.1")));
        assert!(loopback.contains(ip("::ffff:127.0.0.1")), "v4-mapped");
        assert!(!loopback.contains(ip("127.0.0.2")));
        assert!(!loopback.contains(ip("::1")), "another family");
        let ten = net("10.0.0.0/8");
        assert!(ten.contains(ip("10.255.1.2")));
        assert!(!ten.contains(ip("11.0.0.0")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        let doc = net("2001:db8::/32");
        assert!(doc.contains(ip("2001:db8:ffff::1")));
        assert!(!doc.contains(ip("2001:db9::")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
    }

    proptest! {
        #[test]
        fn never_panics(text in "[0-9a-f:./+]{0,48}") {
            let _ = text.parse::<IpNetwork>();
        }

        #[test]
        fn a_network_holds_exactly_its_prefix(bits: u32, prefix in 0u8..=32, other: u32) {
            let network = IpNetwork {
                address: IpAddr::V4(Ipv4Addr::from(mask_v4(bits, prefix))),
                prefix,
            };
            prop_assert_eq!(network.to_string().parse::<IpNetwork>(), Ok(network));
            prop_assert!(network.contains(IpAddr::V4(Ipv4Addr::from(bits))));
            let same_prefix = mask_v4(other, prefix) == mask_v4(bits, prefix);
            prop_assert_eq!(network.contains(IpAddr::V4(Ipv4Addr::from(other))), same_prefix);
        }
    }
}
