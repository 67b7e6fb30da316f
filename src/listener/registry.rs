//! Which listener serves an address, for `use_original_dst` hand-off: the listener
//! bound (or declared with `bind_to_port: false`) at exactly the original destination,
//! else the wildcard listener on its port.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use super::Listener;
use crate::net::own::OwnAddresses;

#[derive(Debug, Default)]
pub struct Registry {
    by_address: HashMap<SocketAddr, Arc<Listener>>,
    /// The capture addresses, for loop refusal (shared with the upstream side).
    pub own: Arc<OwnAddresses>,
}

impl Registry {
    pub fn new(listeners: &[Arc<Listener>], own: Arc<OwnAddresses>) -> Self {
        let mut by_address = HashMap::new();
        for l in listeners {
            for a in l.config.addresses() {
                by_address.insert(a, l.clone());
            }
        }
        Registry { by_address, own }
    }

    pub fn find(&self, dst: SocketAddr) -> Option<&Arc<Listener>> {
        let any = match dst.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        self.by_address
            .get(&dst)
            .or_else(|| self.by_address.get(&SocketAddr::new(any, dst.port())))
    }
}
