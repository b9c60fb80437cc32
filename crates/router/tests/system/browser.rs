//! The web chat and the reference desk in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`; `scripts/services.sh` installs
//! them). A customer chats with the bot, asks for a human, the agent answers from the
//! simulator's desk page, the customer reloads and sees the conversation once, and the
//! inlet-gateway is killed and restarted under the open page: everything sent meanwhile
//! arrives once, in order.
//!
//! With `HANDOFF_SHOTS=<dir>` the test also saves the pictures the README shows
//! (`scripts/webchat-shot`).

use std::time::Duration;

use handoff_simulators::{Api, DeskIdentity};
use serde_json::{Value, json};

use crate::helpers::*;

/// A WebDriver session on a chromedriver of its own. The protocol is a handful of JSON
/// calls, spoken with the test's HTTP client rather than another crate.
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: tokio::process::Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs (apt-get install chromium chromium-driver)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + WAIT;
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never listened"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1280,860",
            ]},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        Self {
            http,
            session: format!("{base}/session/{session}"),
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` in the page (`arguments` as given) and returns what it returns.
    async fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found: Value = self
                .http
                .post(format!("{}/element", self.session))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(id) = found["value"]
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
                .filter(|_| found["value"]["error"].is_null())
            {
                return id.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{css}` on the page"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn new_window(&self) -> String {
        let made = self
            .call(
                reqwest::Method::POST,
                "/window/new",
                Some(json!({"type": "tab"})),
            )
            .await;
        made["handle"].as_str().unwrap().to_string()
    }

    async fn window(&self) -> String {
        self.call(reqwest::Method::GET, "/window", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn switch_to(&self, handle: &str) {
        self.call(
            reqwest::Method::POST,
            "/window",
            Some(json!({"handle": handle})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("HANDOFF_SHOTS") else {
            return;
        };
        use base64::Engine as _;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// What the chat page shows: (from, seq, text) of each message, in page order.
async fn chat_shows(browser: &Browser) -> Vec<(String, String, String)> {
    let shown = browser
        .run(
            "return [...document.querySelectorAll('[data-testid=hw-msg]')].map(e => \
             [e.dataset.from || '', e.dataset.seq || '', e.innerText.trim()])",
            json!([]),
        )
        .await;
    serde_json::from_value(shown).unwrap()
}

/// Waits until the chat shows a message from `from` containing `text`.
async fn chat_waits_for(
    browser: &Browser,
    from: &str,
    text: &str,
) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let shown = chat_shows(browser).await;
        if shown
            .iter()
            .any(|(f, seq, t)| f == from && !seq.is_empty() && t.contains(text))
        {
            return shown;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chat never showed {from}: {text}; it shows {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The confirmed messages shown carry rising sequences: none twice, none out of order.
fn assert_once_in_order(shown: &[(String, String, String)]) {
    let seqs: Vec<u64> = shown
        .iter()
        .filter_map(|(_, s, _)| s.parse().ok())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "once, in order: {seqs:?}"
    );
}

async fn say_in_chat(browser: &Browser, text: &str) {
    browser.type_into("[data-testid=hw-input]", text).await;
    browser.click("[data-testid=hw-send]").await;
}

/// Waits until the desk's open conversation shows `text`.
async fn desk_waits_for(browser: &Browser, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let shown = browser
            .run(
                "return [...document.querySelectorAll('[data-testid=desk-msg]')].map(e => e.innerText)",
                json!([]),
            )
            .await;
        if shown.as_array().is_some_and(|all| {
            all.iter()
                .any(|t| t.as_str().is_some_and(|t| t.contains(text)))
        }) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the desk never showed {text}; it shows {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn desk_says(browser: &Browser, text: &str) {
    browser.type_into("[data-testid=desk-input]", text).await;
    browser.click("[data-testid=desk-send]").await;
}

#[tokio::test]
async fn a_customer_in_the_web_chat_is_handed_to_the_agents_desk_and_nothing_is_lost_across_a_reload_and_a_gateway_restart()
 {
    // Arrange: the hub, an inlet-gateway process on a port of its own (killed later), the
    // simulator's desk page answering through the outlet-gateway
    let hub = TestHub::start().await;
    let port = free_port();
    let mut gateway = hub.spawn_inlet_gateway(port).await;
    let chat_page = format!("http://127.0.0.1:{port}/webchat/v1/{ORG}/{WEBCHAT}");
    hub.desk.set_desk(DeskIdentity {
        hub: hub.outlet_url.clone(),
        org: ORG.into(),
        channel: OUTLET.into(),
        token: OUTLET_TOKEN.into(),
    });
    let browser = Browser::start().await;

    // Act + Assert: the customer chats with the bot
    browser.open(&chat_page).await;
    let customer = browser.window().await;
    say_in_chat(&browser, "hello").await;
    chat_waits_for(&browser, "bot", "You said: hello").await;

    // … asks for a human; the desk page shows the request
    say_in_chat(&browser, "talk to a human").await;
    hub.wait_desk(Api::Livechat, 1).await;
    let desk = browser.new_window().await;
    browser.switch_to(&desk).await;
    browser.open(&hub.desk.url("/desk")).await;
    browser.click("[data-testid=desk-request]").await;

    // … the agent answers from the desk, the customer sees it
    let member = browser
        .run(
            "return document.querySelector('[data-testid=desk-request]').dataset.member",
            json!([]),
        )
        .await;
    let visitor_member = member.as_str().unwrap().to_string();
    hub.wait_conversation_state(visitor_member.parse().unwrap(), "live")
        .await;
    desk_says(&browser, "Hi, I am Alice. How can I help?").await;
    browser.switch_to(&customer).await;
    chat_waits_for(&browser, "agent", "Hi, I am Alice").await;
    say_in_chat(&browser, "my order is late").await;
    let before = chat_waits_for(&browser, "visitor", "my order is late").await;
    browser.screenshot("webchat.png").await;
    if std::env::var_os("HANDOFF_SHOTS").is_some() {
        // The desk's picture with the conversation on it.
        browser.switch_to(&desk).await;
        desk_waits_for(&browser, "my order is late").await;
        browser.screenshot("desk.png").await;
        browser.switch_to(&customer).await;
    }

    // … reloads: the whole conversation, once
    browser.open(&chat_page).await;
    let after_reload = chat_waits_for(&browser, "visitor", "my order is late").await;
    let confirmed = |shown: &[(String, String, String)]| -> Vec<(String, String, String)> {
        shown
            .iter()
            .filter(|(_, seq, _)| !seq.is_empty())
            .cloned()
            .collect()
    };
    assert_eq!(confirmed(&after_reload), confirmed(&before));
    assert_once_in_order(&after_reload);

    // … the inlet-gateway dies under the open page; the agent writes three times while it
    // is down; it comes back on the same port
    gateway.kill().await.unwrap();
    browser.switch_to(&desk).await;
    for text in ["one", "two", "three"] {
        desk_says(&browser, &format!("while you were away: {text}")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway = hub.spawn_inlet_gateway(port).await;
    browser.switch_to(&customer).await;
    let shown = chat_waits_for(&browser, "agent", "while you were away: three").await;
    let away: Vec<&str> = shown
        .iter()
        .filter(|(_, _, t)| t.contains("while you were away"))
        .map(|(_, _, t)| t.as_str())
        .collect();
    assert_eq!(away.len(), 3, "each once: {shown:?}");
    assert!(away[0].contains("one") && away[1].contains("two") && away[2].contains("three"));
    assert_once_in_order(&shown);

    browser.quit().await;
    drop(gateway);
    hub.shutdown().await;
}
