//! Where a connection manager finds its routes: compiled once (inline `route_config`),
//! or in a slot that RDS fills and replaces. Every request reads the slot afresh, so a
//! route update takes effect on the next request of an open connection.
use crate::sync::MutexExt;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwapOption;

use super::route_match::Routes;
use crate::{config::RouteSource, telemetry::stats::Store};

/// The routes of one RDS `route_config_name`; empty until the first update arrives.
#[derive(Debug)]
pub struct RouteSlot {
    pub name: String,
    /// The `stat_prefix` of the connection manager that first named it (RDS stats are
    /// in its scope, as in Envoy).
    pub hcm_prefix: String,
    routes: ArcSwapOption<Routes>,
}

impl RouteSlot {
    pub fn store(&self, routes: Option<Arc<Routes>>) {
        self.routes.store(routes);
    }

    pub fn is_filled(&self) -> bool {
        self.routes.load().is_some()
    }
}

/// Every RDS slot by name, shared by the connection managers that name it.
#[derive(Debug, Default)]
pub struct RouteSlots {
    slots: Mutex<HashMap<String, Arc<RouteSlot>>>,
}

impl RouteSlots {
    /// The slot for `name`, made empty if no connection manager named it before.
    pub fn get(&self, name: &str, hcm_prefix: &str) -> Arc<RouteSlot> {
        self.slots
            .locked()
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(RouteSlot {
                    name: name.to_owned(),
                    hcm_prefix: hcm_prefix.to_owned(),
                    routes: ArcSwapOption::empty(),
                })
            })
            .clone()
    }

    /// The slot for `name` if one exists.
    pub fn find(&self, name: &str) -> Option<Arc<RouteSlot>> {
        self.slots.locked().get(name).cloned()
    }

    /// Forgets slots no connection manager holds any more; returns the names left.
    pub fn prune(&self) -> Vec<String> {
        let mut slots = self.slots.locked();
        slots.retain(|_, s| Arc::strong_count(s) > 1);
        let mut names: Vec<String> = slots.keys().cloned().collect();
        names.sort();
        names
    }
}

#[derive(Debug)]
pub enum RoutesHandle {
    Inline(Arc<Routes>),
    Rds(Arc<RouteSlot>),
}

impl RoutesHandle {
    pub fn new(
        source: &RouteSource,
        slots: &RouteSlots,
        hcm_prefix: &str,
        store: &Arc<Store>,
    ) -> Result<Self, String> {
        Ok(match source {
            RouteSource::Inline(table) => {
                RoutesHandle::Inline(Arc::new(Routes::new(table, store)?))
            }
            RouteSource::Rds { name, .. } => RoutesHandle::Rds(slots.get(name, hcm_prefix)),
        })
    }

    /// The routes now; `None` while an RDS slot is empty (requests get 404 NR).
    pub fn current(&self) -> Option<Arc<Routes>> {
        match self {
            RoutesHandle::Inline(r) => Some(r.clone()),
            RoutesHandle::Rds(slot) => slot.routes.load_full(),
        }
    }

    /// The RDS slot, when the routes come from RDS.
    pub fn slot(&self) -> Option<&Arc<RouteSlot>> {
        match self {
            RoutesHandle::Rds(s) => Some(s),
            RoutesHandle::Inline(_) => None,
        }
    }
}
