//! The running listeners, by name: binds new ones, swaps updated ones in place (new
//! connections get the new config, the old listener's connections drain), and closes
//! removed ones. Static listeners and LDS ones go through the same door.
use crate::sync::MutexExt;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use tokio::{runtime::Handle, task::AbortHandle};

use super::{Listener, Registry, accept_loop, bind_for_workers};
use crate::{
    drain,
    net::own::{OwnAddress, OwnAddresses},
};

#[derive(Debug)]
pub struct ListenerManager {
    /// The workers' runtimes: each accepts on a socket of its own (or a share of one)
    /// and serves what it accepted.
    workers: Arc<[Handle]>,
    drain: drain::Watch,
    registry: Arc<ArcSwap<Registry>>,
    /// The capture listeners' bound addresses, shared with the cluster manager so that
    /// upstream connections refuse them too.
    own: Arc<OwnAddresses>,
    active: Mutex<BTreeMap<String, Active>>,
}

#[derive(Debug)]
struct Active {
    slot: Arc<ArcSwap<Listener>>,
    /// The bound addresses and their accept loops, one per worker (none for
    /// `bind_to_port: false`).
    bound: Vec<(SocketAddr, Vec<AbortHandle>)>,
}

impl Drop for Active {
    fn drop(&mut self) {
        for task in self.bound.iter().flat_map(|(_, tasks)| tasks) {
            task.abort();
        }
    }
}

/// What an update did with a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    Added,
    /// Same sockets, new config: the old listener drains.
    Updated,
    /// Different addresses: new sockets bound, the old ones closed and drained.
    Rebound,
}

