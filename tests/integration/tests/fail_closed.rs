//! With no usable otp.secret_key, every function that touches codes refuses
//! to work and says how to fix it. This test changes the cluster's
//! configuration and restores it, so it runs in its own test binary.

use std::time::Duration;

use pg_otp_integration::*;

/// Restores otp.secret_key when dropped, even if an assertion failed.
struct RestoreSecret;

impl Drop for RestoreSecret {
    fn drop(&mut self) {
        set_secret(None);
    }
}

fn current_secret() -> String {
    superuser()
        .query_one("SHOW otp.secret_key", &[])
        .unwrap()
        .get(0)
}

/// Sets (or with None resets) the secret through ALTER SYSTEM, then waits
/// until a new connection sees the reloaded value.
fn set_secret(value: Option<&str>) {
    let mut db = superuser();
    match value {
        Some(v) => db
            .batch_execute(&format!("ALTER SYSTEM SET otp.secret_key = '{v}'"))
            .unwrap(),
        None => db
            .batch_execute("ALTER SYSTEM RESET otp.secret_key")
            .unwrap(),
    }
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let expected = value.map(str::to_owned);
    wait_until(
        "the configuration reload",
        Duration::from_secs(30),
        || match &expected {
            Some(v) => &current_secret() == v,
            None => current_secret().len() >= 64,
        },
    );
}

fn refusal(client: &mut Client, sql: &str) -> postgres::error::DbError {
    let err = client
        .query(sql, &[])
        .expect_err("the call must fail closed");
    err.as_db_error().expect("a database error").clone()
}

#[test]
fn functions_fail_closed_without_a_usable_secret() {
    let original = current_secret();
    assert!(
        original.len() >= 64,
        "the test cluster starts with a 32-byte secret"
    );
    let _restore = RestoreSecret;
    let app_calls = [
        "SELECT * FROM otp_issue('it', 'fail-closed', 'p1')",
        "SELECT * FROM otp_verify('it', 'fail-closed', '123456')",
    ];
    let sender_calls = ["SELECT * FROM otp_outbox_claim()"];

    for (bad, reason) in [
        ("00112233", "too short"),
        ("", "not set"),
        ("not-hex-or-base64!", "neither hex nor base64"),
    ] {
        set_secret(Some(bad));
        let mut app = connect(APP);
        let mut sender = connect(SENDER);
        for sql in app_calls {
            let err = refusal(&mut app, sql);
            assert_eq!(err.code().code(), "55000", "{sql}: {err}");
            assert!(
                err.message().contains("otp.secret_key") && err.message().contains(reason),
                "{err}"
            );
            assert!(
                err.hint()
                    .unwrap_or_default()
                    .contains("ALTER SYSTEM SET otp.secret_key"),
                "{err:?}"
            );
        }
        for sql in sender_calls {
            assert_eq!(refusal(&mut sender, sql).code().code(), "55000");
        }
    }
    drop(_restore);
    assert_eq!(current_secret(), original);
    let mut app = connect(APP);
    assert_eq!(
        issue(&mut app, &conversation("fail-closed-after")),
        "code_sent"
    );
}
