//! HTTP sessions: start → calls on the session → events over SSE (pushes,
//! a GOAWAY, a kick) → exit; `Last-Event-ID` replay; bad input.

use std::net::SocketAddr;
use std::time::Duration;

use gg_proto::pb::admin as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// An SSE stream read by hand: de-chunks the body and yields events as
/// (id, event, data).
struct Sse {
    s: TcpStream,
    raw: Vec<u8>,
    body: String,
    head_done: bool,
    /// The last (zero-size) chunk arrived: the response ended.
    ended: bool,
}

impl Sse {
    async fn open(addr: SocketAddr, path: &str, token: &str, last: Option<u64>) -> Sse {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-session-token: {token}\r\n");
        if let Some(l) = last {
            req.push_str(&format!("Last-Event-ID: {l}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        Sse {
            s,
            raw: Vec::new(),
            body: String::new(),
            head_done: false,
            ended: false,
        }
    }

    /// The next event (comments skipped); None when the stream ended.
    async fn next(&mut self) -> Option<(u64, String, String)> {
        loop {
            if let Some(end) = self.body.find("\n\n") {
                let block: String = self.body.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (0, String::new(), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().unwrap_or(0);
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_string());
                    }
                }
                if event.is_empty() {
                    continue; // a comment (heartbeat)
                }
                return Some((id, event, data.join("\n")));
            }
            if self.ended {
                return None;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.s.read(&mut buf))
                .await
                .expect("an event in time")
                .expect("read");
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&buf[..n]);
            self.dechunk();
        }
    }

    fn dechunk(&mut self) {
        if !self.head_done {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(
                head.to_ascii_lowercase().contains("text/event-stream"),
                "{head}"
            );
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.raw[..line_end])
                    .expect("size")
                    .trim(),
                16,
            )
            .expect("chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            if size == 0 {
                self.ended = true;
            }
            let chunk = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.raw.drain(..line_end + 2 + size + 2);
            self.body.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