impl ListenerManager {
    pub fn new(workers: Arc<[Handle]>, drain: drain::Watch, own: Arc<OwnAddresses>) -> Self {
        ListenerManager {
            workers,
            drain,
            registry: Arc::new(ArcSwap::from_pointee(Registry::new(&[], own.clone()))),
            own,
            active: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds `l`, or replaces the listener of the same name. Fails when a new address
    /// cannot be bound or Envoy would refuse the update, leaving the running listener as
    /// it was (except a listener without `enable_reuse_port` that keeps one of its
    /// addresses: its sockets close before the new ones bind). The error does not name
    /// the listener.
    pub fn upsert(&self, l: Arc<Listener>) -> Result<Upserted, String> {
        let mut active = self.active.locked();
        let name = l.config.name.clone();
        check_update(&active, &l)?;
        let outcome = match active.get(&name) {
            Some(old) if same_sockets(&old.slot.load(), &l) => {
                let previous = old.slot.swap(l);
                previous.retire();
                Upserted::Updated
            }
            Some(old) => {
                // With SO_REUSEPORT the new sockets join any address the old listener
                // shares, so they are bound first and a failure leaves the old listener
                // serving. A shared socket without it has to close first.
                let previous = old.slot.load_full();
                let close_first = !l.config.reuse_port
                    && l.config.bind_to_port
                    && previous.config.bind_to_port
                    && l.config
                        .addresses()
                        .any(|a| previous.config.addresses().any(|b| a == b));
                if close_first {
                    drop(active.remove(&name));
                    previous.retire();
                }
                match self.start(l) {
                    Ok(a) => {
                        if let Some(old) = active.insert(name, a) {
                            drop(old);
                            previous.retire();
                        }
                    }
                    Err(e) => {
                        self.publish(&active);
                        return Err(e);
                    }
                }
                Upserted::Rebound
            }
            None => {
                let a = self.start(l)?;
                active.insert(name, a);
                Upserted::Added
            }
        };
        self.publish(&active);
        Ok(outcome)
    }

    /// Removes the listener `name`: its sockets close and its connections drain.
    pub fn remove(&self, name: &str) -> bool {
        let mut active = self.active.locked();
        let Some(old) = active.remove(name) else {
            return false;
        };
        let l = old.slot.load_full();
        drop(old);
        l.retire();
        self.publish(&active);
        true
    }

    /// Admin `/drain_listeners`: the listeners chosen (all, or the inbound ones) start
    /// draining: their connections finish what is in flight and close (HTTP/1 responses
    /// say `connection: close`, HTTP/2 sends GOAWAY), new connections are still accepted
    /// and drained the same way. Returns how many listeners it touched.
    pub fn drain_listeners(&self, inbound_only: bool) -> usize {
        let active = self.active.locked();
        let mut n = 0;
        for a in active.values() {
            let l = a.slot.load();
            if !inbound_only || l.config.inbound {
                l.retire();
                n += 1;
            }
        }
        n
    }

    /// Closes the listening sockets of the listeners chosen (after a drain, or at once
    /// for an immediate `/drain_listeners`). They stay listed, as Envoy lists stopped
    /// listeners.
    pub fn stop_listeners(&self, inbound_only: bool) {
        let active = self.active.locked();
        for a in active.values() {
            if !inbound_only || a.slot.load().config.inbound {
                for task in a.bound.iter().flat_map(|(_, tasks)| tasks) {
                    task.abort();
                }
            }
        }
    }

    /// The listeners now serving.
    pub fn listeners(&self) -> Vec<Arc<Listener>> {
        let active = self.active.locked();
        active.values().map(|a| a.slot.load_full()).collect()
    }

    /// `name::address` of every bound socket, as Envoy's `/listeners` prints them.
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        let active = self.active.locked();
        active
            .iter()
            .flat_map(|(n, a)| a.bound.iter().map(move |(addr, _)| (n.clone(), *addr)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.active.locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Binds every address of `l` (all or none) and starts accepting on every worker.
    fn start(&self, l: Arc<Listener>) -> Result<Active, String> {
        let mut sockets = Vec::new();
        if l.config.bind_to_port {
            for addr in l.config.addresses() {
                let compat = l.config.ipv4_compat.contains(&addr);
                let bound = bind_for_workers(addr, compat, l.config.reuse_port, &self.workers)
                    .map_err(|e| format!("cannot bind {addr}: {e}"))?;
                sockets.push(bound);
            }
        }
        let slot = Arc::new(ArcSwap::new(l));
        let bound = sockets
            .into_iter()
            .map(|(local, per_worker)| {
                let tasks = per_worker
                    .into_iter()
                    .zip(self.workers.iter())
                    .map(|(socket, worker)| {
                        worker
                            .spawn(accept_loop(
                                slot.clone(),
                                socket,
                                self.registry.clone(),
                                self.drain.clone(),
                            ))
                            .abort_handle()
                    })
                    .collect();
                (local, tasks)
            })
            .collect();
        Ok(Active { slot, bound })
    }

    /// Republishes the address → listener map used for `use_original_dst` hand-off and
    /// the capture addresses used for loop refusal.
    fn publish(&self, active: &BTreeMap<String, Active>) {
        let all: Vec<Arc<Listener>> = active.values().map(|a| a.slot.load_full()).collect();
        let own = active
            .values()
            .flat_map(|a| {
                let l = a.slot.load_full();
                let capture = l.config.listener_filters.original_dst;
                a.bound
                    .iter()
                    .filter(move |_| capture)
                    .map(move |(addr, _)| OwnAddress {
                        addr: *addr,
                        refused: l.stats.loop_refused.clone(),
                    })
            })
            .collect();
        self.own.set(own);
        self.registry
            .store(Arc::new(Registry::new(&all, self.own.clone())));
    }
}

/// What Envoy refuses when a listener is added or updated. Both would otherwise succeed:
/// with SO_REUSEPORT the kernel takes a second bind of an address and splits its
/// connections between the sockets.
fn check_update(active: &BTreeMap<String, Active>, l: &Listener) -> Result<(), String> {
    let name = &l.config.name;
    if let Some(old) = active.get(name)
        && old.slot.load().config.reuse_port != l.config.reuse_port
    {
        return Err("enable_reuse_port cannot be changed during an update".into());
    }
    if !l.config.bind_to_port {
        return Ok(());
    }
    // Against the addresses the others are bound to: a listener on port 0 took a port
    // of its own, which a later listener may name.
    for (other, a) in active {
        if other == name {
            continue;
        }
        if let Some(addr) = l
            .config
            .addresses()
            .find(|x| x.port() != 0 && a.bound.iter().any(|(y, _)| y == x))
        {
            return Err(format!(
                "has duplicate address '{addr}' as existing listener '{other}'"
            ));
        }
    }
    Ok(())
}

/// True when `new` binds exactly what `old` binds, so it can take over its sockets.
fn same_sockets(old: &Listener, new: &Listener) -> bool {
    let (a, b) = (&old.config, &new.config);
    a.bind_to_port == b.bind_to_port
        && a.addresses().eq(b.addresses())
        && a.ipv4_compat == b.ipv4_compat
}
