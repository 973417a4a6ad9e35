//! Clusters of their own, for settings the shared test cluster must not have.

use pg_otp_integration::*;
use std::time::Duration;

/// A DBA trying pg_otp without preloading it gets an ERROR that says what to
/// do, and keeps the connection (0.2.0 ended the backend with FATAL).
#[test]
fn create_extension_without_preload_is_an_error_with_a_hint() {
    let cluster = Cluster::start("no-preload", 54341, &[CLUSTER_SECRET], &[]);
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
        &["shared_preload_libraries = 'pg_otp'", CLUSTER_SECRET],
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

/// A rolled-back guess's outcome: the status, or the SQLSTATE and DETAIL of
/// the refusal.
type Answer = Result<String, (String, String)>;

fn rolled_back_guess(db: &mut Client, agent: &str, conversation: &str, person: &str) -> Answer {
    let status: String = db
        .query_one(
            "SELECT status FROM otp_issue($1, $2, $3)",
            &[&agent, &conversation, &person],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "code_sent");
    db.batch_execute("BEGIN").unwrap();
    let answer = db
        .query_one(
            "SELECT status FROM otp_verify($1, $2, '000000')",
            &[&agent, &conversation],
        )
        .map(|row| row.get(0))
        .map_err(|err| {
            let err = err.as_db_error().expect("an ERROR");
            (
                err.code().code().to_owned(),
                err.detail().unwrap_or_default().to_owned(),
            )
        });
    db.batch_execute("ROLLBACK").unwrap();
    answer
}

/// The attempt ledger is bounded (otp.ledger_size). Committed verifications
/// leave nothing in it, however many; entries of rolled-back guesses stay,
/// counted against the role that made them, which may hold a quarter of the
/// ledger: past that its verifications fail closed (53400) instead of
/// forgetting what was counted, while other roles' work on. Once the whole
/// ledger is full, verification fails closed for everyone.
#[test]
fn a_full_ledger_fails_closed_and_committed_guesses_leave_nothing_in_it() {
    const SIZE: usize = 100;
    const SHARE: usize = SIZE / 4;
    let cluster = Cluster::start(
        "small-ledger",
        54343,
        &[
            "shared_preload_libraries = 'pg_otp'",
            CLUSTER_SECRET,
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
                              max_codes => 1000000, resend_cooldown => '0');
         CREATE ROLE app1 LOGIN IN ROLE otp_app; CREATE ROLE app2 LOGIN IN ROLE otp_app;
         CREATE ROLE app3 LOGIN IN ROLE otp_app; CREATE ROLE app4 LOGIN IN ROLE otp_app;
         CREATE ROLE app5 LOGIN IN ROLE otp_app;",
        4 * SIZE
    ))
    .unwrap();
    // Four times the ledger's size of committed wrong guesses, by different
    // people: each settles when it commits.
    for n in 1..=4 * SIZE {
        let conversation = format!("committed-{n}");
        let status: String = db
            .query_one(
                "SELECT status FROM otp_issue('small', $1, $2)",
                &[&conversation, &format!("p{n}")],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "code_sent");
        let answer: String = db
            .query_one(
                "SELECT status FROM otp_verify('small', $1, '000000')",
                &[&conversation],
            )
            .unwrap()
            .get(0);
        assert!(
            matches!(answer.as_str(), "incorrect" | "verified"),
            "{answer}"
        );
    }
    // One role's rolled-back guesses, each by another person: each leaves the
    // person's failure behind and the code's attempt (until it expires),
    // until the role holds its share.
    let mut app1 = cluster.connect("app1", "postgres");
    let fill = |db: &mut Client, role: &str, limit: usize| -> Option<(usize, (String, String))> {
        (1..=limit).find_map(|n| {
            rolled_back_guess(db, "small", &format!("{role}-{n}"), &format!("p{n}"))
                .err()
                .map(|refusal| (n, refusal))
        })
    };
    let (at, (sqlstate, detail)) = fill(&mut app1, "app1", SIZE).expect("app1's share fills up");
    assert_eq!(sqlstate, "53400");
    assert!(detail.contains("share"), "{detail}");
    assert!(
        (SHARE / 2..=SHARE / 2 + 1).contains(&at),
        "app1 refused after {at} rolled-back guesses: committed ones left entries behind?"
    );
    // Neither another role nor another database gives app1 more room.
    app1.batch_execute("SET ROLE otp_app").unwrap();
    let refused = rolled_back_guess(&mut app1, "small", "app1-as-otp_app", "p390");
    assert!(
        matches!(&refused, Err((code, detail)) if code == "53400" && detail.contains("share")),
        "{refused:?}"
    );
    app1.batch_execute("RESET ROLE").unwrap();
    db.batch_execute("CREATE DATABASE second").unwrap();
    cluster
        .connect("postgres", "second")
        .batch_execute(
            "CREATE EXTENSION pg_otp;
             CREATE TABLE people (id text PRIMARY KEY, email text);
             INSERT INTO people VALUES ('q1', 'q1@example.com');
             SELECT otp_configure(agent => 'small', source => 'people', id_column => 'id', email_column => 'email');",
        )
        .unwrap();
    let refused = rolled_back_guess(
        &mut cluster.connect("app1", "second"),
        "small",
        "app1-second",
        "q1",
    );
    assert!(
        matches!(&refused, Err((code, detail)) if code == "53400" && detail.contains("share")),
        "{refused:?}"
    );
    // Another application (another login role) is not shut out by app1.
    let mut app2 = cluster.connect("app2", "postgres");
    assert_eq!(
        rolled_back_guess(&mut app2, "small", "app2-first", "p300"),
        Ok("incorrect".to_owned())
    );
    // Three roles fill the rest; then it is closed for everyone until there
    // is room: no guess is ever left uncounted.
    for role in ["app2", "app3", "app4"] {
        let mut app = cluster.connect(role, "postgres");
        let refused = fill(&mut app, role, SIZE);
        assert_eq!(refused.map(|(_, (code, _))| code).as_deref(), Some("53400"));
    }
    let mut app5 = cluster.connect("app5", "postgres");
    let refused = rolled_back_guess(&mut app5, "small", "app5-first", "p301");
    assert!(
        matches!(&refused, Err((code, detail)) if code == "53400" && !detail.contains("share")),
        "{refused:?}"
    );
}

