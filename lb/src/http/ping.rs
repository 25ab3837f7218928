//! Apache's `ping` for HTTP members: a request with a body goes out with
//! `Expect: 100-continue`, and its body waits behind a [`Gate`] until the member answers
//! `100 Continue`. No answer within the ping time puts the member in error and takes the body
//! back, unsent, so that the request can go to another member (a POST included). A member that
//! answers at once with a final status works as before (the body follows; the connection is not
//! reused).
use super::body::{Gate, RequestBody};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};
use std::sync::Arc;
use std::time::Duration;

/// A request sent with `ping`.
pub struct Ping {
    pub gate: Arc<Gate>,
    pub after: Duration,
    head: (Method, Uri, Version, HeaderMap),
    /// lb added the `Expect` header (the client had not): another attempt goes without it.
    added_expect: bool,
}

/// Hold back `req`'s body until the member says `100 Continue`, within `after`. None when
/// the request has no body (nothing to hold back).
pub fn prepare(req: &mut Request<RequestBody>, after: Duration) -> Option<Ping> {
    let gate = req.body_mut().gated()?;
    let added_expect = !req.headers().contains_key(header::EXPECT);
    req.headers_mut().insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    let opener = Arc::clone(&gate);
    hyper::ext::on_informational(req, move |res| {
        if res.status() == http::StatusCode::CONTINUE {
            opener.open();
        }
    });
    let head = (req.method().clone(), req.uri().clone(), req.version(), req.headers().clone());
    Some(Ping { gate, after, head, added_expect })
}

impl Ping {
    /// The request again, with its unsent body, for another member; None when the body has
    /// already gone out (the `100 Continue` came after all).
    pub fn take_back(&self) -> Option<Request<RequestBody>> {
        let body = self.gate.withdraw()?;
        let (method, uri, version, mut headers) = self.head.clone();
        if self.added_expect {
            headers.remove(header::EXPECT);
        }
        let mut req = Request::new(RequestBody::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        Some(req)
    }
}
