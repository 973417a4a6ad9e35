//! otp-dispatcher end to end: a real PostgreSQL with pg_otp, the dispatcher
//! binary, a fake WhatsApp Cloud API (wiremock) that checks the exact
//! request, and a real SMTP server on loopback.
//!
//! Run through scripts/test.sh, one test at a time (they share the outbox).

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use support::*;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const PHONE_NUMBER_ID: &str = "104857600";
const TOKEN: &str = "EAAGtest-token-never-logged";
const MESSAGES_PATH: &str = "/v21.0/104857600/messages";

fn accepted(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": "34600123478", "wa_id": "34600123478" }],
        "messages": [{ "id": id }]
    }))
}

fn graph_error(status: u16, code: i64) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": { "message": "test error", "type": "OAuthException", "code": code, "fbtrace_id": "AbC" }
    }))
}

/// A fake Graph API that answers every request with `response`.
async fn fake_whatsapp(response: impl Respond + 'static) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

/// A fake Graph API that answers the first `times` requests with `first`,
/// and every later one with `then`.
async fn fake_whatsapp_answering(
    first: ResponseTemplate,
    times: u64,
    then: ResponseTemplate,
) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(first)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(then)
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

/// The single-sender flags for `server`, without the pair limit: these
/// tests send many codes to one number in moments.
fn whatsapp_args(server: &MockServer) -> Vec<String> {
    whatsapp_args_paced(server, 0)
}

/// The single-sender flags with `pair_interval` seconds per message to one
/// number beyond a burst.
fn whatsapp_args_paced(server: &MockServer, pair_interval: u32) -> Vec<String> {
    vec![
        "--whatsapp-pair-interval-seconds".into(),
        pair_interval.to_string(),
        "--whatsapp-api-url".into(),
        format!("{}/v21.0", server.uri()),
        "--whatsapp-phone-number-id".into(),
        PHONE_NUMBER_ID.into(),
        "--whatsapp-token".into(),
        TOKEN.into(),
        "--whatsapp-template".into(),
        "payroll_code".into(),
        "--whatsapp-language".into(),
        "es".into(),
    ]
}

async fn start(args: &[String]) -> Dispatcher {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Dispatcher::start(&args).await
}

async fn setup() -> (tokio_postgres::Client, tokio_postgres::Client) {
    let db = connect("postgres").await;
    reset(&db).await;
    let app = connect(pg_otp_integration::APP).await;
    (db, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whatsapp_request_has_the_exact_shape_and_its_code_verifies() {
    let (db, app) = setup().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(MESSAGES_PATH))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(accepted("wamid.HBgLMzQ2MDAxMjM0NzgVAgARGBI"))
        .expect(1)
        .mount(&server)
        .await;
    let dispatcher = start(&whatsapp_args(&server)).await;

    assert_eq!(issue_for(&app, "it", "shape", "p1").await, "code_sent");
    assert_eq!(wait_until_final(&db, "shape").await, ["sent"]);

    let bodies = whatsapp_requests(&server).await;
    assert_eq!(bodies.len(), 1);
    let code = code_in(&bodies[0]);
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );
    let message_id: i64 = db
        .query_one(
            "SELECT id FROM otp.outbox WHERE conversation = 'shape'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bodies[0],
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "34600123478",
            "type": "template",
            "biz_opaque_callback_data": message_id.to_string(),
            "template": {
                "name": "payroll_code",
                "language": { "code": "es" },
                "components": [
                    { "type": "body", "parameters": [ { "type": "text", "text": code } ] },
                    { "type": "button", "sub_type": "url", "index": "0",
                      "parameters": [ { "type": "text", "text": code } ] }
                ]
            }
        })
    );
    let provider_ref: String = db
        .query_one(
            "SELECT provider_ref FROM otp.outbox WHERE conversation = 'shape'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(provider_ref, "wamid.HBgLMzQ2MDAxMjM0NzgVAgARGBI");
    // What the user received opens the session.
    assert_eq!(verify(&app, "shape", &code).await, "verified");
    // Neither the code nor the token ever reaches the logs.
    let logs = dispatcher.logs();
    assert!(
        logs.contains("delivered") && logs.contains("***78"),
        "{logs}"
    );
    assert!(
        !logs.contains(&code) && !logs.contains(TOKEN) && !logs.contains("600 12"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retryable_failure_is_retried_then_delivered() {
    let (db, app) = setup().await;
    let server =
        fake_whatsapp_answering(graph_error(503, 131000), 1, accepted("wamid.retry")).await;
    let dispatcher = start(&whatsapp_args(&server)).await;

    issue_for(&app, "it", "retry", "p1").await;
    assert_eq!(wait_until_final(&db, "retry").await, ["sent"]);
    let row = db
        .query_one(
            "SELECT attempt, last_error FROM otp.outbox WHERE conversation = 'retry'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert!(row.get::<_, String>(1).contains("131000"));
    let bodies = whatsapp_requests(&server).await;
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        code_in(&bodies[0]),
        code_in(&bodies[1]),
        "a retry carries the same code"
    );
    let logs = dispatcher.logs();
    assert!(logs.contains("retryable=true"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_whatsapp_failure_falls_back_to_email() {
    let (db, app) = setup().await;
    let server = fake_whatsapp(graph_error(400, 131026)).await;
    let smtp = SmtpSink::start().await;
    let mut args = whatsapp_args(&server);
    args.extend([
        "--smtp-url".into(),
        smtp.url(),
        "--email-from".into(),
        "Payroll <no-reply@example.com>".into(),
    ]);
    let dispatcher = start(&args).await;

    issue_for(&app, "it", "fallback", "p1").await;
    assert_eq!(wait_until_final(&db, "fallback").await, ["failed", "sent"]);
    let status = app
        .query_one(
            "SELECT status, channel, destination_hint, delivery FROM otp_status('it', 'fallback')",
            &[],
        )
        .await
        .unwrap();
    let status: (String, String, String, String) =
        (status.get(0), status.get(1), status.get(2), status.get(3));
    assert_eq!(
        status,
        (
            "pending".into(),
            "email".into(),
            "p***@example.com".into(),
            "sent".into()
        )
    );

    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    let whatsapp_code = code_in(&whatsapp_requests(&server).await[0]);
    assert!(mail.contains("To: p.one@example.com"), "{mail}");
    assert!(
        mail.contains("From: Payroll <no-reply@example.com>"),
        "{mail}"
    );
    assert!(
        mail.contains("Subject: Your verification code\r\n"),
        "the subject must not hold the code: {mail}"
    );
    assert!(
        mail.contains("multipart/alternative")
            && mail.contains("text/plain")
            && mail.contains("text/html")
    );
    assert!(
        mail.contains(&format!("Your verification code is {whatsapp_code}.")),
        "the same code: {mail}"
    );
    assert!(
        mail.contains("It expires in 5 minutes") && mail.contains("If you did not ask for a code"),
        "{mail}"
    );
    assert_eq!(verify(&app, "fallback", &whatsapp_code).await, "verified");
    assert!(!dispatcher.logs().contains(&whatsapp_code));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smtp_replies_map_to_retry_or_permanent_failure() {
    let (db, app) = setup().await;
    let smtp = SmtpSink::start().await;
    let args = [
        "--smtp-url".to_owned(),
        smtp.url(),
        "--email-from".into(),
        "no-reply@example.com".into(),
    ];
    let _dispatcher = start(&args).await;

    issue_for(&app, "it", "smtp-451", "flaky").await;
    issue_for(&app, "it", "smtp-550", "nobody").await;
    assert_eq!(wait_until_final(&db, "smtp-451").await, ["sent"]);
    assert_eq!(wait_until_final(&db, "smtp-550").await, ["failed"]);
    let attempts: i32 = db
        .query_one(
            "SELECT attempt FROM otp.outbox WHERE conversation = 'smtp-451'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2, "451 is retried");
    let error: String = db
        .query_one(
            "SELECT last_error FROM otp.outbox WHERE conversation = 'smtp-550'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("550"), "{error}");
    assert_eq!(smtp.messages().len(), 1);
}

/// Records when each request arrived.
#[derive(Clone, Default)]
struct ArrivalLog(Arc<Mutex<Vec<SystemTime>>>);

impl Respond for ArrivalLog {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.0.lock().unwrap().push(SystemTime::now());
        graph_error(503, 131016)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_that_expires_while_retrying_is_never_sent_late() {
    let (db, app) = setup().await;
    db.batch_execute(
        "SELECT otp_configure(agent => 'short', source => 'people', id_column => 'id',
                              phone_column => 'phone', code_ttl => '4 seconds')",
    )
    .await
    .unwrap();
    let arrivals = ArrivalLog::default();
    let server = fake_whatsapp(arrivals.clone()).await;
    let mut args = whatsapp_args(&server);
    args.extend(["--expiry-margin-seconds".into(), "1".into()]);
    let dispatcher = start(&args).await;

    issue_for(&app, "short", "late", "p1").await;
    assert_eq!(wait_until_final(&db, "late").await, ["expired"]);
    let expires_at: SystemTime = db
        .query_one(
            "SELECT expires_at FROM otp.outbox WHERE conversation = 'late'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let arrivals = arrivals.0.lock().unwrap().clone();
    assert!(!arrivals.is_empty(), "it was tried at least once");
    for arrival in &arrivals {
        assert!(
            *arrival < expires_at - Duration::from_millis(500),
            "a request arrived too close to expiry"
        );
    }
    let delivery: String = db
        .query_one(
            "SELECT delivery FROM otp.challenge WHERE conversation = 'late'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(delivery, "expired");
    drop(dispatcher);
}

/// Meta's business-consumer pair limit, as the Cloud API applies it: one
/// message to a number per `interval`, with bursts of `burst` that borrow
/// from later; beyond, error 131056 (retryable: the message spends an
/// attempt).
#[derive(Clone)]
struct PairLimit {
    interval: Duration,
    burst: u32,
    next: Arc<Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    refused: Arc<Mutex<u32>>,
}

impl PairLimit {
    fn new(interval: Duration, burst: u32) -> Self {
        Self {
            interval,
            burst,
            next: Arc::default(),
            refused: Arc::default(),
        }
    }
}

impl Respond for PairLimit {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let to = body["to"].as_str().unwrap_or_default().to_owned();
        let now = std::time::Instant::now();
        let mut schedule = self.next.lock().unwrap();
        let next = schedule.get(&to).map_or(now, |next| (*next).max(now));
        if next > now + self.interval * (self.burst - 1) {
            *self.refused.lock().unwrap() += 1;
            return graph_error(400, 131056);
        }
        schedule.insert(to, next + self.interval);
        accepted("wamid.pair")
    }
}

/// The dispatcher's burst of messages to one number (pace::PAIR_BURST).
const PAIR_BURST: u32 = 10;

/// Twelve codes to one number in a moment: the first ten go at once, the
/// next two wait for the pair interval instead of being refused by Meta and
/// spending an attempt. Without pacing all twelve went out at once; the
/// eleventh and twelfth were refused with 131056 and sent again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_beyond_a_burst_to_one_number_wait_for_the_pair_interval() {
    let (db, app) = setup().await;
    // The fake allows one per second after the burst; the dispatcher keeps
    // three (two seconds of margin for a slow request).
    let meta = PairLimit::new(Duration::from_secs(1), PAIR_BURST);
    let server = fake_whatsapp(meta.clone()).await;
    let dispatcher = start(&whatsapp_args_paced(&server, 3)).await;

    let conversations: Vec<String> = (0..PAIR_BURST + 2).map(|n| format!("pair-{n}")).collect();
    for conversation in &conversations {
        assert_eq!(issue_for(&app, "it", conversation, "p1").await, "code_sent");
    }
    for conversation in &conversations {
        assert_eq!(wait_until_final(&db, conversation).await, ["sent"]);
    }
    let attempts: i64 = db
        .query_one(
            "SELECT max(attempt) FROM otp.outbox WHERE conversation LIKE 'pair-%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, Option<i32>>(0)
        .map(i64::from)
        .unwrap();
    assert_eq!(attempts, 1, "no attempt was spent on the pair limit");
    assert_eq!(*meta.refused.lock().unwrap(), 0);
    assert_eq!(whatsapp_requests(&server).await.len(), conversations.len());
    drop(dispatcher);
}

/// A code whose turn would come after it expires is not sent: after a
/// burst to one number, the next code would wait 10 s for the pair
/// interval, and it expires in 4 s (less the 1 s margin).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_that_would_expire_waiting_for_its_turn_is_not_sent() {
    let (db, app) = setup().await;
    db.batch_execute(
        "SELECT otp_configure(agent => 'short', source => 'people', id_column => 'id',
                              phone_column => 'phone', code_ttl => '4 seconds',
                              max_codes => 1000000, resend_cooldown => '0')",
    )
    .await
    .unwrap();
    let server = fake_whatsapp(accepted("wamid.turn")).await;
    let mut args = whatsapp_args_paced(&server, 10);
    args.extend(["--expiry-margin-seconds".into(), "1".into()]);
    let dispatcher = start(&args).await;

    for n in 0..PAIR_BURST {
        let conversation = format!("turn-{n}");
        issue_for(&app, "it", &conversation, "p1").await;
        assert_eq!(wait_until_final(&db, &conversation).await, ["sent"]);
    }
    assert_eq!(
        issue_for(&app, "short", "turn-late", "p1").await,
        "code_sent"
    );
    assert_eq!(wait_until_final(&db, "turn-late").await, ["expired"]);
    assert_eq!(
        whatsapp_requests(&server).await.len(),
        PAIR_BURST as usize,
        "the late code never reached the provider"
    );
    let logs = dispatcher.logs();
    assert!(
        logs.contains("code would expire before the sender's turn"),
        "{logs}"
    );
}

/// A sender paced too slowly for the sends in flight to get their turn
/// within the lease is refused at start, with the sender named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pace_that_cannot_keep_the_lease_is_refused_at_start() {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_otp-dispatcher"))
        .args([
            "--database-url",
            "host=/nonexistent user=nobody",
            "--whatsapp-phone-number-id",
            PHONE_NUMBER_ID,
            "--whatsapp-token",
            TOKEN,
            "--whatsapp-rate",
            "1",
            "--concurrency",
            "64",
        ])
        .env_remove("OTP_CONSOLE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Were the pace accepted, it would keep trying to reach the database.
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the dispatcher did not refuse the pace")
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("otp-dispatcher: WhatsApp sender \"default\": 64 sends in flight")
            && stderr.contains("lower --concurrency"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dispatcher_survives_a_database_restart() {
    let (db, app) = setup().await;
    let server = fake_whatsapp(accepted("wamid.restart")).await;
    let dispatcher = start(&whatsapp_args(&server)).await;
    issue_for(&app, "it", "before-restart", "p1").await;
    assert_eq!(wait_until_final(&db, "before-restart").await, ["sent"]);
    drop((db, app));

    // blocking, but nothing else runs on this test's runtime meanwhile
    pg_otp_integration::pg_ctl(&["-m", "fast", "restart"]);

    wait_for("the dispatcher to reconnect", WAIT, async || {
        (dispatcher.logs().matches("listening on otp_outbox").count() >= 2).then_some(())
    })
    .await;
    let db = connect("postgres").await;
    let app = connect(pg_otp_integration::APP).await;
    issue_for(&app, "it", "after-restart", "p1").await;
    assert_eq!(wait_until_final(&db, "after-restart").await, ["sent"]);
    assert_eq!(
        whatsapp_requests(&server).await.len(),
        2,
        "one send each, none repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_deliver_every_message_exactly_once() {
    const MESSAGES: usize = 200;
    let (db, app) = setup().await;
    let server = fake_whatsapp(accepted("wamid.pair")).await;
    let first = start(&whatsapp_args(&server)).await;
    let second = start(&whatsapp_args(&server)).await;

    for n in 0..MESSAGES {
        issue_for(&app, "it", &format!("pair-{n}"), "p1").await;
    }
    wait_for("every message to be sent", WAIT, async || {
        let sent: i64 = db
            .query_one("SELECT count(*) FROM otp.outbox WHERE state = 'sent'", &[])
            .await
            .unwrap()
            .get(0);
        (sent as usize == MESSAGES).then_some(())
    })
    .await;
    let bodies = whatsapp_requests(&server).await;
    let ids: HashSet<&str> = bodies
        .iter()
        .map(|b| b["biz_opaque_callback_data"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), MESSAGES, "no message sent twice");
    assert_eq!(ids.len(), MESSAGES);
    let by_first = first.logs().matches("delivered").count();
    let by_second = second.logs().matches("delivered").count();
    assert_eq!(by_first + by_second, MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_dispatchers_messages_are_delivered_by_another_after_the_lease() {
    let (db, app) = setup().await;
    // The first requests hang, as if the provider were slow when the process died.
    let hanging = accepted("wamid.never").set_delay(Duration::from_secs(60));
    let server = fake_whatsapp_answering(hanging, 3, accepted("wamid.rescued")).await;
    let mut args = whatsapp_args(&server);
    args.extend(["--lease-seconds".into(), "2".into()]);
    let doomed = start(&args).await;
    for n in 0..3 {
        issue_for(&app, "it", &format!("killed-{n}"), "p1").await;
    }
    wait_for("the doomed dispatcher to be mid-send", WAIT, async || {
        (whatsapp_requests(&server).await.len() == 3).then_some(())
    })
    .await;
    doomed.kill_hard();

    let _rescuer = start(&args).await;
    for n in 0..3 {
        assert_eq!(
            wait_until_final(&db, &format!("killed-{n}")).await,
            ["sent"]
        );
    }
    let rows = db
        .query("SELECT attempt, provider_ref, sent_at < expires_at FROM otp.outbox WHERE conversation LIKE 'killed-%'", &[])
        .await
        .unwrap();
    for row in rows {
        assert_eq!(row.get::<_, i32>(0), 2, "claimed again after the lease");
        assert_eq!(row.get::<_, String>(1), "wamid.rescued");
        assert!(row.get::<_, bool>(2), "delivered while the code was valid");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_sends_in_flight_before_exiting() {
    let (db, app) = setup().await;
    let server =
        fake_whatsapp(accepted("wamid.graceful").set_delay(Duration::from_millis(1500))).await;
    let dispatcher = start(&whatsapp_args(&server)).await;
    issue_for(&app, "it", "graceful", "p1").await;
    wait_for("the send to be in flight", WAIT, async || {
        (whatsapp_requests(&server).await.len() == 1).then_some(())
    })
    .await;
    let status = dispatcher.terminate().await;
    assert!(status.success(), "{status:?}");
    // It reported before exiting: nothing is left to a lease.
    assert_eq!(message_states(&db, "graceful").await, ["sent"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_deliveries_and_failures() {
    let (db, app) = setup().await;
    let server = fake_whatsapp(graph_error(400, 131026)).await;
    let port = free_port();
    let mut args = whatsapp_args(&server);
    args.extend([
        "--console".into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{port}"),
    ]);
    let dispatcher = start(&args).await;

    // WhatsApp fails for good; the fallback email has no SMTP, so the console takes it.
    issue_for(&app, "it", "metrics", "p1").await;
    assert_eq!(wait_until_final(&db, "metrics").await, ["failed", "sent"]);
    let printed = dispatcher.output();
    assert!(
        printed.contains("\"channel\":\"email\"")
            && printed.contains("\"to\":\"p.one@example.com\""),
        "{printed}"
    );

    let body = reqwest_free_get(port, "/metrics").await;
    assert!(
        body.contains(r#"otp_dispatcher_sent_total{channel="email"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(
            r#"otp_dispatcher_failed_total{channel="whatsapp",reason="whatsapp_131026"} 1"#
        ),
        "{body}"
    );
    assert!(
        body.contains("otp_dispatcher_claim_to_send_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.contains("otp_dispatcher_database_connected 1"),
        "{body}"
    );
}

/// A plain HTTP/1.0 GET on loopback.
async fn reqwest_free_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_to_start_without_a_transport() {
    let output = Command::new(env!("CARGO_BIN_EXE_otp-dispatcher"))
        .args(["--database-url", "host=/nonexistent user=nobody"])
        .env_remove("OTP_CONSOLE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no transport configured"), "{stderr}");
}

/// A role with CREATE on `public` plants `otp_outbox_claim(text, interval)`
/// next to pg_otp's `(integer, interval)`. 0.2.0's dispatcher sent an
/// untyped parameter, which PostgreSQL resolved to the planted function: it
/// claimed nothing and no code was ever delivered. Every statement of the
/// dispatcher now names its parameter types.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overload_planted_in_public_does_not_capture_the_claim() {
    let (db, app) = setup().await;
    db.batch_execute(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'it_plain') THEN CREATE ROLE it_plain LOGIN; END IF;
         END $$;
         DROP FUNCTION IF EXISTS public.otp_outbox_claim(text, interval);
         GRANT CREATE ON SCHEMA public TO it_plain;",
    )
    .await
    .unwrap();
    let plain = connect("it_plain").await;
    plain
        .batch_execute(
            "CREATE FUNCTION public.otp_outbox_claim(batch_size text, lease interval)
                 RETURNS TABLE(message_id bigint, channel text, destination text, code text,
                               expires_at timestamptz, attempt int)
                 LANGUAGE sql AS 'SELECT NULL::bigint, NULL, NULL, NULL, NULL::timestamptz, NULL::int WHERE false'",
        )
        .await
        .unwrap();
    let server = fake_whatsapp(accepted("wamid.planted")).await;
    let dispatcher = start(&whatsapp_args(&server)).await;
    assert_eq!(issue_for(&app, "it", "planted", "p1").await, "code_sent");
    let states = wait_until_final(&db, "planted").await;
    db.batch_execute(
        "DROP FUNCTION public.otp_outbox_claim(text, interval);
         REVOKE CREATE ON SCHEMA public FROM it_plain;",
    )
    .await
    .unwrap();
    assert_eq!(states, ["sent"], "{}", dispatcher.logs());
    assert_eq!(whatsapp_requests(&server).await.len(), 1);
}

/// Secrets given on the command line are visible to every user in `ps`; the
/// `*_FILE` variants read them from files instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_can_come_from_files_and_stay_out_of_the_command_line() {
    let (db, app) = setup().await;
    let server = fake_whatsapp(accepted("wamid.files")).await;
    let smtp = SmtpSink::start().await;
    let dir = scratch_dir("secrets");
    let write = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let database_url = write("database-url", &dispatcher_url().await);
    let token = write("token", TOKEN);
    let smtp_url = write("smtp-url", &smtp.url());
    let args: Vec<String> = vec![
        "--database-url-file".into(),
        database_url,
        "--whatsapp-api-url".into(),
        format!("{}/v21.0", server.uri()),
        "--whatsapp-phone-number-id".into(),
        PHONE_NUMBER_ID.into(),
        "--whatsapp-token-file".into(),
        token,
        "--smtp-url-file".into(),
        smtp_url,
        "--email-from".into(),
        "Payroll <no-reply@example.com>".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dispatcher = Dispatcher::start_without_url(&args).await;
    let command_line = std::fs::read(format!("/proc/{}/cmdline", dispatcher.pid())).unwrap();
    let command_line = String::from_utf8_lossy(&command_line);
    assert!(
        !command_line.contains(TOKEN)
            && !command_line.contains("user=")
            && !command_line.contains("smtp://"),
        "{command_line}"
    );
    assert_eq!(issue_for(&app, "it", "from-files", "p1").await, "code_sent");
    assert_eq!(
        issue_for(&app, "it", "from-files-mail", "p2").await,
        "code_sent"
    );
    assert_eq!(wait_until_final(&db, "from-files").await, ["sent"]);
    assert_eq!(wait_until_final(&db, "from-files-mail").await, ["sent"]);
    let request = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        request
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("Bearer {TOKEN}"),
        "the token is read without its trailing newline"
    );
    assert_eq!(smtp.messages().len(), 1);
}

/// An application that keeps a verification's transaction open holds that
/// challenge; the dispatcher's report about its code must not hold up
/// everyone else's deliveries meanwhile (the report waits for later).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_challenge_held_by_the_application_does_not_stall_other_deliveries() {
    let (db, app) = setup().await;
    // A slow provider: the application's verification starts while the
    // held code is still being sent.
    let server = fake_whatsapp(accepted("wamid.slow").set_delay(Duration::from_millis(1500))).await;
    let _dispatcher = start(&whatsapp_args(&server)).await;
    assert_eq!(issue_for(&app, "it", "held", "p1").await, "code_sent");
    wait_for("the held code to be claimed", WAIT, async || {
        (message_states(&db, "held").await == ["sending"]).then_some(())
    })
    .await;
    let holder = connect(pg_otp_integration::APP).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let guess: String = holder
        .query_one("SELECT status FROM otp_verify('it', 'held', '000000')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(guess == "incorrect" || guess == "locked", "{guess}");
    // While the application holds it, another person's code goes out and
    // is reported.
    db.batch_execute(
        "INSERT INTO people VALUES ('wa-other', '+34 600 77 88 78', NULL) ON CONFLICT DO NOTHING",
    )
    .await
    .unwrap();
    assert_eq!(
        issue_for(&app, "it", "not-held", "wa-other").await,
        "code_sent"
    );
    assert_eq!(wait_until_final(&db, "not-held").await, ["sent"]);
    holder.batch_execute("COMMIT").await.unwrap();
    // and the held one's report lands once the application lets go
    assert_eq!(wait_until_final(&db, "held").await, ["sent"]);
}
