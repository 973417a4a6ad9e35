//! WhatsApp status webhooks against the running binary: Meta's handshake,
//! signed bodies in Meta's shapes, everything that must change nothing,
//! statuses out of order and repeated, and the late failure that sends the
//! same code by email to a real SMTP server.
//!
//! Run through scripts/test.sh, one test at a time (they share the outbox).

mod support;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const VERIFY_TOKEN: &str = "verify-token-for-tests";
const APP_SECRET: &str = "app-secret-for-tests";

/// A fake Graph API that accepts every message, each with its own wamid.
async fn fake_whatsapp() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(|request: &wiremock::Request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let id = body["biz_opaque_callback_data"].as_str().unwrap();
            ResponseTemplate::new(200).set_body_json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{ "input": body["to"], "wa_id": body["to"] }],
                "messages": [{ "id": format!("wamid.test{id}") }]
            }))
        })
        .mount(&server)
        .await;
    server
}

struct Setup {
    db: tokio_postgres::Client,
    app: tokio_postgres::Client,
    whatsapp: MockServer,
    webhook: String,
    metrics: String,
    _dispatcher: Dispatcher,
}

async fn setup(extra: &[String]) -> Setup {
    // the test's own HTTP client (reqwest, rustls without a default provider)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = connect("postgres").await;
    reset(&db).await;
    db.batch_execute(
        "INSERT INTO people VALUES ('wa-only', '+34 600 55 44 78', NULL) ON CONFLICT DO NOTHING",
    )
    .await
    .unwrap();
    let app = connect(pg_otp_integration::APP).await;
    let whatsapp = fake_whatsapp().await;
    let port = free_port();
    let metrics_port = free_port();
    let mut args: Vec<String> = vec![
        "--whatsapp-api-url".into(),
        format!("{}/v21.0", whatsapp.uri()),
        "--whatsapp-phone-number-id".into(),
        "104857600".into(),
        "--whatsapp-token".into(),
        "EAAGtest".into(),
        // many codes to one number in moments: no pair limit
        "--whatsapp-pair-interval-seconds".into(),
        "0".into(),
        "--webhook-listen".into(),
        format!("127.0.0.1:{port}"),
        "--webhook-verify-token".into(),
        VERIFY_TOKEN.into(),
        "--whatsapp-app-secret".into(),
        APP_SECRET.into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dispatcher = Dispatcher::start(&args).await;
    Setup {
        db,
        app,
        whatsapp,
        webhook: format!("http://127.0.0.1:{port}/webhooks/whatsapp"),
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        _dispatcher: dispatcher,
    }
}

fn email_args(smtp: &SmtpSink) -> [String; 4] {
    [
        "--smtp-url".into(),
        smtp.url(),
        "--email-from".into(),
        "Payroll <no-reply@example.com>".into(),
    ]
}

/// A status webhook body as Meta sends it.
fn status_body(wamid: &str, message_id: i64, status: &str, error_code: Option<i64>) -> Vec<u8> {
    let mut status_object = json!({
        "id": wamid,
        "status": status,
        "timestamp": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string(),
        "recipient_id": "34600123478",
        "biz_opaque_callback_data": message_id.to_string(),
    });
    if status != "failed" {
        status_object["conversation"] =
            json!({ "id": "CONVERSATION_ID", "origin": { "type": "authentication" } });
        status_object["pricing"] = json!({ "billable": true, "pricing_model": "PMP", "category": "authentication", "type": "regular" });
    }
    if let Some(code) = error_code {
        status_object["errors"] = json!([{
            "code": code,
            "title": "Message undeliverable.",
            "message": "Message undeliverable.",
            "error_data": { "details": "Message Undeliverable." },
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
        }]);
    }
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": "15550783881", "phone_number_id": "104857600" },
                    "statuses": [status_object]
                },
                "field": "messages"
            }]
        }]
    }))
    .unwrap()
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body` with `signature` (None: no header); the HTTP status.
async fn post(url: &str, body: Vec<u8>, signature: Option<String>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn post_signed(url: &str, body: Vec<u8>) -> u16 {
    let signature = signature(APP_SECRET, &body);
    post(url, body, Some(signature)).await
}

/// Issues a code for `person` and waits until WhatsApp accepted it; the
/// message id and its wamid.
async fn sent(setup: &Setup, conversation: &str, person: &str) -> (i64, String) {
    assert_eq!(
        issue_for(&setup.app, "it", conversation, person).await,
        "code_sent"
    );
    assert_eq!(wait_until_final(&setup.db, conversation).await, ["sent"]);
    let row = setup
        .db
        .query_one(
            "SELECT id, provider_ref FROM otp.outbox WHERE conversation = $1",
            &[&conversation],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn outbox(db: &tokio_postgres::Client, conversation: &str) -> Vec<(String, String)> {
    db.query(
        "SELECT channel, state FROM otp.outbox WHERE conversation = $1 ORDER BY id",
        &[&conversation],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

async fn delivery(
    app: &tokio_postgres::Client,
    conversation: &str,
) -> (String, String, String, bool) {
    let row = app
        .query_one(
            "SELECT channel, destination_hint, delivery, primary_device_only FROM otp_status('it', $1)",
            &[&conversation],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

async fn metrics(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_handshake_echoes_the_challenge_only_for_the_right_token() {
    let setup = setup(&[]).await;
    let get = |query: String| {
        let url = format!("{}?{query}", setup.webhook);
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(
        get(format!(
            "hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
        ))
        .await,
        (200, "1158201444".to_owned())
    );
    assert_eq!(
        get("hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1158201444".to_owned())
            .await
            .0,
        403
    );
    assert_eq!(
        get(format!(
            "hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"
        ))
        .await
        .0,
        403
    );
    assert_eq!(get("hub.challenge=1".to_owned()).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsigned_oversized_or_malformed_requests_change_nothing() {
    let setup = setup(&[]).await;
    let (id, wamid) = sent(&setup, "hook-refused", "wa-only").await;
    let body = status_body(&wamid, id, "delivered", None);
    // no signature, a wrong one, one made with another secret, one for another body
    assert_eq!(post(&setup.webhook, body.clone(), None).await, 401);
    assert_eq!(
        post(&setup.webhook, body.clone(), Some("sha256=00".into())).await,
        401
    );
    assert_eq!(
        post(
            &setup.webhook,
            body.clone(),
            Some(signature("another-secret", &body))
        )
        .await,
        401
    );
    let other = status_body(&wamid, id, "read", None);
    assert_eq!(
        post(
            &setup.webhook,
            body.clone(),
            Some(signature(APP_SECRET, &other))
        )
        .await,
        401
    );
    // 2 MiB, correctly signed: refused before it is read
    let mut big = body.clone();
    big.resize(2 * 1024 * 1024, b' ');
    assert_eq!(post_signed(&setup.webhook, big).await, 413);
    // signed, but not JSON, or not said to be
    assert_eq!(
        post_signed(&setup.webhook, b"{\"object\": ".to_vec()).await,
        400
    );
    let form = reqwest::Client::new()
        .post(&setup.webhook)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-hub-signature-256", signature(APP_SECRET, &body))
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(form, 415);
    assert_eq!(
        outbox(&setup.db, "hook-refused").await,
        [("whatsapp".into(), "sent".into())]
    );
    let scraped = metrics(&setup.metrics).await;
    assert!(
        scraped.contains(r#"otp_dispatcher_webhook_requests_total{outcome="bad_signature"} 4"#)
            && scraped.contains(r#"otp_dispatcher_webhook_requests_total{outcome="malformed"} 2"#),
        "{scraped}"
    );
    // Anyone can send unsigned requests: the log notes them at most once
    // a minute, with their number, and does not fill up.
    let logs = setup._dispatcher.logs();
    assert_eq!(
        logs.matches("refused webhook requests without a valid signature")
            .count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains("refused a webhook request with"), "{logs}");
    // and the genuine one counts
    assert_eq!(post_signed(&setup.webhook, body).await, 200);
    assert_eq!(
        outbox(&setup.db, "hook-refused").await,
        [("whatsapp".into(), "delivered".into())]
    );
}

/// A request without a signature is answered before its body is read: a
/// client that announces a large body and never sends it holds no memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsigned_request_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let setup = setup(&[]).await;
    let address = setup
        .webhook
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(
            b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 500000\r\n\r\n{\"object\":",
        )
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    // The body never comes: only an answer that does not wait for it arrives.
    tokio::time::timeout(WAIT, stream.read_exact(&mut answer))
        .await
        .expect("the server waited for the body of an unsigned request")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
}

/// Every ordered pair of statuses, each on a message of its own: the state
/// only moves forward, and a failure is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statuses_in_any_order_and_repeated_only_move_forward() {
    let setup = setup(&[]).await;
    const STATUSES: [&str; 4] = ["sent", "delivered", "read", "failed"];
    // The model: sent < delivered < read; failed only from sent, then for good.
    let apply = |state: &'static str, status: &'static str| -> &'static str {
        let rank = |s: &str| STATUSES.iter().position(|x| *x == s).unwrap();
        match (state, status) {
            ("failed", _) => "failed",
            ("sent", "failed") => "failed",
            (_, "failed") => state,
            _ if rank(status) > rank(state) => status,
            _ => state,
        }
    };
    let mut pair = 0;
    for first in STATUSES {
        for second in STATUSES {
            pair += 1;
            let conversation = format!("hook-pair-{pair}");
            let (id, wamid) = sent(&setup, &conversation, "wa-only").await;
            for status in [first, second, second] {
                let code = (status == "failed").then_some(131026);
                assert_eq!(
                    post_signed(&setup.webhook, status_body(&wamid, id, status, code)).await,
                    200
                );
            }
            let expected = apply(apply("sent", first), second);
            assert_eq!(
                outbox(&setup.db, &conversation).await,
                [("whatsapp".to_owned(), expected.to_owned())],
                "{first} then {second}"
            );
            assert_eq!(
                delivery(&setup.app, &conversation).await.2,
                expected,
                "{first} then {second}"
            );
        }
    }
    // an id nobody knows is acknowledged and counted
    assert_eq!(
        post_signed(
            &setup.webhook,
            status_body("wamid.nobody", 0, "delivered", None)
        )
        .await,
        200
    );
    let scraped = metrics(&setup.metrics).await;
    assert!(
        scraped.contains(
            r#"otp_dispatcher_webhook_statuses_total{status="delivered",outcome="unknown"} 1"#
        ),
        "{scraped}"
    );
}

/// WhatsApp took the message, then said the number cannot receive it: the
/// same code goes by email at once, verifies, and the story is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_whatsapp_failure_sends_the_same_code_by_email() {
    let smtp = SmtpSink::start().await;
    let setup = setup(&email_args(&smtp)).await;
    let (id, wamid) = sent(&setup, "hook-late", "p1").await;
    assert_eq!(
        delivery(&setup.app, "hook-late").await,
        ("whatsapp".into(), "***78".into(), "sent".into(), true)
    );
    let whatsapp_code = {
        let requests = setup.whatsapp.received_requests().await.unwrap();
        code_in(&serde_json::from_slice(&requests.last().unwrap().body).unwrap())
    };

    assert_eq!(
        post_signed(
            &setup.webhook,
            status_body(&wamid, id, "failed", Some(131026))
        )
        .await,
        200
    );
    assert_eq!(
        wait_until_final(&setup.db, "hook-late").await,
        ["failed", "sent"]
    );
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("To: p.one@example.com"), "{}", mails[0]);
    assert!(
        mails[0].contains(&format!("Your verification code is {whatsapp_code}.")),
        "the same code: {}",
        mails[0]
    );
    assert_eq!(
        delivery(&setup.app, "hook-late").await,
        (
            "email".into(),
            "p***@example.com".into(),
            "sent".into(),
            false
        )
    );
    // a second failure of the same message triggers nothing more
    assert_eq!(
        post_signed(
            &setup.webhook,
            status_body(&wamid, id, "failed", Some(131026))
        )
        .await,
        200
    );
    assert_eq!(
        outbox(&setup.db, "hook-late").await,
        [
            ("whatsapp".into(), "failed".into()),
            ("email".into(), "sent".into())
        ]
    );
    assert_eq!(
        verify(&setup.app, "hook-late", &whatsapp_code).await,
        "verified"
    );
    let events: Vec<String> = setup
        .app
        .query(
            "SELECT event || ':' || coalesce(channel, '') FROM otp_events('it', 'p1') WHERE conversation = 'hook-late' ORDER BY at, event",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for expected in [
        "issued:whatsapp",
        "delivered:whatsapp",
        "delivery_failed:whatsapp",
        "delivered:email",
        "verified:email",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} in {events:?}"
        );
    }
    let scraped = metrics(&setup.metrics).await;
    assert!(
        scraped.contains("otp_dispatcher_webhook_fallbacks_total 1"),
        "{scraped}"
    );
    assert!(!setup._dispatcher.logs().contains(&whatsapp_code));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_after_the_code_expired_sends_nothing() {
    let smtp = SmtpSink::start().await;
    let setup = setup(&email_args(&smtp)).await;
    let (id, wamid) = sent(&setup, "hook-expired", "p1").await;
    setup
        .db
        .batch_execute(
            "UPDATE otp.outbox SET expires_at = now() - interval '1 second' WHERE conversation = 'hook-expired';
             UPDATE otp.challenge SET expires_at = now() - interval '1 second' WHERE conversation = 'hook-expired';",
        )
        .await
        .unwrap();
    assert_eq!(
        post_signed(
            &setup.webhook,
            status_body(&wamid, id, "failed", Some(131026))
        )
        .await,
        200
    );
    // the 200 came after the commit: what it did is already visible
    assert_eq!(
        outbox(&setup.db, "hook-expired").await,
        [("whatsapp".into(), "failed".into())]
    );
    assert!(smtp.messages().is_empty());
}
