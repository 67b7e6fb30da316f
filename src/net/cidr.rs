//! CIDR ranges (`envoy.config.core.v3.CidrRange`) for filter-chain matching.
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The address with the host bits cleared.
    pub network: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// A range from an address and prefix length; host bits are cleared as Envoy does.
    pub fn new(ip: IpAddr, len: u32) -> Result<Cidr, String> {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix_len {len} is longer than {max}"));
        }
        let len = len as u8;
        Ok(Cidr {
            network: mask(ip, len),
            len,
        })
    }

    /// True when `ip` is inside the range. IPv4 ranges never contain IPv6 addresses and
    /// the other way round, except that an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.len) == self.network
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        let (ip, len) = s.split_once('/').unwrap();
        Cidr::new(ip.parse().unwrap(), len.parse().unwrap()).unwrap()
    }

    #[test]
    fn contains_by_prefix_and_family() {
        let cases = [
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.1.2.3", false),
            ("10.1.2.3/32", "10.1.2.3", true),
            ("10.9.9.9/8", "10.1.2.3", true),
            ("0.0.0.0/0", "192.168.1.1", true),
            ("0.0.0.0/0", "fd00::1", false),
            ("::/0", "fd00::1", true),
            ("::/0", "10.0.0.1", false),
            ("fd00::/16", "fd00:1::1", true),
            ("fd00::/16", "fd01::1", false),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
        ];
        for (range, ip, want) in cases {
            assert_eq!(
                c(range).contains(ip.parse().unwrap()),
                want,
                "{range} ∋ {ip}"
            );
        }
    }

    #[test]
    fn host_bits_are_cleared_and_overlong_prefixes_rejected() {
        assert_eq!(c("10.9.9.9/8").to_string(), "10.0.0.0/8");
        assert!(Cidr::new("10.0.0.0".parse().unwrap(), 33).is_err());
        assert!(Cidr::new("::".parse().unwrap(), 129).is_err());
    }
}
