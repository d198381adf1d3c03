//! Where access lines end up: stdout, or a file rotated by size. Written by one thread
//! that receives whole-line chunks, so lines never interleave and a slow disk or a full
//! pipe stalls only this thread.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file destination: rotated when a write would take it past `max_bytes`
/// (`access.log` → `access.log.1` → … → `access.log.{keep}`, the oldest removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSink {
    pub path: PathBuf,
    pub max_bytes: u64,
    /// Rotated files kept beside the current one.
    pub keep: u32,
}

/// The destination of the access log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Destination {
    #[default]
    Stdout,
    File(FileSink),
}

/// An open destination.
pub(super) enum Sink {
    /// Shared with the general log's writer through the process-wide stdout lock: a
    /// chunk is written under one lock, so the two never cut into each other's lines.
    Stdout,
    File(OpenFile),
    /// Anything else that takes bytes (a pipe in tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Writer(Box<dyn Write + Send>),
}

pub(super) struct OpenFile {
    options: FileSink,
    file: File,
    size: u64,
}

impl Sink {
    pub(super) fn open(destination: &Destination) -> std::io::Result<Self> {
        Ok(match destination {
            Destination::Stdout => Sink::Stdout,
            Destination::File(options) => Sink::File(OpenFile::open(options.clone())?),
        })
    }

    pub(super) fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().lock().write_all(chunk),
            Sink::File(file) => file.write(chunk),
            Sink::Writer(writer) => writer.write_all(chunk),
        }
    }

    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().lock().flush(),
            Sink::File(file) => file.file.sync_data(),
            Sink::Writer(writer) => writer.flush(),
        }
    }
}

impl OpenFile {
    fn open(options: FileSink) -> std::io::Result<Self> {
        let file = append(&options.path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            options,
            file,
            size,
        })
    }

    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let len = chunk.len() as u64;
        if self.size > 0 && self.size + len > self.options.max_bytes {
            let rotated = self.rotate();
            // Whatever happened, write to a file at `path` from here on, sized as it is:
            // a failed rotation must not turn into a retry (and a shift) on every write.
            self.reopen()?;
            rotated?;
        }
        self.file.write_all(chunk)?;
        self.size += len;
        Ok(())
    }

    /// Moves the current file to `.1` (older ones up, the oldest past `keep` gone). A file
    /// that someone else removed or moved meanwhile is not an error.
    fn rotate(&self) -> std::io::Result<()> {
        let path = &self.options.path;
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let tolerate_missing = |result: std::io::Result<()>| match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        if self.options.keep == 0 {
            return tolerate_missing(std::fs::remove_file(path));
        }
        // Oldest first, so each rename lands on a name just freed (or the oldest, which
        // it replaces).
        for n in (1..self.options.keep).rev() {
            tolerate_missing(std::fs::rename(numbered(n), numbered(n + 1)))?;
        }
        tolerate_missing(std::fs::rename(path, numbered(1)))
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        self.file = append(&self.options.path)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
    options.open(path)
}
