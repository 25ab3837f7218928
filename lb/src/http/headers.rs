//! Header rewriting on the way through: hop-by-hop removal, X-Forwarded-*, Via.
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The `Upgrade` value of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade: x`).
pub fn upgrade_request(version: Version, h: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || !connection_has(h, "upgrade") {
        return None;
    }
    h.get(header::UPGRADE).cloned()
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why a member's response head is ambiguous about where its body ends, if it is: both
/// Content-Length and Transfer-Encoding, more than one of either, or a transfer coding other
/// than `chunked`. Such an answer is never forwarded (RFC 9112 §6.3).
pub fn ambiguous_framing(h: &HeaderMap) -> Option<String> {
    let te: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
    if !te.is_empty() && cl > 0 {
        return Some("both Content-Length and Transfer-Encoding".into());
    }
    if cl > 1 {
        return Some("more than one Content-Length".into());
    }
    match te.as_slice() {
        [] => None,
        [v] if v.as_bytes().trim_ascii() == b"chunked" => None,
        _ => Some(format!("Transfer-Encoding {te:?} is not one \"chunked\"")),
    }
}

/// The hop-by-hop headers removed whatever `Connection` says, in the order of [`hop_index`].
static HOP_BY_HOP: [&HeaderName; 9] = [
    // First: `strip_hop_by_hop` reads its bit.
    &header::CONNECTION,
    &KEEP_ALIVE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &PROXY_CONNECTION,
];

/// Remove hop-by-hop headers: the fixed set plus every header named in `Connection`. With
/// `upgrade` (a WebSocket or other upgrade being passed through), `Connection: upgrade` and the
/// `Upgrade` header are kept.
///
/// Every request and response passes here, and most carry none of these headers or only
/// `Connection: keep-alive`: one pass over the distinct names (one `match` on each, no
/// hashing) finds which are there, and only those are removed.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let mut present = 0u16;
    for k in h.keys() {
        if let Some(i) = hop_index(k) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        remove_connection_named(h);
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(*n);
        }
    }
    if let Some(u) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, u.clone());
    }
}

/// Where `name` is in [`HOP_BY_HOP`]. A `match` on the text compares lengths first and the
/// bytes of at most one candidate; comparing against each of the nine names cost more.
fn hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-authenticate" => 2,
        "proxy-authorization" => 3,
        "te" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        "proxy-connection" => 8,
        _ => return None,
    })
}

/// Remove the headers `Connection` names (RFC 9110 §7.6.1).
fn remove_connection_named(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // The usual token, and one of the fixed set: no name to build.
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
}

/// The client address as a header value, made once per connection.
pub fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Add `X-Forwarded-For` (appended to any the client sent), `X-Forwarded-Host` (the Host the
/// client asked for) and `X-Forwarded-Proto`, as Apache's mod_proxy does. `client` comes from
/// [`client_value`].
pub fn add_forwarded(
    h: &mut HeaderMap,
    client: &HeaderValue,
    host: Option<&HeaderValue>,
    proto: &'static str,
) {
    if h.contains_key(&X_FORWARDED_FOR) {
        let mut xff = Vec::new();
        for v in h.get_all(&X_FORWARDED_FOR) {
            xff.extend_from_slice(v.as_bytes());
            xff.extend_from_slice(b", ");
        }
        xff.extend_from_slice(client.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&xff) {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
    } else {
        h.insert(X_FORWARDED_FOR.clone(), client.clone());
    }
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
}

/// Append this hop to `Via` (`1.1 lb`, `2.0 lb`), keeping earlier hops.
pub fn add_via(h: &mut HeaderMap, version: Version) {
    let hop = match version {
        Version::HTTP_10 => "1.0 lb",
        Version::HTTP_2 => "2.0 lb",
        _ => "1.1 lb",
    };
    // One lookup: most messages carry no Via yet.
    match h.entry(header::VIA) {
        header::Entry::Occupied(mut e) => {
            let joined = e.get().to_str().map(|prev| format!("{prev}, {hop}"));
            match joined.ok().and_then(|j| HeaderValue::from_str(&j).ok()) {
                Some(v) => e.insert(v),
                None => e.insert(HeaderValue::from_static(hop)),
            };
        }
        header::Entry::Vacant(e) => {
            e.insert(HeaderValue::from_static(hop));
        }
    }
}

/// Give the values of `h` one allocation of their own, copied from wherever they were parsed.
///
/// hyper parses a member's response head in place: every value is a slice of the member
/// connection's read buffer, and keeps all of that buffer (8 KiB and up) alive. An HTTP/2
/// client's answer waits in its connection's send queue, behind other streams', while the member
/// connection goes back to the pool and serves the next request; finding its buffer still
/// shared, that connection's next read allocated a new one. Copied out, the buffer is the
/// connection's alone again by then and is reused in place.
pub fn unshare_values(h: &mut HeaderMap) {
    let total: usize = h.values().map(HeaderValue::len).sum();
    let mut all = bytes::BytesMut::with_capacity(total);
    for v in h.values() {
        all.extend_from_slice(v.as_bytes());
    }
    let all = all.freeze();
    let mut at = 0;
    for v in h.values_mut() {
        let end = at + v.len();
        // The bytes were a valid value a moment ago; should the check fail, the value stays.
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(all.slice(at..end)) {
            copy.set_sensitive(v.is_sensitive());
            *v = copy;
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none() && h.get(header::TE).is_none());
        assert!(h.get("x-kept").is_some());
        // Each of the fixed set, alone among other headers, is found and removed.
        for name in [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("a"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, None);
            assert!(h.get(name).is_none(), "{name} kept");
            assert_eq!(h.len(), 2, "{name}: {h:?}");
        }
        // An upgrade passed through keeps its two headers.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let ws = HeaderValue::from_static("websocket");
        strip_hop_by_hop(&mut h, Some(&ws));
        assert_eq!(
            (&h[header::CONNECTION], &h[header::UPGRADE]),
            (&"upgrade".parse::<HeaderValue>().unwrap(), &ws)
        );
    }

    #[test]
    fn hop_index_names_the_table() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n), Some(i), "{n}");
        }
        assert_eq!(hop_index(&header::HOST), None);
        assert_eq!(hop_index(&HeaderName::from_static("x-te")), None);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, &client_value("127.0.0.1".parse().unwrap()), None, "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        add_via(&mut h, Version::HTTP_11);
        add_via(&mut h, Version::HTTP_2);
        assert_eq!(h["via"], "1.1 lb, 2.0 lb");
    }

    /// Values parsed in place share the buffer they were read into; unshared, they hold none of
    /// it, read the same, and keep their sensitivity and order.
    #[test]
    fn unshared_values_let_the_read_buffer_go() {
        let mut read = bytes::BytesMut::with_capacity(8192);
        read.extend_from_slice(b"text/plain; charset=utf-8secret\"abc\"rest");
        let head = read.split_to(36).freeze();
        let mut h = HeaderMap::new();
        let v = |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(head.slice(r)).unwrap();
        h.insert(header::CONTENT_TYPE, v(0..25));
        let mut secret = v(25..31);
        secret.set_sensitive(true);
        h.insert(header::AUTHORIZATION, secret);
        h.append(header::ETAG, v(31..36));
        h.append(header::ETAG, v(0..4));
        drop(head);
        // Still shared: the buffer cannot take back what the values hold.
        assert!(!read.try_reclaim(8180));
        unshare_values(&mut h);
        assert!(read.try_reclaim(8180), "the values still hold the read buffer");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(h[header::AUTHORIZATION], "secret");
        assert!(h[header::AUTHORIZATION].is_sensitive());
        assert!(!h[header::CONTENT_TYPE].is_sensitive());
        let etags: Vec<_> = h.get_all(header::ETAG).iter().collect();
        assert_eq!(etags, ["\"abc\"", "text"]);
    }
}
