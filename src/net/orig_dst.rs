//! The destination a connection had before iptables REDIRECT rewrote it
//! (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`). nix wraps both options safely, so
//! no unsafe code is needed here.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsFd,
};

use nix::sys::socket::{getsockopt, sockopt};

/// The original destination of `sock`, or `None` when the kernel has none (the
/// connection was not redirected, or conntrack is not loaded).
pub fn original_dst<S: AsFd>(sock: &S, local: SocketAddr) -> io::Result<Option<SocketAddr>> {
    let res = match local {
        SocketAddr::V4(_) => getsockopt(sock, sockopt::OriginalDst).map(|sa| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ))
        }),
        SocketAddr::V6(_) => getsockopt(sock, sockopt::Ip6tOriginalDst).map(|sa| {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            ))
        }),
    };
    match res {
        Ok(addr) => Ok(Some(addr)),
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOPROTOOPT) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}
