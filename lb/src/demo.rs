//! `lb demo`: three members on loopback and a balancer in front of them, with nothing to install.
//!
//! The demo member is also what `xtask bench` measures against (`lb member`), so it is a real,
//! fast HTTP server: it answers every request with who it is, or with a fixed-size body.
use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What a demo member answers.
#[derive(Clone)]
pub struct MemberReply {
    pub name: Arc<str>,
    /// A fixed body; None answers "hello from NAME: METHOD PATH".
    pub body: Option<Bytes>,
}

fn answer(reply: &MemberReply, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match &reply.body {
        Some(b) => b.clone(),
        None => Bytes::from(format!("hello from {}: {} {}\n", reply.name, req.method(), req.uri())),
    };
    let mut r = Response::new(Full::new(body));
    if let Ok(v) = HeaderValue::from_str(&reply.name) {
        r.headers_mut().insert("x-member", v);
    }
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Serve demo replies on `listener` forever.
pub async fn serve_member(listener: TcpListener, reply: MemberReply) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let reply = reply.clone();
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = answer(&reply, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// The demo's config: one listener, one balancer of `ports.len()` members, the last with weight 2.
pub fn config_text(bind: &str, admin: &str, ports: &[u16]) -> String {
    let mut s = format!(
        r#"[admin]
bind = "{admin}"

[[listener]]
name = "demo"
bind = "{bind}"

  [[listener.proxy_pass]]
  path = "/"
  to = "balancer://demo/"
  reverse = true

[balancer.demo]
lbmethod = "byrequests"
"#
    );
    for (i, p) in ports.iter().enumerate() {
        s.push_str(&format!(
            "\n  [[balancer.demo.member]]\n  url = \"http://127.0.0.1:{p}\"\n  route = \"m{}\"\n",
            i + 1
        ));
        if i + 1 == ports.len() {
            s.push_str("  loadfactor = 2\n");
        }
    }
    s
}