/// Guesses at people who do not exist (decoys) leave person entries that no
/// committed verification settles. They are forgotten, with the codes', once
/// the agent's lockout_duration has passed since the last failure, so a role
/// that filled its share gets it back.
#[test]
fn unsettled_failures_are_forgotten_after_the_lockout_duration() {
    const SIZE: usize = 100;
    let cluster = Cluster::start(
        "forgetting-ledger",
        54344,
        &[
            "shared_preload_libraries = 'pg_otp'",
            CLUSTER_SECRET,
            "otp.ledger_size = 100",
        ],
        &[],
    );
    let mut db = cluster.connect("postgres", "postgres");
    db.batch_execute(
        "CREATE EXTENSION pg_otp;
         CREATE TABLE people (id text PRIMARY KEY, email text);
         SELECT otp_configure(agent => 'quick', source => 'people', id_column => 'id', email_column => 'email',
                              max_codes => 1000000, resend_cooldown => '0', reveal_unknown => false,
                              code_ttl => '1 second', lockout_duration => '2 seconds');",
    )
    .unwrap();
    // Nobody exists: every code is a decoy.
    let fill = |db: &mut Client, round: usize| {
        (1..=SIZE).find_map(|n| {
            rolled_back_guess(db, "quick", &format!("r{round}-{n}"), &format!("ghost-{n}")).err()
        })
    };
    let refused = fill(&mut db, 1).expect("the role's share fills up");
    assert_eq!(refused.0, "53400");
    wait_until(
        "the ledger forgets the decoys' failures",
        Duration::from_secs(60),
        || rolled_back_guess(&mut db, "quick", "again", "ghost-again").is_ok(),
    );
}
