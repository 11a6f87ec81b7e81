//! Pure: a POSIX ustar archive of a few regular files, for the evidence
//! bundle the case board downloads (`tar -xf` opens it anywhere, and the
//! manifest inside still lists every file's SHA-256).

/// One file of the archive: a relative path of at most 100 bytes (no
/// prefix field is used), its bytes and modification time (Unix seconds).
pub struct Entry<'a> {
    pub path: &'a str,
    pub bytes: &'a [u8],
    pub mtime: u64,
}

/// The archive of `entries`, in order: a 512-byte header and the padded
/// content each, then the two zero blocks that end an archive.
pub fn ustar(entries: &[Entry<'_>]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for e in entries {
        if e.path.is_empty()
            || e.path.len() > 100
            || e.path.starts_with('/')
            || e.path.contains("..")
        {
            return Err(format!("`{}` cannot be a path in the archive", e.path));
        }
        let mut h = [0u8; 512];
        h[..e.path.len()].copy_from_slice(e.path.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], e.bytes.len() as u64);
        octal(&mut h[136..148], e.mtime);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let field = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(field.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(e.bytes);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// A zero-padded octal number filling the field but for its final NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_reads_back_with_tar() {
        let dir = tempfile::tempdir().unwrap();
        let archive = ustar(&[
            Entry {
                path: "LR-2026-0001/msg1.eml",
                bytes: b"From: a@b\r\n\r\nhi\r\n",
                mtime: 1_793_613_600,
            },
            Entry {
                path: "LR-2026-0001/empty",
                bytes: b"",
                mtime: 0,
            },
            Entry {
                path: "LR-2026-0001/big",
                bytes: &[7u8; 1500],
                mtime: 0,
            },
        ])
        .unwrap();
        assert_eq!(archive.len() % 512, 0);
        let path = dir.path().join("a.tar");
        std::fs::write(&path, &archive).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |p: &str| std::fs::read(dir.path().join("LR-2026-0001").join(p)).unwrap();
        assert_eq!(read("msg1.eml"), b"From: a@b\r\n\r\nhi\r\n");
        assert_eq!(read("empty"), b"");
        assert_eq!(read("big"), vec![7u8; 1500]);
    }

    #[test]
    fn paths_that_would_escape_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", &"a".repeat(101)] {
            let e = Entry {
                path: bad,
                bytes: b"",
                mtime: 0,
            };
            assert!(ustar(&[e]).is_err(), "{bad}");
        }
    }
}
