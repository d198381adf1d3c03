//! The directory source follows edits, additions and deletions on a real file system.

use std::time::{Duration, Instant};

use pavilion_control::source::{DirSource, Items, Source, SourceHealth};
use tokio::sync::watch;

fn route(name: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name} }}\nspec:\n  rules:\n    - backends: [{{ url: http://127.0.0.1:{port} }}]\n"
    )
}

/// The `(name, backend port)` of every readable route in the latest set.
fn routes(items: &Items) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|i| match i.parsed.as_deref() {
            Ok(pavilion_crds::Resource::Route(r)) => Some((
                r.metadata.name.clone().unwrap(),
                r.spec.rules[0].backends[0]
                    .url
                    .clone()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .to_owned(),
            )),
            _ => None,
        })
        .collect()
}

async fn wait_for(rx: &mut watch::Receiver<Option<Items>>, what: &str, want: &[(&str, &str)]) {
    let started = Instant::now();
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(items) = rx.borrow_and_update().clone()
                && routes(&items) == want
            {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the source did not see {what}"));
    eprintln!("{what}: seen after {:?}", started.elapsed());
}

fn health() -> SourceHealth {
    SourceHealth::new(prometheus::IntGauge::new("pavilion_source_up", "test").unwrap())
}

#[tokio::test]
async fn an_unreadable_directory_shows_in_the_health_and_the_last_read_stays() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), route("a", 1)).unwrap();
    let (tx, mut rx) = watch::channel(None);
    let health = health();
    let source: Box<dyn Source> = Box::new(DirSource::new(&dir));
    let task = tokio::spawn(source.run(tx, health.clone()));
    wait_for(&mut rx, "the initial listing", &[("a", "1")]).await;
    assert!(health.state().up);

    // A mount being swapped: the directory is gone for a while.
    std::fs::rename(&dir, parent.path().join("away")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health.state().up {
        assert!(tokio::time::Instant::now() < deadline, "never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(health.state().error.is_some());
    assert_eq!(
        rx.borrow().as_ref().map(|items| items.len()),
        Some(1),
        "the last read stays"
    );
    std::fs::rename(parent.path().join("away"), &dir).unwrap();
    while !health.state().up {
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(10),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}

#[tokio::test]
async fn follows_edits_additions_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), route("a", 1)).unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), route("hidden", 9)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a resource").unwrap();
    let (tx, mut rx) = watch::channel(None);
    let source: Box<dyn Source> = Box::new(DirSource::new(dir.path()));
    let task = tokio::spawn(source.run(tx, health()));

    wait_for(&mut rx, "the initial listing", &[("a", "1")]).await;
    std::fs::write(dir.path().join("a.yaml"), route("a", 2)).unwrap();
    wait_for(&mut rx, "an edit", &[("a", "2")]).await;
    std::fs::write(
        dir.path().join("nested/b.yaml"),
        format!("{}---\n{}", route("b", 3), route("c", 4)),
    )
    .unwrap();
    wait_for(
        &mut rx,
        "a multi-document file in a subdirectory",
        &[("a", "2"), ("b", "3"), ("c", "4")],
    )
    .await;
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    wait_for(&mut rx, "a deletion", &[("b", "3"), ("c", "4")]).await;
    task.abort();
}

#[tokio::test]
async fn a_missing_directory_is_an_error_at_once() {
    let (tx, _rx) = watch::channel(None);
    let source: Box<dyn Source> = Box::new(DirSource::new("/nonexistent/pavilion"));
    let error = source.run(tx, health()).await.unwrap_err();
    assert!(error.to_string().contains("not a directory"), "{error}");
}

#[tokio::test]
async fn reading_the_files_does_not_trigger_another_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), route("a", 1)).unwrap();
    let (tx, mut rx) = watch::channel(None);
    let source = DirSource::new(dir.path());
    let reads = source.read_counter();
    let task = tokio::spawn((Box::new(source) as Box<dyn Source>).run(tx, health()));
    wait_for(&mut rx, "the initial listing", &[("a", "1")]).await;
    // Someone (or the source itself) opens and reads the files: nothing changed.
    for _ in 0..5 {
        let _ = std::fs::read_to_string(dir.path().join("a.yaml")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = reads.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(count, 1, "the tree was read {count} times without a change");
    task.abort();
}
