//! The tenant table at scale: N tenants over M shards as the control plane reads them (YAML
//! documents), compiled into a snapshot, and built into the data plane's lookup table —
//! time, size, memory and lookup cost, printed as figures.
//!
//!     cargo run --release -p pavilion-bench --bin tenants -- [tenants] [shards]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pavilion_control::compile;
use pavilion_control::source::Item;
use pavilion_data::placement::{Lookup, Placements, Service};
use prost::Message;

/// The system allocator, counting the bytes live: the table's memory, exactly.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn documents(tenants: usize, shards: usize) -> String {
    let mut text = String::new();
    let kinds = ["aggregate", "projection", "runner"];
    for s in 0..shards {
        let kind = kinds[s % 3];
        text.push_str(&format!(
            "---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: {{ name: {kind}-{s}, namespace: platform }}\nspec:\n  service: {kind}\n  endpoints: ['h2c://10.0.{s}.1:7001', 'h2c://10.0.{s}.2:7001']\n"
        ));
    }
    let of_kind = |kind: usize, t: usize| {
        let count = (shards + 2 - kind) / 3;
        format!("{}-{}", kinds[kind], kind + 3 * (t % count.max(1)))
    };
    for t in 0..tenants {
        text.push_str(&format!(
            "---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: {{ name: tenant-{t}, namespace: platform }}\nspec:\n  tenant: tenant-{t}\n  shards: {{ aggregate: {}, projection: {}, runner: {} }}\n",
            of_kind(0, t),
            of_kind(1, t),
            of_kind(2, t)
        ));
    }
    text
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let tenants: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let shards: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(50)
        .max(3);
    let text = documents(tenants, shards);

    let started = Instant::now();
    let path = std::sync::Arc::from(std::path::Path::new("placements.yaml"));
    let items: Vec<Item> = pavilion_crds::parse_documents(&text)
        .into_iter()
        .map(|doc| Item::from_document(&path, doc))
        .collect();
    let parsing = started.elapsed();
    let mut compiling = Vec::new();
    let mut compiled = None;
    for _ in 0..5 {
        let started = Instant::now();
        compiled = Some(compile::compile(&items));
        compiling.push(started.elapsed());
    }
    let compiled = compiled.expect("compiled five times");
    let rejected = compiled.reports.iter().filter(|r| !r.is_accepted()).count();
    assert_eq!(rejected, 0, "every generated resource is valid");
    let table = compiled
        .snapshot
        .placements
        .clone()
        .expect("a tenant table");
    assert_eq!(table.tenants.len(), tenants);

    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let placements = Placements::build(Some(&table)).expect("the table builds");
    let building = started.elapsed();
    let memory = LIVE.load(Ordering::Relaxed) - before;

    let names: Vec<String> = (0..tenants).map(|t| format!("tenant-{t}")).collect();
    let order: Vec<usize> = (0..1 << 20).map(|_| fastrand::usize(..tenants)).collect();
    let mut lookups = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for &i in &order {
            let found = placements.lookup(black_box(&names[i]), Service::Aggregate);
            black_box(matches!(found, Lookup::Shard(_)));
        }
        lookups.push(started.elapsed() / order.len() as u32);
    }

    println!("tenant table: {tenants} tenants over {shards} shards (release build, one core)");
    println!(
        "  parse {} YAML documents     {:>10.1?}",
        items.len(),
        parsing
    );
    println!(
        "  compile (median of 5)        {:>10.1?}",
        median(compiling)
    );
    println!(
        "  snapshot                     {:>10} bytes ({} in the tenant table)",
        compiled.snapshot.encoded_len(),
        table.encoded_len()
    );
    println!("  data-plane table build       {:>10.1?}", building);
    println!(
        "  data-plane table memory      {:>10} bytes ({} per tenant)",
        memory,
        memory / tenants.max(1)
    );
    println!("  lookup (median of 5 × 1M)    {:>10.1?}", median(lookups));
}
