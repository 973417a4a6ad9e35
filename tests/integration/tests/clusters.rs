//! Clusters of their own, for settings the shared test cluster must not have.

use pg_otp_integration::*;

const SECRET: &str =
    "otp.secret_key = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'";

/// A DBA trying pg_otp without preloading it gets an ERROR that says what to
/// do, and keeps the connection (0.2.0 ended the backend with FATAL).
#[test]
fn create_extension_without_preload_is_an_error_with_a_hint() {
    let cluster = Cluster::start("no-preload", 54341, &[SECRET], &[]);
    let mut db = cluster.connect("postgres", "postgres");
    let err = db
        .batch_execute("CREATE EXTENSION pg_otp")
        .expect_err("pg_otp cannot work without shared_preload_libraries");
    let err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("an ERROR, not a lost connection: {err}"));
    assert_eq!(err.code().code(), "55000", "{err:?}");
    assert!(
        err.message().contains("shared_preload_libraries"),
        "{err:?}"
    );
    let hint = err.hint().unwrap_or_default();
    assert!(
        hint.contains("shared_preload_libraries") && hint.contains("restart"),
        "{hint}"
    );
    // Same connection, still usable; nothing was installed.
    let installed: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_otp'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(installed, 0);
}

/// With RUST_BACKTRACE in the postmaster's environment, errors raised inside
/// pg_otp still carry only their own detail: no Rust backtrace reaches the
/// client (or the log).
#[test]
fn errors_carry_no_rust_backtrace_whatever_the_environment() {
    let cluster = Cluster::start(
        "backtrace",
        54342,
        &["shared_preload_libraries = 'pg_otp'", SECRET],
        &[("RUST_BACKTRACE", "1")],
    );
    let mut db = cluster.connect("postgres", "postgres");
    db.batch_execute(
        "CREATE EXTENSION pg_otp;
         CREATE TABLE people (id text PRIMARY KEY, phone text, email text);
         CREATE VIEW broken AS SELECT id, phone, email FROM people WHERE 1 / (SELECT count(*) FROM people)::int = 1;
         SELECT otp_configure(agent => 'bt', source => 'broken', id_column => 'id', phone_column => 'phone');",
    )
    .unwrap();
    let failures = [
        // raised by pg_otp itself
        "SELECT * FROM otp_issue('no-such-agent', 'c', 'x')",
        "SELECT * FROM otp_verify('bt', 'c', NULL)",
        // raised by PostgreSQL inside pg_otp's work (division by zero in the source)
        "SELECT * FROM otp_issue('bt', 'c', 'x')",
    ];
    for sql in failures {
        let err = db.batch_execute(sql).expect_err(sql);
        let err = err.as_db_error().unwrap();
        let detail = err.detail().unwrap_or_default();
        assert!(
            !detail.contains("pgrx") && !detail.contains("backtrace") && !detail.contains("  0: "),
            "{sql}: a backtrace reached the client: {detail}"
        );
    }
    let log = cluster.log();
    assert!(
        !log.contains("pgrx_pg_sys"),
        "a backtrace reached the server log"
    );
}

/// The attempt ledger is bounded (otp.ledger_size). Committed verifications
/// leave nothing in it, however many; entries of rolled-back guesses stay,
/// and when they fill it, verification fails closed (53400) instead of
/// forgetting what it counted.
#[test]
fn a_full_ledger_fails_closed_and_committed_guesses_leave_nothing_in_it() {
    const SIZE: usize = 100;
    let cluster = Cluster::start(
        "small-ledger",
        54343,
        &[
            "shared_preload_libraries = 'pg_otp'",
            SECRET,
            "otp.ledger_size = 100",
        ],
        &[],
    );
    let mut db = cluster.connect("postgres", "postgres");
    db.batch_execute(&format!(
        "CREATE EXTENSION pg_otp;
         CREATE TABLE people (id text PRIMARY KEY, email text);
         INSERT INTO people SELECT 'p' || n, 'p' || n || '@example.com' FROM generate_series(1, {})  n;
         SELECT otp_configure(agent => 'small', source => 'people', id_column => 'id', email_column => 'email',
                              max_codes => 1000000, resend_cooldown => '0');",
        4 * SIZE
    ))
    .unwrap();
    let issue = |db: &mut Client, conversation: &str, person: &str| {
        let status: String = db
            .query_one(
                "SELECT status FROM otp_issue('small', $1, $2)",
                &[&conversation, &person],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "code_sent");
    };
    let guess = |db: &mut Client, conversation: &str| -> Result<String, String> {
        db.query_one(
            "SELECT status FROM otp_verify('small', $1, '000000')",
            &[&conversation],
        )
        .map(|row| row.get(0))
        .map_err(|err| {
            err.as_db_error()
                .map(|e| e.code().code().to_owned())
                .unwrap_or_default()
        })
    };
    // Four times the ledger's size of committed wrong guesses, by different
    // people: each settles when it commits.
    for n in 1..=4 * SIZE {
        let conversation = format!("committed-{n}");
        issue(&mut db, &conversation, &format!("p{n}"));
        let answer = guess(&mut db, &conversation);
        assert!(
            matches!(answer.as_deref(), Ok("incorrect" | "verified")),
            "{answer:?}"
        );
    }
    // Rolled-back guesses by as many people as the ledger holds: each leaves
    // the person's failure behind (and the code's attempt, until it expires).
    let mut refused = None;
    for n in 1..=2 * SIZE {
        let conversation = format!("rolled-back-{n}");
        issue(&mut db, &conversation, &format!("p{n}"));
        db.batch_execute("BEGIN").unwrap();
        let answer = guess(&mut db, &conversation);
        db.batch_execute("ROLLBACK").unwrap();
        if let Err(sqlstate) = answer {
            refused = Some((n, sqlstate));
            break;
        }
    }
    let (at, sqlstate) = refused.expect("the ledger fills up");
    assert_eq!(sqlstate, "53400");
    // Each rolled-back guess leaves two entries (the code, the person).
    assert!(
        (SIZE / 3..=SIZE / 2 + 1).contains(&at),
        "full after {at} rolled-back guesses: committed ones left entries behind?"
    );
    // Closed for everyone until there is room: no guess is ever left uncounted.
    issue(&mut db, "after-full", &format!("p{}", 3 * SIZE));
    assert_eq!(guess(&mut db, "after-full"), Err("53400".to_owned()));
}
