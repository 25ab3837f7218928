//! Apache config text → lb TOML that is itself valid TOML, or a located error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let name = std::path::Path::new("/nonexistent/httpd.conf");
        if let Ok(out) = lb::import::import_apache_text(text, name) {
            // Whatever was translated must be well-formed TOML (lb may still refuse its values).
            if let Err(e) = out.toml.parse::<toml::Table>() {
                panic!("import-apache wrote malformed TOML: {e}\n{}", out.toml);
            }
        }
    }
});
