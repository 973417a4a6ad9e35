//! A platform of agents: each agent's messages go out through its own
//! senders (two fake Graph API endpoints with their own phone number ids and
//! tokens, two real SMTP servers), with its own template, language, From and
//! texts, in each person's language when their record names one; the
//! configuration reloads on SIGHUP without losing or repeating a message;
//! and a broken configuration is refused at start-up with one line.
//!
//! Run through scripts/test.sh, one test at a time (they share the outbox).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mail_parser::MessageParser;
use serde_json::{json, Value};
use support::*;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const HR_PHONE_ID: &str = "111000111";
const HR_TOKEN: &str = "EAAG-hr-token-never-logged";
const CLIENTS_PHONE_ID: &str = "222000222";
const CLIENTS_TOKEN: &str = "EAAG-clients-token-never-logged";

/// Accepts every message, with a message id derived from the outbox id.
struct Accept;

impl Respond for Accept {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": body["to"], "wa_id": body["to"] }],
            "messages": [{ "id": format!("wamid.{}", body["biz_opaque_callback_data"].as_str().unwrap()) }]
        }))
    }
}

/// A fake Graph API for one phone number id and token: anything else is
/// not matched (wiremock answers 404, a permanent failure).
async fn graph(phone_number_id: &str, token: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{phone_number_id}/messages")))
        .and(header("authorization", format!("Bearer {token}").as_str()))
        .respond_with(Accept)
        .mount(&server)
        .await;
    server
}

/// People of two businesses in one table, with a language column.
async fn setup() -> (tokio_postgres::Client, tokio_postgres::Client) {
    let db = connect("postgres").await;
    reset(&db).await;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS platform_people (id text PRIMARY KEY, phone text, email text, lang text,
                                                      tz text);
         TRUNCATE platform_people;
         -- (zones without summer time, so that the abbreviations are fixed)
         INSERT INTO platform_people VALUES
             ('hr-es',    NULL,              'ana@hr.example', 'es-mx', 'Asia/Tokyo'),
             ('hr-none',  NULL,              'bo@hr.example',  NULL,    NULL),
             ('hr-phone', '+52 55 1000 0003', NULL,            'es-MX', NULL),
             ('hr-both',  '+52 55 1000 0004', 'di@hr.example', NULL,    NULL),
             ('cl-es',    '+52 55 2000 0001', NULL,            'es',    NULL),
             ('cl-mail',  NULL,              'eve@client.example', NULL, NULL);
         SELECT otp_configure(agent => 'payroll', source => 'platform_people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email', language_column => 'lang', time_zone_column => 'tz',
                              preferred_channel => 'email', max_codes => 100000, resend_cooldown => '0');
         SELECT otp_configure(agent => 'clients', source => 'platform_people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email', language_column => 'lang', time_zone_column => 'tz',
                              preferred_channel => 'whatsapp', max_codes => 100000, resend_cooldown => '0');",
    )
    .await
    .unwrap();
    let app = connect(pg_otp_integration::APP).await;
    (db, app)
}

/// Writes the configuration file (and the clients' token file next to it).
fn write_config(dir: &Path, config: &str) -> PathBuf {
    std::fs::write(dir.join("clients-token"), format!("{CLIENTS_TOKEN}\n")).unwrap();
    let file = dir.join("dispatcher.toml");
    // written whole, then renamed: a reload never reads half a file
    std::fs::write(dir.join("dispatcher.toml.new"), config).unwrap();
    std::fs::rename(dir.join("dispatcher.toml.new"), &file).unwrap();
    file
}

