//! A real headless Chromium, driven over the W3C WebDriver protocol by
//! Debian's chromedriver (packages `chromium` and `chromium-driver`):
//! each [`Browser`] is its own chromedriver on a loopback port and its own
//! empty profile. Chromium is started with the flags this closed network
//! needs (no background networking, component updates or sync).
//!
//! There is no skip: without `/usr/bin/chromium` and
//! `/usr/bin/chromedriver` [`Browser::start`] fails the test, naming the
//! packages to install (`scripts/install-test-deps` does).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// A WebDriver command that failed: its `error` code and message.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The W3C error code, such as `no such element` or `no such alert`.
    pub error: String,
    /// The driver's message.
    pub message: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with an empty profile.
    pub fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's {package} (scripts/install-test-deps)"
            );
        }
        let profile = tempfile::tempdir().expect("a profile folder");
        let port = crate::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let started = Instant::now();
        loop {
            let ready = http::request(addr, "GET", "/status", &[], b"")
                .ok()
                .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let v = browser
            .call("POST", "/session", Some(caps))
            .expect("a Chromium session");
        browser.session = v["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failed> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Type", "application/json")]
        };
        let r = http::request(self.addr, method, path, headers, body.as_bytes()).map_err(|e| {
            Failed {
                error: "io".into(),
                message: e.to_string(),
            }
        })?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(Failed {
                error: v["value"]["error"].as_str().unwrap_or("?").to_string(),
                message: v["value"]["message"].as_str().unwrap_or("").to_string(),
            })
        }
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failed> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.session_call(method, path, body.clone())
            .unwrap_or_else(|f| panic!("WebDriver {method} {path} {body:?}: {f:?}"))
    }

    /// Opens a URL and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.must("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The page's title.
    pub fn title(&self) -> String {
        self.must("GET", "/title", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The page's source as the browser holds it (the DOM serialised).
    pub fn source(&self) -> String {
        self.must("GET", "/source", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The elements matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        self.must(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The one element matching a CSS selector; panics without one.
    pub fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css} on {}:\n{}", self.url(), self.source()))
    }

    /// An element's rendered text.
    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.must("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The text of the whole page as rendered.
    pub fn page_text(&self) -> String {
        self.text("body")
    }

    /// Types into the element (after clearing it).
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.must("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.must(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Chooses the `<option>` with this value in a `<select>`.
    pub fn select(&self, select_css: &str, value: &str) {
        self.click(&format!("{select_css} option[value=\"{value}\"]"));
    }

    /// Clicks the element.
    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.must("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    /// Clicks a link or a form's button and waits for the page it leads
    /// to: until the clicked element belongs to a page that is gone.
    pub fn follow(&self, css: &str) {
        let e = self.find(css);
        self.must("POST", &format!("/element/{e}/click"), Some(json!({})));
        let started = Instant::now();
        loop {
            match self.session_call("GET", &format!("/element/{e}/name"), None) {
                Err(f) if f.error == "stale element reference" || f.error == "no such element" => {
                    break;
                }
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "clicking {css} on {} led nowhere",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The new page has loaded once its body is there.
        while self.find_all("body").is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no page after {css}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The text of an open JavaScript dialog (`alert`, `confirm`,
    /// `prompt`), or `None` when there is none: a page that ran an
    /// attacker's `alert()` has one.
    pub fn dialog(&self) -> Option<String> {
        match self.session_call("GET", "/alert/text", None) {
            Ok(v) => Some(v.as_str().unwrap_or("").to_string()),
            Err(f) if f.error == "no such alert" => None,
            Err(f) => panic!("WebDriver alert/text: {f:?}"),
        }
    }

    /// The cookies the browser holds for the current page, each a JSON
    /// object with `name`, `value`, `httpOnly`, `secure`, `sameSite`.
    pub fn cookies(&self) -> Vec<Value> {
        self.must("GET", "/cookie", None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.must("GET", "/screenshot", None);
        let png = data_encoding::BASE64
            .decode(b64.as_str().unwrap_or("").as_bytes())
            .expect("a base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot folder");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session_call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
