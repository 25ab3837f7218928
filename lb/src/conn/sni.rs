//! The server name (SNI) of a TLS ClientHello, read without terminating TLS, for SNI passthrough.
//!
//! [`server_name`] is pure: it takes the bytes a client has sent so far and says whether they
//! hold a whole first handshake record, and if so which host name it asks for.

/// The largest TLS record (2^14) plus its 5-byte header.
pub const MAX_RECORD: usize = 16384 + 5;

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// The first record is not complete yet.
    Incomplete,
    /// A ClientHello; its host name, when it sent one.
    Complete(Option<String>),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a TLS ClientHello: {0}")]
pub struct NotHello(pub &'static str);

/// A cursor over bytes that fails instead of panicking.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], NotHello> {
        if self.0.len() < n {
            return Err(NotHello("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<usize, NotHello> {
        Ok(self.take(1)?[0] as usize)
    }
    fn u16(&mut self) -> Result<usize, NotHello> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn vec8(&mut self) -> Result<&'a [u8], NotHello> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], NotHello> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Read the SNI host name from the start of a TLS connection.
pub fn server_name(buf: &[u8]) -> Result<Hello, NotHello> {
    if buf.is_empty() {
        return Ok(Hello::Incomplete);
    }
    if buf[0] != 0x16 {
        return Err(NotHello("first record is not a handshake"));
    }
    if buf.len() < 5 {
        return Ok(Hello::Incomplete);
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len > MAX_RECORD - 5 {
        return Err(NotHello("record too long"));
    }
    if buf.len() < 5 + len {
        return Ok(Hello::Incomplete);
    }
    let mut r = Cur(&buf[5..5 + len]);
    if r.u8()? != 1 {
        return Err(NotHello("first handshake message is not a ClientHello"));
    }
    let hlen = {
        let b = r.take(3)?;
        (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize
    };
    // A ClientHello longer than its first record: what arrived is all lb reads; look in it.
    let mut h = Cur(&r.0[..hlen.min(r.0.len())]);
    h.take(2 + 32)?; // client_version, random
    h.vec8()?; // session_id
    h.vec16()?; // cipher_suites
    h.vec8()?; // compression_methods
    if h.0.is_empty() {
        return Ok(Hello::Complete(None));
    }
    let mut exts = Cur(h.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Cur(Cur(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                let name =
                    std::str::from_utf8(name).map_err(|_| NotHello("host name is not ASCII"))?;
                return Ok(Hello::Complete(Some(name.to_ascii_lowercase())));
            }
        }
    }
    Ok(Hello::Complete(None))
}

/// Whether `pattern` (lower-case; `*.example.com` covers exactly one more label) covers `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|l| l.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls for `name`.
    fn hello(name: &str) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let sn = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), sn).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_host_name_of_a_real_client_hello() {
        let h = hello("Db.Example.com");
        assert_eq!(server_name(&h), Ok(Hello::Complete(Some("db.example.com".into()))));
        for cut in 0..h.len() {
            assert_eq!(server_name(&h[..cut]), Ok(Hello::Incomplete), "cut at {cut}");
        }
        // An IP address is never sent as SNI.
        assert_eq!(server_name(&hello("192.0.2.1")), Ok(Hello::Complete(None)));
    }

    #[test]
    fn garbage_is_not_a_hello() {
        assert!(server_name(b"GET / HTTP/1.1\r\n").is_err());
        assert!(server_name(&[0x16, 3, 1, 0, 4, 1, 0, 0, 0]).is_err());
        assert!(server_name(&[0x16, 3, 1, 0xff, 0xff]).is_err());
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(matches("*.example.com", "db.example.com"));
        assert!(!matches("*.example.com", "a.db.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("example.com", "example.com"));
    }
}
