//! A small WebDriver client for the page tests: chromedriver driving Debian's Chromium,
//! headless, over the W3C WebDriver protocol (JSON over HTTP).
use crate::{ChildGuard, eventually};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    _driver: ChildGuard,
    /// chromedriver's address, and the session's.
    root: String,
    session: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Browser {
    /// Start chromedriver on a free port and open a headless Chromium session.
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromedriver (Debian package chromium-driver)");
        let client = Client::builder(TokioExecutor::new()).build_http();
        let root = format!("http://127.0.0.1:{port}");
        let mut b =
            Browser { _driver: ChildGuard(driver), root: root.clone(), session: root, client };
        let ready = eventually(Duration::from_secs(20), || async {
            let v = b.call("GET", &format!("{}/status", b.root), None).await.ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        })
        .await;
        assert!(ready.is_some(), "chromedriver did not come up");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1600,1000"]
            }
        }}});
        let v =
            b.call("POST", &format!("{}/session", b.root), Some(caps)).await.expect("new session");
        let id = v["value"]["sessionId"].as_str().expect("session id").to_owned();
        b.session = format!("{}/session/{id}", b.root);
        b
    }

    async fn call(&self, method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if status.is_success() { Ok(v) } else { Err(v["value"].to_string()) }
    }

    /// A command within the session.
    async fn session(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        self.call(method, &format!("{}{path}", self.session), body).await
    }

    pub async fn goto(&self, url: &str) {
        self.session("POST", "/url", Some(json!({"url": url}))).await.expect("navigate");
    }

    /// The element `css` selects, once it exists (within 15 s).
    pub async fn find(&self, css: &str) -> String {
        let found = eventually(Duration::from_secs(15), || async {
            let v = self
                .session("POST", "/element", Some(json!({"using": "css selector", "value": css})))
                .await
                .ok()?;
            v["value"][ELEMENT].as_str().map(str::to_owned)
        })
        .await;
        found.unwrap_or_else(|| panic!("no element {css}"))
    }

    pub async fn click(&self, el: &str) {
        self.session("POST", &format!("/element/{el}/click"), Some(json!({})))
            .await
            .expect("click");
    }

    pub async fn retype(&self, el: &str, text: &str) {
        self.session("POST", &format!("/element/{el}/clear"), Some(json!({})))
            .await
            .expect("clear");
        self.session("POST", &format!("/element/{el}/value"), Some(json!({"text": text})))
            .await
            .expect("type");
    }

    /// Whether a checkbox is checked.
    pub async fn selected(&self, el: &str) -> bool {
        let v =
            self.session("GET", &format!("/element/{el}/selected"), None).await.unwrap_or_default();
        v["value"].as_bool().unwrap_or(false)
    }

    /// Click a checkbox until it is `want` (a click on a page still laying out can be lost).
    pub async fn set_checked(&self, el: &str, want: bool) {
        for _ in 0..5 {
            if self.selected(el).await == want {
                return;
            }
            self.click(el).await;
        }
        assert_eq!(self.selected(el).await, want, "the checkbox would not change");
    }

    /// The page's HTML as it stands.
    pub async fn source(&self) -> String {
        let v = self.session("GET", "/source", None).await.unwrap_or_default();
        v["value"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn text(&self, el: &str) -> String {
        let v = self.session("GET", &format!("/element/{el}/text"), None).await.unwrap_or_default();
        v["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Save a PNG of the page.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let v = self.session("GET", "/screenshot", None).await.expect("screenshot");
        let png = base64(v["value"].as_str().unwrap_or_default());
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    pub async fn close(self) {
        let _ = self.session("DELETE", "", None).await;
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bits: Vec<u8> = s.bytes().filter_map(val).collect();
    let mut out = Vec::with_capacity(bits.len() * 3 / 4);
    for chunk in bits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &v)| n | u32::from(v) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}
