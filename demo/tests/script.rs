//! The demo plays the example conversation end to end: pg_otp in the test
//! cluster, the real otp-dispatcher (console transport = the phone), and the
//! user's side from demo/conversation.txt.

use std::path::Path;
use std::process::{Command, Stdio};

use pg_otp_integration::env;

const DB: &str = "pg_otp_demo";

fn psql(database: &str, args: &[&str]) {
    let status = Command::new(pg_otp_integration::pg_bin().join("psql"))
        .args([
            "-h",
            &env("PG_OTP_TEST_HOST"),
            "-p",
            &env("PG_OTP_TEST_PORT"),
            "-U",
            "postgres",
            "-d",
            database,
        ])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "psql {args:?} failed");
}

fn url(user: &str) -> String {
    format!(
        "host={} port={} user={user} dbname={DB}",
        env("PG_OTP_TEST_HOST"),
        env("PG_OTP_TEST_PORT")
    )
}

#[test]
fn the_scripted_conversation_verifies_and_shows_the_pay_stub() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    psql(
        "postgres",
        &[
            "-c",
            &format!("DROP DATABASE IF EXISTS {DB}"),
            "-c",
            &format!("CREATE DATABASE {DB}"),
        ],
    );
    psql(
        DB,
        &[
            "-f",
            root.join("tests/pg_regress/sql/setup.sql")
                .to_str()
                .unwrap(),
        ],
    );

    let phone = std::env::temp_dir().join(format!("otp-demo-phone-{}", std::process::id()));
    let mut dispatcher = Command::new(env("OTP_DISPATCHER_BIN"))
        .args([
            "--database-url",
            &url("otp_sender"),
            "--console",
            "--poll-interval-ms",
            "200",
        ])
        .stdout(std::fs::File::create(&phone).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting otp-dispatcher");
    let output = Command::new(env!("CARGO_BIN_EXE_otp-demo"))
        .args([
            "--database-url",
            &url("chat_app"),
            "--phone",
            phone.to_str().unwrap(),
        ])
        .arg("--script")
        .arg(root.join("demo/conversation.txt"))
        .output()
        .unwrap();
    let _ = dispatcher.kill();
    let _ = dispatcher.wait();
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{transcript}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    for expected in [
        "Agent: I sent a 6-digit code to your WhatsApp number ending in 78. Please type it here.",
        "[WhatsApp to +34 600 123 478: \"Your payroll code is ",
        "Agent: That code is not right. 2 attempts remaining.",
        "Agent: Thanks, Ana Ruiz. Your latest pay stub: net pay 2,150.00.",
        "Agent: You're welcome. I closed the session. Goodbye!",
    ] {
        assert!(
            transcript.contains(expected),
            "missing {expected:?} in:\n{transcript}"
        );
    }
    // The code the user typed is the one the phone received.
    let delivered: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&phone)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let code = delivered["code"].as_str().unwrap();
    assert!(
        transcript.contains(&format!("You:   {code}\n")),
        "{transcript}"
    );
    let _ = std::fs::remove_file(&phone);
}
