//! Rotating otp.secret_key (with otp.previous_secret_key) invalidates no
//! pending code and no queued message. This test changes the cluster's
//! configuration and restores it, so it runs in its own test binary.

use std::io::Read;
use std::time::Duration;

use pg_otp_integration::*;

fn setting(name: &str) -> String {
    superuser()
        .query_one(&format!("SHOW {name}"), &[])
        .unwrap()
        .get(0)
}

/// Sets both secrets with ALTER SYSTEM (None: reset), reloads, and waits
/// until a new connection sees them.
fn set_secrets(current: Option<&str>, previous: Option<&str>) {
    let mut db = superuser();
    for (name, value) in [
        ("otp.secret_key", current),
        ("otp.previous_secret_key", previous),
    ] {
        match value {
            Some(v) => db
                .batch_execute(&format!("ALTER SYSTEM SET {name} = '{v}'"))
                .unwrap(),
            None => db
                .batch_execute(&format!("ALTER SYSTEM RESET {name}"))
                .unwrap(),
        }
    }
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until("the configuration reload", Duration::from_secs(30), || {
        current.is_none_or(|v| setting("otp.secret_key") == v)
            && setting("otp.previous_secret_key") == previous.unwrap_or("")
    });
}

/// Restores the cluster's own secret when dropped, even after a failure.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        set_secrets(None, None);
    }
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verify(app: &mut Client, conversation: &str, code: &str) -> String {
    app.query_one(
        "SELECT status FROM otp_verify('it', $1, $2)",
        &[&conversation, &code],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_rotation_keeps_pending_codes_and_queued_messages_usable() {
    let original = setting("otp.secret_key");
    let _restore = Restore;
    let log_path = env("PG_OTP_TEST_LOG");
    let log_start = std::fs::metadata(&log_path).unwrap().len();
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let label = conversation("rotation");
    let (delivered, queued, later, orphaned) = (
        format!("{label}-a"),
        format!("{label}-b"),
        format!("{label}-c"),
        format!("{label}-d"),
    );

    // Before: one code delivered, the other still queued.
    assert_eq!(issue(&mut app, &delivered), "code_sent");
    let delivered_code = claim_code(&mut sender, &delivered);
    assert_eq!(issue(&mut app, &queued), "code_sent");

    let rotated = random_secret();
    set_secrets(Some(&rotated), Some(&original));
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    // The code delivered before still verifies; the queued one is delivered
    // with its right code and verifies too.
    assert_eq!(verify(&mut app, &delivered, &delivered_code), "verified");
    let queued_code = claim_code(&mut sender, &queued);
    assert_eq!(verify(&mut app, &queued, &queued_code), "verified");
    // New codes use the new secret.
    assert_eq!(issue(&mut app, &later), "code_sent");
    let later_code = claim_code(&mut sender, &later);
    assert_eq!(verify(&mut app, &later, &later_code), "verified");

    // A code from under the secret a second rotation drops can no longer be
    // checked: it has expired, whatever is typed.
    assert_eq!(issue(&mut app, &orphaned), "code_sent");
    let orphaned_code = claim_code(&mut sender, &orphaned);
    let last = random_secret();
    set_secrets(Some(&last), None);
    let mut app = connect(APP);
    assert_eq!(verify(&mut app, &orphaned, &orphaned_code), "expired");

    // Every reload above was logged by the postmaster ("parameter ...
    // changed"), the last one back to the original secret: never a value.
    set_secrets(None, None);
    let mut log = std::fs::File::open(&log_path).unwrap();
    std::io::Seek::seek(&mut log, std::io::SeekFrom::Start(log_start)).unwrap();
    let mut written = String::new();
    log.read_to_string(&mut written).unwrap();
    assert!(
        written.contains("parameter \"otp.secret_key\" changed"),
        "the reloads were logged"
    );
    for secret in [&original, &rotated, &last] {
        assert!(
            !written.contains(secret.as_str()),
            "a secret appeared in the server log"
        );
    }
}
