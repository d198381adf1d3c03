//! What the compiler worked out for resources it has seen before. Resources are shared
//! (`Arc<Resource>`) from the source through the controller, so a resource that did not
//! change is the same allocation in the next compile: its validation (regexes, CIDRs,
//! URLs, durations) is looked up by address instead of redone, and so is a route's
//! snapshot form and encoding while the policies reaching it stay the same.
//!
//! Route forms are shared (`Arc<RouteForm>`), never cloned — cloning a kept one cost as
//! much as building it (`perf`, 10 000 routes) — and the published snapshot keeps only
//! their bytes, so the forms live once, here.
//!
//! An entry holds its resource, so the address cannot be reused by another resource while
//! the entry lives; entries a compile did not use are dropped after it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use pavilion_crds::{FieldError, Resource};
use pavilion_proto as proto;
use prost::Message;

use super::rate_limit::Applied;

#[derive(Default)]
pub struct Memo {
    entries: HashMap<usize, Entry, foldhash::fast::FixedState>,
    validations: u64,
}

struct Entry {
    /// Keeps the address this entry is filed under taken.
    _resource: Arc<Resource>,
    errors: Vec<FieldError>,
    used: bool,
    /// For a route: its form, and what it was built with besides the resource (boxed:
    /// most of it is policy forms, inline they would triple every entry).
    route: Option<Box<RouteMemo>>,
}

struct RouteMemo {
    applied: Applied,
    cors: Option<proto::Cors>,
    form: Arc<RouteForm>,
}

/// A route as the snapshot carries it: encoded, and the little the compiler reads again.
#[derive(Debug, PartialEq)]
pub struct RouteForm {
    pub encoded: Bytes,
    pub shape: RouteShape,
}

/// What the shadowed-match check reads of a route (see `conflicts`). The rest of its
/// snapshot form is dropped once encoded: kept, it was most of the compiler's memory at
/// 10 000 routes (a `Rule` is over a kilobyte before it holds anything).
#[derive(Debug, PartialEq)]
pub struct RouteShape {
    pub namespace: String,
    pub name: String,
    pub hosts: Vec<String>,
    /// Per rule, its matches.
    pub rules: Vec<Vec<proto::Match>>,
}

impl RouteForm {
    pub fn new(route: proto::Route) -> Self {
        let encoded = route.encode_to_vec().into();
        Self {
            encoded,
            shape: RouteShape {
                namespace: route.namespace,
                name: route.name,
                hosts: route.hosts,
                // Not `into_iter().collect()`: that keeps the rules' allocation, sized for
                // `Rule`s (a kilobyte each), under the much smaller match lists.
                rules: route
                    .rules
                    .iter()
                    .map(|rule| rule.matches.clone())
                    .collect(),
            },
        }
    }

    /// The route as the snapshot carries it (decoded again: for tests).
    pub fn decode(&self) -> proto::Route {
        proto::Route::decode(self.encoded.clone()).expect("the compiler's own encoding decodes")
    }
}

fn address(resource: &Resource) -> usize {
    std::ptr::from_ref(resource) as usize
}

impl Memo {
    /// The resource's validation errors, validated once per resource.
    pub(super) fn validate(&mut self, resource: &Arc<Resource>) -> Vec<FieldError> {
        let entry = self.entries.entry(address(resource)).or_insert_with(|| {
            self.validations += 1;
            Entry {
                errors: resource.validate(),
                _resource: resource.clone(),
                used: false,
                route: None,
            }
        });
        entry.used = true;
        entry.errors.clone()
    }

    /// The form of the route `resource`, with the policies that reach it: the one built
    /// before when neither changed, else `build`'s (kept for the next compile when the
    /// resource was validated through this memo).
    pub(super) fn route_form(
        &mut self,
        resource: &Resource,
        applied: &Applied,
        cors: Option<&proto::Cors>,
        build: impl FnOnce() -> proto::Route,
    ) -> Arc<RouteForm> {
        let entry = self.entries.get_mut(&address(resource));
        if let Some(memo) = entry.as_ref().and_then(|entry| entry.route.as_ref())
            && memo.applied == *applied
            && memo.cors.as_ref() == cors
        {
            return memo.form.clone();
        }
        let form = Arc::new(RouteForm::new(build()));
        if let Some(entry) = entry {
            entry.route = Some(Box::new(RouteMemo {
                applied: applied.clone(),
                cors: cors.cloned(),
                form: form.clone(),
            }));
        }
        form
    }

    /// Resources validated so far (each once while it stays in use).
    pub fn validations(&self) -> u64 {
        self.validations
    }

    /// Forgets the resources the last compile did not see; marks the rest unused for the
    /// next one.
    pub(super) fn sweep(&mut self) {
        self.entries
            .retain(|_, entry| std::mem::take(&mut entry.used));
    }
}
