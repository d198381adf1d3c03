//! What the compiler worked out for resources it has seen before. Resources are shared
//! (`Arc<Resource>`) from the source through the controller, so a resource that did not
//! change is the same allocation in the next compile: its validation (regexes, CIDRs,
//! URLs, durations) is looked up by address instead of redone.
//!
//! Routes' snapshot forms are not kept: cloning a kept one cost as much as building it
//! (`perf`, 10 000 routes), and keeping the copies raised the control plane's RSS
//! (`bench/scale`: 217 MiB against 131–162).
//!
//! An entry holds its resource, so the address cannot be reused by another resource while
//! the entry lives; entries a compile did not use are dropped after it.

use std::collections::HashMap;
use std::sync::Arc;

use pavilion_crds::{FieldError, Resource};

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
            }
        });
        entry.used = true;
        entry.errors.clone()
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
