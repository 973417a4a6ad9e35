//! Plans made on a new installation.
//!
//! pg_otp prepares each statement once per connection with a generic plan,
//! and a connection keeps that plan until the table's statistics change. A
//! plan made while pg_otp's tables were empty (a new installation, before
//! autovacuum first analyzes them) must still be an index lookup: a
//! sequential scan chosen then would read the whole table at every call for
//! as long as the connection lives, however large the table has grown
//! (issue 14 measured 2 ms and 230 buffers for a 0.2 ms statement).

use pg_otp_integration::*;

/// One connection plays the whole flow twice on a new installation whose
/// tables autovacuum has never analyzed, then counts the sequential scans
/// of pg_otp's tables in its own transaction.
#[test]
fn a_new_installation_plans_no_sequential_scans() {
    let mut db = fresh_database("pg_otp_plans");
    db.batch_execute(
        "CREATE EXTENSION pg_otp;
         CREATE TABLE people (id text PRIMARY KEY, phone text, email text);
         INSERT INTO people VALUES ('p1', '+34 600 12 34 78', 'p1@example.com'),
                                   ('p2', '+34 600 12 34 99', NULL);
         SELECT otp_configure(agent => 'plans', source => 'people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email',
                              max_codes => 1000, resend_cooldown => '0');",
    )
    .unwrap();
    // The statistics the plans are made from: none yet, and none during the test.
    let never_analyzed: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_class
              WHERE relnamespace = 'otp'::regnamespace AND relkind = 'r' AND reltuples < 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(never_analyzed >= 5, "pg_otp's tables were already analyzed");
    // A new connection: a backend's table counters include what it did
    // before (CREATE EXTENSION's index builds read the tables) until they
    // are flushed.
    drop(db);
    let mut db = connect_to("postgres", "pg_otp_plans");

    db.batch_execute("BEGIN").unwrap();
    for (conversation, person) in [("c1", "p1"), ("c2", "p2")] {
        let status: String = db
            .query_one(
                "SELECT status FROM otp_issue('plans', $1, $2)",
                &[&conversation, &person],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "code_sent");
        let claimed = db
            .query_one(
                "SELECT message_id, attempt, code FROM otp_outbox_claim(1)",
                &[],
            )
            .unwrap();
        let (message, attempt, code): (i64, i32, String) =
            (claimed.get(0), claimed.get(1), claimed.get(2));
        db.execute(
            "SELECT otp_outbox_sent($1, $2, 'wamid.plans')",
            &[&message, &attempt],
        )
        .unwrap();
        let wrong: String = db
            .query_one(
                "SELECT status FROM otp_verify('plans', $1, $2)",
                &[&conversation, &other_code(&code, 1)],
            )
            .unwrap()
            .get(0);
        assert_eq!(wrong, "incorrect");
        let token: String = db
            .query_one(
                "SELECT session_token FROM otp_verify('plans', $1, $2)",
                &[&conversation, &code],
            )
            .unwrap()
            .get(0);
        for call in [
            "SELECT status FROM session_touch($1)",
            "SELECT status FROM session_use($1)",
        ] {
            db.query_one(call, &[&token]).unwrap();
        }
        db.query("SELECT * FROM otp_status('plans', $1)", &[&conversation])
            .unwrap();
        db.query("SELECT * FROM otp_sessions('plans', $1)", &[&person])
            .unwrap();
        db.execute("SELECT otp_outbox_sweep()", &[]).unwrap();
        db.execute("SELECT session_revoke($1)", &[&token]).unwrap();
    }
    let scans: Vec<(String, i64)> = db
        .query(
            "SELECT relname::text, seq_scan FROM pg_stat_xact_user_tables
              WHERE schemaname = 'otp' AND seq_scan > 0 ORDER BY relname",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    db.batch_execute("COMMIT").unwrap();
    assert!(
        scans.is_empty(),
        "sequential scans of pg_otp's tables: {scans:?}"
    );
}
