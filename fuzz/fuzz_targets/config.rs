//! The configuration loader: any text gives a configuration or an error
//! that names the file, never a panic.
#![no_main]

use std::path::Path;

use legal_intake::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/nonexistent/fuzz/config.toml");
    if let Err(e) = Config::parse(path, text) {
        assert!(
            e.to_string().starts_with("/nonexistent/fuzz/config.toml"),
            "{e}"
        );
    }
});