fn senders(
    hr: &MockServer,
    clients: &MockServer,
    hr_mail: &SmtpSink,
    cl_mail: &SmtpSink,
) -> String {
    format!(
        r#"
[whatsapp.hr]
phone_number_id = "{HR_PHONE_ID}"
token = "{HR_TOKEN}"
api_url = "{hr}/v21.0"
pair_interval_seconds = 0

[whatsapp.clients]
phone_number_id = "{CLIENTS_PHONE_ID}"
token_file = "clients-token"
api_url = "{clients}/v21.0"
pair_interval_seconds = 0

[email.hr]
url = "{hr_mail}"
from = "no-reply@hr.example"

[email.clients]
url = "{cl_mail}"
from = "Globex <codes@client.example>"
"#,
        hr = hr.uri(),
        clients = clients.uri(),
        hr_mail = hr_mail.url(),
        cl_mail = cl_mail.url(),
    )
}

const AGENTS: &str = r#"
[texts.globex.es]
subject = "Código de {{ agent_name }}"
text = "Hola. Tu código de {{ agent_name }} es {{ code }}; caduca a las {{ expires_at }} {{ time_zone }}."
html = "<p>Hola de <b>{{ agent_name }}</b>.</p><p>Código: {{ code }}</p>"

[agents.payroll]
display_name = "Nómina ACME"
language = "en"
time_zone = "America/Mexico_City"
whatsapp = "hr"
whatsapp_template = "hr_code"
whatsapp_languages = { en = "en_US", es = "es_MX" }
email = "hr"

[agents.clients]
display_name = "Soporte <Globex> & \"Co\""
language = "es"
whatsapp = "clients"
whatsapp_template = "globex_codigo"
whatsapp_languages = { es = "es" }
email = "clients"
texts = "globex"
"#;

async fn start_with(file: &Path) -> Dispatcher {
    Dispatcher::start(&["--config", file.to_str().unwrap()]).await
}

/// The emails a server received, parsed: recipient -> message.
fn emails(sink: &SmtpSink) -> HashMap<String, mail_parser::Message<'static>> {
    sink.messages()
        .into_iter()
        .map(|raw| {
            let parsed = MessageParser::default()
                .parse(raw.as_bytes())
                .unwrap()
                .into_owned();
            let to = parsed
                .to()
                .unwrap()
                .first()
                .unwrap()
                .address()
                .unwrap()
                .to_owned();
            (to, parsed)
        })
        .collect()
}

fn from_of(message: &mail_parser::Message<'_>) -> (Option<String>, String) {
    let from = message.from().unwrap().first().unwrap();
    (
        from.name().map(str::to_owned),
        from.address().unwrap().to_owned(),
    )
}

