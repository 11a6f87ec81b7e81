//! The message files `verify` and `ingest` read: `-` is standard input;
//! a file is opened ahead of its turn so the kernel reads while others
//! are judged.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;

/// Reads a message file; `-` is standard input.
fn read_input(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// An input opened ahead of its turn: a file whose pages the kernel has
/// been asked to start reading (`POSIX_FADV_WILLNEED`), so that by the
/// time a worker reads it the read is a copy, not a wait on the disk.
/// Standard input is read when its turn comes.
pub enum Opened {
    Stdin,
    File(std::io::Result<std::fs::File>),
}

pub fn open_ahead(path: &PathBuf) -> Opened {
    if path.as_os_str() == "-" {
        return Opened::Stdin;
    }
    Opened::File(std::fs::File::open(path).inspect(|file| {
        use std::os::fd::AsRawFd;
        // Only a hint: the read below is correct whatever it returns.
        // SAFETY: the descriptor is open and owned by `file`.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
    }))
}

impl Opened {
    /// The file's size as it was opened (0 for standard input or a file
    /// that could not be opened).
    pub fn size(&self) -> u64 {
        match self {
            Opened::File(Ok(file)) => file.metadata().map_or(0, |m| m.len()),
            _ => 0,
        }
    }
}

pub fn read_opened(path: &PathBuf, opened: Opened) -> anyhow::Result<Vec<u8>> {
    match opened {
        Opened::Stdin => read_input(path),
        Opened::File(file) => {
            let mut buf = Vec::new();
            file.and_then(|mut f| f.read_to_end(&mut buf))
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(buf)
        }
    }
}
