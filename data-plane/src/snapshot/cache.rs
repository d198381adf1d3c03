//! The last applied snapshot on disk, written atomically (temp file, fsync, rename), so a
//! data plane that restarts while the control plane is down still has its configuration.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use pavilion_proto::Snapshot;
use prost::Message;

/// Marks the file as ours and versions the format.
const MAGIC: &[u8] = b"PAVILION-SNAPSHOT-1\n";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a snapshot cache file")]
    NotACache,
    #[error("corrupt snapshot: {0}")]
    Corrupt(#[from] prost::DecodeError),
}

/// Stores `encoded`, an encoded [`Snapshot`] (as the control plane sent it).
pub fn write(path: &Path, encoded: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary)?;
    file.write_all(MAGIC)?;
    file.write_all(encoded)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    // Make the rename itself durable.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// `Ok(None)` when there is no cache file yet.
pub fn read(path: &Path) -> Result<Option<Snapshot>, CacheError> {
    read_encoded(path)?
        .map(|body| Ok(Snapshot::decode(body)?))
        .transpose()
}

/// The stored snapshot, still encoded; `Ok(None)` when there is no cache file yet.
pub fn read_encoded(path: &Path) -> Result<Option<bytes::Bytes>, CacheError> {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !bytes.starts_with(MAGIC) {
        return Err(CacheError::NotACache);
    }
    bytes.drain(..MAGIC.len());
    Ok(Some(bytes.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.pb");
        assert!(read(&path).unwrap().is_none());
        let snapshot = Snapshot {
            version: "abc".into(),
            routes: vec![],
            ..Default::default()
        };
        write(&path, &snapshot.encode_to_vec()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(snapshot));
        assert!(!dir.path().join("snapshot.pb.tmp").exists());

        std::fs::write(&path, b"routes: []").unwrap();
        assert!(matches!(read(&path), Err(CacheError::NotACache)));
        std::fs::write(&path, [MAGIC, &[0xff, 0xff, 0xff]].concat()).unwrap();
        assert!(matches!(read(&path), Err(CacheError::Corrupt(_))));
    }
}