/// hh:mm of the conversation's code expiry in `zone`, as PostgreSQL says.
async fn local_expiry(db: &tokio_postgres::Client, conversation: &str, zone: &str) -> String {
    db.query_one(
        "SELECT to_char(expires_at AT TIME ZONE $2, 'HH24:MI') FROM otp.challenge WHERE conversation = $1",
        &[&conversation, &zone],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_agent_sends_through_its_own_senders_in_each_persons_language() {
    let (db, app) = setup().await;
    let hr = graph(HR_PHONE_ID, HR_TOKEN).await;
    let clients = graph(CLIENTS_PHONE_ID, CLIENTS_TOKEN).await;
    let hr_mail = SmtpSink::start().await;
    let cl_mail = SmtpSink::start().await;
    let dir = scratch_dir("agents");
    let file = write_config(
        &dir,
        &format!("{}{AGENTS}", senders(&hr, &clients, &hr_mail, &cl_mail)),
    );
    let dispatcher = start_with(&file).await;

    for (agent, conversation, person) in [
        ("payroll", "a-hr-es", "hr-es"),
        ("payroll", "a-hr-none", "hr-none"),
        ("payroll", "a-hr-phone", "hr-phone"),
        ("clients", "a-cl-es", "cl-es"),
        ("clients", "a-cl-mail", "cl-mail"),
    ] {
        assert_eq!(
            issue_for(&app, agent, conversation, person).await,
            "code_sent"
        );
    }
    for conversation in ["a-hr-es", "a-hr-none", "a-hr-phone", "a-cl-es", "a-cl-mail"] {
        assert_eq!(
            wait_until_final(&db, conversation).await,
            ["sent"],
            "{conversation}"
        );
    }

    // WhatsApp: each agent's number, token, template and language.
    let hr_bodies = whatsapp_requests(&hr).await;
    assert_eq!(hr_bodies.len(), 1, "{hr_bodies:?}");
    assert_eq!(hr_bodies[0]["to"], "525510000003");
    assert_eq!(hr_bodies[0]["template"]["name"], "hr_code");
    assert_eq!(hr_bodies[0]["template"]["language"]["code"], "es_MX");
    let cl_bodies = whatsapp_requests(&clients).await;
    assert_eq!(cl_bodies.len(), 1, "{cl_bodies:?}");
    assert_eq!(cl_bodies[0]["to"], "525520000001");
    assert_eq!(cl_bodies[0]["template"]["name"], "globex_codigo");
    assert_eq!(cl_bodies[0]["template"]["language"]["code"], "es");

    // Email: each agent's SMTP server and From, in the person's language.
    let hr_emails = emails(&hr_mail);
    assert_eq!(hr_emails.len(), 2, "{:?}", hr_emails.keys());
    let spanish = &hr_emails["ana@hr.example"];
    assert_eq!(
        from_of(spanish),
        (Some("Nómina ACME".into()), "no-reply@hr.example".into())
    );
    assert_eq!(
        spanish.subject(),
        Some("Tu código de verificación de Nómina ACME")
    );
    let text = spanish.body_text(0).unwrap();
    assert!(
        text.starts_with("Tu código de verificación de Nómina ACME es "),
        "{text}"
    );
    assert!(text.contains("y solo sirve una vez"), "{text}");
    // the expiry in the person's time zone
    let tokyo = local_expiry(&db, "a-hr-es", "Asia/Tokyo").await;
    assert!(text.contains(&format!("(a las {tokyo} JST)")), "{text}");
    let html = spanish.body_html(0).unwrap();
    assert!(
        html.contains("Caduca en") && html.contains("Nómina ACME"),
        "{html}"
    );
    assert_eq!(
        spanish.header_raw("Content-Language").map(str::trim),
        Some("es")
    );
    let english = &hr_emails["bo@hr.example"];
    assert_eq!(
        english.subject(),
        Some("Your Nómina ACME verification code")
    );
    let text = english.body_text(0).unwrap();
    assert!(text.contains("works only once"), "{text}");
    // no time zone on the record: the agent's (Mexico City has had no summer
    // time since 2022)
    let mexico = local_expiry(&db, "a-hr-none", "America/Mexico_City").await;
    assert!(text.contains(&format!("(at {mexico} CST)")), "{text}");
    assert!(english.body_html(0).unwrap().contains("It expires in"));

    let cl_emails = emails(&cl_mail);
    assert_eq!(cl_emails.len(), 1);
    let custom = &cl_emails["eve@client.example"];
    assert_eq!(
        from_of(custom),
        (
            Some("Soporte <Globex> & \"Co\"".into()),
            "codes@client.example".into()
        )
    );
    assert_eq!(
        custom.subject(),
        Some("Código de Soporte <Globex> & \"Co\"")
    );
    let html = custom.body_html(0).unwrap();
    assert!(
        html.contains("<b>Soporte &lt;Globex&gt; &amp; &quot;Co&quot;</b>"),
        "{html}"
    );
    let text = custom.body_text(0).unwrap();
    assert!(
        text.starts_with("Hola. Tu código de Soporte <Globex> & \"Co\" es "),
        "{text}"
    );
    assert!(text.contains(" UTC."), "no time zone configured: {text}");

    // Every code verifies with its own agent.
    let code = text
        .split(" es ")
        .nth(1)
        .unwrap()
        .chars()
        .take(6)
        .collect::<String>();
    let status: String = app
        .query_one(
            "SELECT status FROM otp_verify('clients', 'a-cl-mail', $1)",
            &[&code],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "verified");
    let logs = dispatcher.logs();
    for secret in [HR_TOKEN, CLIENTS_TOKEN, code.as_str()] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_without_a_sender_for_the_channel_fails_or_falls_back() {
    let (db, app) = setup().await;
    let hr = graph(HR_PHONE_ID, HR_TOKEN).await;
    let clients = graph(CLIENTS_PHONE_ID, CLIENTS_TOKEN).await;
    let hr_mail = SmtpSink::start().await;
    let cl_mail = SmtpSink::start().await;
    let dir = scratch_dir("agents-nosender");
    // payroll prefers email but has only a WhatsApp sender
    let file = write_config(
        &dir,
        &format!(
            "{}\n[agents.payroll]\nwhatsapp = \"hr\"\nwhatsapp_template = \"hr_code\"\n",
            senders(&hr, &clients, &hr_mail, &cl_mail)
        ),
    );
    let _dispatcher = start_with(&file).await;

    // email and phone: the email fails for want of a sender, WhatsApp takes over
    assert_eq!(
        issue_for(&app, "payroll", "n-both", "hr-both").await,
        "code_sent"
    );
    wait_for("the fallback to be sent", WAIT, async || {
        (message_states(&db, "n-both").await == ["failed", "sent"]).then_some(())
    })
    .await;
    let error: String = db
        .query_one(
            "SELECT last_error FROM otp.outbox WHERE conversation = 'n-both' AND channel = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        error,
        "agent \"payroll\" has no email sender in the dispatcher's configuration"
    );
    let sent = whatsapp_requests(&hr).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["to"], "525510000004");
    let channel: String = app
        .query_one("SELECT channel FROM otp_status('payroll', 'n-both')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(channel, "whatsapp");

    // email only: nothing to fall back to
    assert_eq!(
        issue_for(&app, "payroll", "n-mail", "hr-none").await,
        "code_sent"
    );
    assert_eq!(wait_until_final(&db, "n-mail").await, ["failed"]);
    // an agent the file does not name, and no [default]
    assert_eq!(
        issue_for(&app, "clients", "n-clients", "cl-es").await,
        "code_sent"
    );
    assert_eq!(wait_until_final(&db, "n-clients").await, ["failed"]);
    let error: String = db
        .query_one(
            "SELECT last_error FROM otp.outbox WHERE conversation = 'n-clients'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        error.contains("\"clients\" is not in the dispatcher's configuration"),
        "{error}"
    );
    assert!(hr_mail.messages().is_empty() && cl_mail.messages().is_empty());
    assert!(whatsapp_requests(&clients).await.is_empty());
}

/// Which sender and template delivered each outbox message.
async fn delivered_by(servers: &[&MockServer]) -> HashMap<i64, Vec<(usize, String)>> {
    let mut by_message: HashMap<i64, Vec<(usize, String)>> = HashMap::new();
    for (i, server) in servers.iter().enumerate() {
        for body in whatsapp_requests(server).await {
            let id: i64 = body["biz_opaque_callback_data"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let template = body["template"]["name"].as_str().unwrap().to_owned();
            by_message.entry(id).or_default().push((i, template));
        }
    }
    by_message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_templates_and_senders_without_losing_or_repeating_a_message() {
    let (db, app) = setup().await;
    let hr = graph(HR_PHONE_ID, HR_TOKEN).await;
    let clients = graph(CLIENTS_PHONE_ID, CLIENTS_TOKEN).await;
    let hr_mail = SmtpSink::start().await;
    let cl_mail = SmtpSink::start().await;
    let dir = scratch_dir("agents-reload");
    let base = senders(&hr, &clients, &hr_mail, &cl_mail);
    let config = |sender: &str, template: &str| {
        format!("{base}\n[default]\nwhatsapp = \"{sender}\"\nwhatsapp_template = \"{template}\"\n")
    };
    let file = write_config(&dir, &config("hr", "before_reload"));
    let dispatcher = start_with(&file).await;

    // Messages flow the whole time: one code every 20 ms to a WhatsApp number.
    let stop = Arc::new(AtomicBool::new(false));
    let issuer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut issued = 0;
            while !stop.load(Ordering::Relaxed) {
                let status = issue_for(&app, "clients", &format!("r-{issued}"), "cl-es").await;
                assert_eq!(status, "code_sent");
                issued += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            issued
        }
    });
    let reloads = |n: usize| {
        let dispatcher = &dispatcher;
        async move {
            wait_for("the reload to be logged", WAIT, async || {
                (dispatcher.logs().matches("configuration reloaded").count() == n).then_some(())
            })
            .await
        }
    };
    let sent_so_far = async || {
        let row = db
            .query_one("SELECT count(*) FROM otp.outbox WHERE state = 'sent'", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    wait_for("some messages under the first file", WAIT, async || {
        (sent_so_far().await >= 10).then_some(())
    })
    .await;

    // A new sender and template.
    write_config(&dir, &config("clients", "after_reload"));
    dispatcher.signal("HUP");
    reloads(1).await;
    let at_reload = sent_so_far().await;
    wait_for("messages under the second file", WAIT, async || {
        (sent_so_far().await >= at_reload + 10).then_some(())
    })
    .await;

    // A broken file: refused, and the second one keeps running.
    write_config(
        &dir,
        &format!("{base}\n[default]\nwhatsapp = \"nobody\"\nwhatsapp_template = \"broken\"\n"),
    );
    dispatcher.signal("HUP");
    wait_for("the refusal to be logged", WAIT, async || {
        dispatcher
            .logs()
            .contains("configuration not reloaded: the previous one stays in use")
            .then_some(())
    })
    .await;
    let at_refusal = sent_so_far().await;
    wait_for("messages after the refusal", WAIT, async || {
        (sent_so_far().await >= at_refusal + 10).then_some(())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let issued = issuer.await.unwrap();
    for n in 0..issued {
        wait_until_final(&db, &format!("r-{n}")).await;
    }
    let states: Vec<String> = db
        .query("SELECT DISTINCT state FROM otp.outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(states, ["sent"]);

    // Every message went out exactly once, by the sender and template of
    // one file or the other, in the order of the reload.
    let by_message = delivered_by(&[&hr, &clients]).await;
    assert_eq!(by_message.len(), issued, "one request per message");
    assert!(
        by_message.values().all(|sends| sends.len() == 1),
        "a message sent twice"
    );
    let mut ids: Vec<i64> = by_message.keys().copied().collect();
    ids.sort();
    let routes: Vec<(usize, &str)> = ids
        .iter()
        .map(|id| (by_message[id][0].0, by_message[id][0].1.as_str()))
        .collect();
    assert!(routes.contains(&(0, "before_reload")) && routes.contains(&(1, "after_reload")));
    for route in &routes {
        assert!(
            matches!(route, (0, "before_reload") | (1, "after_reload")),
            "{route:?}"
        );
    }
    // once a message went out under the second file, none did under the first
    let first_new = routes.iter().position(|r| r.0 == 1).unwrap();
    assert!(routes[first_new..].iter().all(|r| r.0 == 1), "{routes:?}");
    let logs = dispatcher.logs();
    let refusal = logs
        .lines()
        .find(|line| line.contains("configuration not reloaded"))
        .unwrap();
    assert!(
        refusal.contains("unknown WhatsApp sender") && refusal.contains("nobody"),
        "{refusal}"
    );
}

/// systemd's readiness protocol: a datagram socket the dispatcher is told
/// about in NOTIFY_SOCKET, and what it sends there.
struct NotifySocket {
    path: PathBuf,
    socket: std::os::unix::net::UnixDatagram,
}

impl NotifySocket {
    fn new(dir: &Path) -> Self {
        let path = dir.join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        NotifySocket { path, socket }
    }

    /// The next datagram, or None when none came within WAIT.
    fn next(&self) -> Option<String> {
        let mut buffer = [0u8; 4096];
        let n = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn it_says_ready_only_once_a_reload_signal_is_safe() {
    // A SIGHUP before the handler was installed ended the process, and
    // systemd does not restart a process a signal ended cleanly; with
    // Type=notify, systemd sends no reload before READY=1 (attack on
    // issue 12, F6).
    let (_db, _app) = setup().await;
    let hr = graph(HR_PHONE_ID, HR_TOKEN).await;
    let clients = graph(CLIENTS_PHONE_ID, CLIENTS_TOKEN).await;
    let hr_mail = SmtpSink::start().await;
    let cl_mail = SmtpSink::start().await;
    let dir = scratch_dir("agents-notify");
    let file = write_config(
        &dir,
        &format!("{}{AGENTS}", senders(&hr, &clients, &hr_mail, &cl_mail)),
    );
    let notify = NotifySocket::new(&dir);
    let url = dispatcher_url().await;
    let dispatcher = Dispatcher::start_with_env(
        &["--database-url", &url, "--config", file.to_str().unwrap()],
        &[("NOTIFY_SOCKET", notify.path.as_os_str())],
    )
    .await;
    let ready = tokio::task::spawn_blocking(move || (notify.next(), notify))
        .await
        .unwrap();
    assert_eq!(ready.0.as_deref().map(str::trim), Some("READY=1"));
    dispatcher.signal("HUP");
    wait_for("the reload", WAIT, async || {
        dispatcher
            .logs()
            .contains("configuration reloaded")
            .then_some(())
    })
    .await;
    let status = dispatcher.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// Runs the binary with `--config` and returns its exit code and standard error.
fn refused(dir: &Path, config: &str) -> (Option<i32>, String) {
    let file = write_config(dir, config);
    let output = Command::new(env!("CARGO_BIN_EXE_otp-dispatcher"))
        .args([
            "--database-url",
            "host=/nonexistent user=nobody",
            "--config",
        ])
        .arg(&file)
        .env_remove("OTP_DATABASE_URL")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn a_broken_configuration_refuses_to_start_with_one_clear_line() {
    let dir = scratch_dir("agents-refused");
    let sender = "[whatsapp.hr]\nphone_number_id = \"1\"\ntoken = \"t\"\n[email.hr]\nurl = \"smtp://127.0.0.1:25\"\nfrom = \"a@b.example\"\n";
    let texts = |text: &str, html: &str| {
        format!("{sender}[texts.x.en]\nsubject = \"s\"\ntext = \"{text}\"\nhtml = \"{html}\"\n[default]\nemail = \"hr\"\ntexts = \"x\"\n")
    };
    for (config, expected) in [
        (
            texts("{{ code }} {{ employee_name }}", "{{ code }}"),
            "texts x, en, text: unknown placeholder {{ employee_name }}",
        ),
        (
            texts("{{ code }}", "<p>{{ minutes }} minutes</p>"),
            "texts x, en, html: the body does not contain {{ code }}",
        ),
        (
            format!("{sender}[agents.payroll]\nemail = \"payroll_smtp\"\n"),
            "[agents.payroll]: unknown email sender \"payroll_smtp\" (configured: hr)",
        ),
        (
            "[whatsapp.hr]\nphone_number_id = \"1\"\ntoken_file = \"/nonexistent/token\"\n[default]\n".to_owned(),
            "[whatsapp.hr]: token_file /nonexistent/token: No such file or directory",
        ),
        (
            format!("{sender}[email.slow]\nurl = \"smtp://127.0.0.1:25\"\nfrom = \"a@b.example\"\nrate = 1\n[default]\nemail = \"slow\"\n"),
            "email sender \"slow\": 64 sends in flight (--concurrency) can wait 64.0 s",
        ),
        (
            format!("{sender}[whatsapp.again]\nphone_number_id = \"1\"\ntoken = \"t\"\nrate = 250\n[default]\nwhatsapp = \"hr\"\nwhatsapp_template = \"code\"\n"),
            "WhatsApp senders \"again\" and \"hr\" send from one phone number with different rate",
        ),
    ] {
        let (code, stderr) = refused(&dir, &config);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("otp-dispatcher: configuration /"), "{stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
    }
}