async fn start(gw: &Gw, user: &str) -> (String, String) {
    let (code, body) = http(
        gw.client,
        "POST",
        "/v1/sessions",
        &[("x-user-id", user)],
        b"",
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"], "active");
    (
        v["session_id"].as_str().expect("id").to_string(),
        v["session_token"].as_str().expect("token").to_string(),
    )
}

async fn call(gw: &Gw, id: &str, token: &str, body: &str) -> (u16, String) {
    http(
        gw.client,
        "POST",
        &format!("/v1/sessions/{id}/call/echo"),
        &[("x-session-token", token)],
        body.as_bytes(),
    )
    .await
}

async fn push(gw: &Gw, id: &str, text: &str) {
    admin(gw, Some(OPERATE_TOKEN))
        .await
        .push(pb::PushRequest {
            session_id: id.parse().expect("id"),
            service_type: 1,
            payload: text.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("push");
}

#[tokio::test]
async fn http_session_calls_events_replay_kick_and_exit() {
    let b = backend("b1").await;
    let gw = gateway(&format!("{}{}", one_service(b.addr), admin_yaml())).await;
    let (id, token) = start(&gw, "42").await;

    // Calls run on the session: the backend sees one session.
    assert_eq!(call(&gw, &id, &token, "hello").await, (200, "hello".into()));
    assert_eq!(call(&gw, &id, &token, "count").await.1, "2");
    // It is a real session: the admin API lists it.
    let listed = admin(&gw, Some(READ_TOKEN))
        .await
        .get_session(pb::GetSessionRequest {
            session_id: id.parse().expect("id"),
        })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed.user_id, 42);

    // Pushes arrive as events, numbered.
    let path = format!("/v1/sessions/{id}/events");
    let mut sse = Sse::open(gw.client, &path, &token, None).await;
    push(&gw, &id, "news-1").await;
    let (first, event, data) = sse.next().await.expect("event");
    assert_eq!(event, "message");
    let v: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(
        (v["payload"].as_str(), v["seq"].as_u64()),
        (Some("news-1"), Some(0))
    );

    // Away, two more pushes; back with Last-Event-ID: both replayed.
    drop(sse);
    push(&gw, &id, "news-2").await;
    push(&gw, &id, "news-3").await;
    let mut sse = Sse::open(gw.client, &path, &token, Some(first)).await;
    let (id2, _, d2) = sse.next().await.expect("replayed");
    let (_, _, d3) = sse.next().await.expect("replayed");
    assert_eq!(id2, first + 1);
    assert!(d2.contains("news-2") && d3.contains("news-3"), "{d2} {d3}");

    // A kick from the backend ends the session with a close event.
    let (code, _) = call(&gw, &id, &token, "kick:bye").await;
    assert_eq!(code, 410, "the call's session ended before a reply");
    let (_, event, data) = sse.next().await.expect("close event");
    assert_eq!(event, "close");
    assert!(data.contains("3506") && data.contains("bye"), "{data}");
    assert!(
        sse.next().await.is_none(),
        "the stream ends with the session"
    );
    assert_eq!(call(&gw, &id, &token, "x").await.0, 404);

    // Exit: the session ends; bad tokens and ids are refused.
    let (id, token) = start(&gw, "43").await;
    assert_eq!(call(&gw, &id, "00", "x").await.0, 401);
    assert_eq!(call(&gw, "999", &token, "x").await.0, 404);
    let (code, body) = http(
        gw.client,
        "DELETE",
        &format!("/v1/sessions/{id}"),
        &[("x-session-token", &token)],
        b"",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"exited\""), "{body}");
    eventually("the session is gone", || async {
        call(&gw, &id, &token, "x").await.0 == 404
    })
    .await;
    let (code, body) = http(gw.client, "POST", "/v1/sessions", &[], b"{\"realm\": 1}").await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test]
async fn a_drain_reaches_an_http_session_as_a_goaway_event() {
    let b = backend("b1").await;
    let gw = gateway(&format!("{}{}", one_service(b.addr), admin_yaml())).await;
    let (id, token) = start(&gw, "7").await;
    let mut sse = Sse::open(
        gw.client,
        &format!("/v1/sessions/{id}/events"),
        &token,
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    admin(&gw, Some(OPERATE_TOKEN))
        .await
        .start_drain(pb::StartDrainRequest {
            request_id: "drain-sse".into(),
            deadline_ms: 2_000,
            spread_ms: 0,
            ..Default::default()
        })
        .await
        .expect("drain");
    let (_, event, data) = sse.next().await.expect("goaway");
    assert_eq!(event, "goaway", "{data}");
    assert!(data.contains("reconnect_after_ms"), "{data}");
    let (code, _) = http(gw.client, "POST", "/v1/sessions", &[], b"").await;
    assert_eq!(code, 503, "a draining gateway starts no session");
    let (_, event, data) = sse.next().await.expect("close at the deadline");
    assert_eq!(event, "close", "{data}");
}

/// A drained HTTP session continues on another gateway: the `goaway`
/// event's resume token starts the same session there (same id, backend
/// state kept); a token works once.
#[tokio::test]
async fn an_http_session_resumes_on_another_gateway_after_a_drain() {
    let b = backend("b1").await;
    let secret = scratch("resume", "key");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("secret");
    let body = format!(
        "{}{}resume: {{ secret_file: {} }}\n",
        one_service(b.addr),
        admin_yaml(),
        secret.display()
    );
    let (g0, g1) = (gateway(&body).await, gateway(&body).await);
    let (id, token) = start(&g0, "5").await;
    assert_eq!(call(&g0, &id, &token, "count").await.1, "1");
    let mut sse = Sse::open(
        g0.client,
        &format!("/v1/sessions/{id}/events"),
        &token,
        None,
    )
    .await;
    admin(&g0, Some(OPERATE_TOKEN))
        .await
        .start_drain(pb::StartDrainRequest {
            request_id: "move".into(),
            deadline_ms: 5_000,
            spread_ms: 0,
            ..Default::default()
        })
        .await
        .expect("drain");
    let (_, event, data) = sse.next().await.expect("goaway");
    assert_eq!(event, "goaway");
    let goaway: serde_json::Value = serde_json::from_str(&data).expect("json");
    let resume = goaway["resume_token"]
        .as_str()
        .expect("resume token")
        .to_string();
    let req = serde_json::json!({ "session_id": id, "resume_token": resume }).to_string();
    let (code, body) = http(
        g1.client,
        "POST",
        "/v1/sessions",
        &[("x-user-id", "5")],
        req.as_bytes(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["session_id"].as_str(), v["resumed"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    let token2 = v["session_token"].as_str().expect("token").to_string();
    assert_eq!(
        call(&g1, &id, &token2, "count").await.1,
        "2",
        "the backend kept the session"
    );
    let (code, _) = http(
        g1.client,
        "POST",
        "/v1/sessions",
        &[("x-user-id", "5")],
        req.as_bytes(),
    )
    .await;
    assert_ne!(code, 201, "a resume token works once");
}
