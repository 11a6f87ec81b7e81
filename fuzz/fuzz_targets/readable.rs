//! The board's view of a filed message: any bytes are read without a
//! panic, and what is shown obeys the rules the page relies on — no
//! control character but newline and tab, no bidirectional or invisible
//! format character, the text within its limit, attachment names that
//! are neither empty nor paths, and each listed attachment downloadable
//! with the size and SHA-256 it is listed with.
#![no_main]

use legal_intake::readable::{self, TEXT_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = readable::read(data);
    assert!(r.text.len() <= TEXT_LIMIT);
    for c in r.text.chars() {
        assert!(c == '\n' || c == '\t' || !c.is_control(), "{c:?} shown");
        assert!(!legal_intake::text::is_format_char(c), "{c:?} shown");
    }
    for a in &r.attachments {
        assert!(!a.name.is_empty() && !a.name.contains(['/', '\\']), "{:?}", a.name);
        assert!(!a.name.starts_with('.'), "{:?}", a.name);
        let (name, bytes) = readable::attachment(data, a.index).expect("a listed attachment downloads");
        assert_eq!(name, a.name);
        assert_eq!(bytes.len(), a.size);
        assert_eq!(legal_intake::audit::sha256_hex(&bytes), a.sha256);
    }
});
