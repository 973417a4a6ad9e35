//! As history grows, the cost of a flow stays flat, and old rows go away.

use std::time::Duration;

use pg_otp_integration::*;

const HISTORY_DB: &str = "pg_otp_history";
const ROWS: i64 = 1_000_000;

/// With a million historical rows in each table that grows with use, a full
/// flow reads them only through indexes. Checked without timing: PostgreSQL
/// counts the sequential scans of the flow's own transaction.
#[test]
fn a_flow_never_scans_history_tables_after_a_million_codes() {
    let mut loader = connect_in(HISTORY_DB, "postgres");
    let loaded: bool = loader
        .query_one(
            "SELECT EXISTS (SELECT FROM otp.challenge WHERE agent = 'it' AND conversation = 'old-' || $1)",
            &[&ROWS.to_string()],
        )
        .unwrap()
        .get(0);
    if !loaded {
        loader.batch_execute(&format!(
            "INSERT INTO otp.challenge (id, agent, conversation, subject, channel, destination_hint, destination_key,
                                        code_hash, key_id, state, max_attempts, created_at, expires_at, ended_at)
             SELECT nextval('otp.challenge_id_seq'), 'it', 'old-' || n, 'old-' || (n % 50000), 'email', 'o***@example.com',
                    sha256(n::text::bytea), sha256(('c' || n)::bytea), '\\x0000000000000000', 'verified', 3,
                    now() - interval '2 days', now() - interval '2 days', now() - interval '2 days'
               FROM generate_series(1, {ROWS}) n;
             INSERT INTO otp.outbox (challenge_id, agent, conversation, channel, destination, state, available_at,
                                     expires_at, created_at, finished_at, key_id)
             SELECT n, 'it', 'old-' || n, 'email', 'old@example.com', 'sent', now() - interval '2 days',
                    now() - interval '2 days', now() - interval '2 days', now() - interval '2 days',
                    '\\x0000000000000000'
               FROM generate_series(1, {ROWS}) n;
             INSERT INTO otp.session (token_hash, agent, conversation, subject, idle_timeout, created_at, last_seen_at,
                                      idle_expires_at, expires_at)
             SELECT sha256(('s' || n)::bytea), 'it', 'old-' || n, 'old-' || (n % 50000), '30 minutes',
                    now() - interval '2 days', now() - interval '2 days', now() - interval '2 days', now() - interval '1 day'
               FROM generate_series(1, {ROWS}) n;
             INSERT INTO otp.event (at, slot, agent, conversation, subject, event)
             SELECT now() - interval '2 days', otp.event_slot(now() - interval '2 days'), 'it', 'old-' || n, 'old-' || (n % 50000), 'issued'
               FROM generate_series(1, {ROWS}) n;
             ANALYZE otp.challenge, otp.outbox, otp.session, otp.event;"
        ))
        .unwrap();
    }
    drop(loader);

    // A fresh backend: PostgreSQL 15 shows a backend's not yet flushed
    // counters as "this transaction's", so the loader's scans must not leak in.
    let mut db = connect_in(HISTORY_DB, "postgres");

    // One transaction: issue, claim, report, a wrong and a right code, a touch, status, events.
    let mut tx = db.transaction().unwrap();
    let conversation = conversation("history");
    let status: String = tx
        .query_one(
            "SELECT status FROM otp_issue('it', $1, 'p1')",
            &[&conversation],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "code_sent");
    let row = tx
        .query_one(
            "SELECT message_id, code, attempt FROM otp_outbox_claim(16) WHERE conversation = $1",
            &[&conversation],
        )
        .unwrap();
    let (message_id, code, attempt): (i64, String, i32) = (row.get(0), row.get(1), row.get(2));
    tx.execute(
        "SELECT otp_outbox_sent($1, $2, 'ref')",
        &[&message_id, &attempt],
    )
    .unwrap();
    let wrong = other_code(&code, 0);
    tx.query_one(
        "SELECT status FROM otp_verify('it', $1, $2)",
        &[&conversation, &wrong],
    )
    .unwrap();
    let token: String = tx
        .query_one(
            "SELECT session_token FROM otp_verify('it', $1, $2)",
            &[&conversation, &code],
        )
        .unwrap()
        .get(0);
    tx.query_one("SELECT status FROM session_touch($1)", &[&token])
        .unwrap();
    tx.query_one("SELECT status FROM otp_status('it', $1)", &[&conversation])
        .unwrap();
    tx.query("SELECT * FROM otp_events('it', 'p1')", &[])
        .unwrap();
    let scans = tx
        .query(
            "SELECT relname, seq_scan, idx_scan FROM pg_stat_xact_user_tables
              WHERE schemaname = 'otp' AND relname IN ('challenge', 'outbox', 'session', 'event')
              ORDER BY relname",
            &[],
        )
        .unwrap();
    assert_eq!(scans.len(), 4, "all four history tables were used");
    for row in &scans {
        let (table, seq, idx): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            seq, 0,
            "otp.{table} was scanned sequentially ({idx} index scans)"
        );
        assert!(
            idx > 0 || table == "event",
            "otp.{table} was read through an index"
        );
    }
    tx.rollback().unwrap();
}

/// The background worker (otp.purge_database = 'postgres' in the test
/// cluster, every second) deletes old rows on its own.
#[test]
fn the_background_worker_purges_old_rows() {
    let mut db = connect_to_postgres_database();
    db.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_otp;
         INSERT INTO otp.event (at, slot, agent, subject, event)
             VALUES (now() - interval '100 days', otp.event_slot(now() - interval '100 days'), 'gone', 'x', 'issued');
         INSERT INTO otp.subject_guard VALUES ('gone', 'x', 0, NULL);",
    )
    .unwrap();
    wait_until(
        "the purge worker to delete old rows",
        Duration::from_secs(60),
        || {
            let left: i64 = db
                .query_one(
                    "SELECT (SELECT count(*) FROM otp.event WHERE agent = 'gone')
                      + (SELECT count(*) FROM otp.subject_guard WHERE agent = 'gone')",
                    &[],
                )
                .unwrap()
                .get(0);
            left == 0
        },
    );
}

fn connect_to_postgres_database() -> Client {
    let config = format!(
        "host={} port={} user=postgres dbname=postgres",
        env("PG_OTP_TEST_HOST"),
        env("PG_OTP_TEST_PORT")
    );
    Client::connect(&config, NoTls).unwrap()
}

/// The partition holding events from `days` ago, and its file.
fn week_of(db: &mut Client, days: i32) -> (String, i64) {
    let row = db
        .query_one(
            "SELECT p, pg_relation_filenode(p)::bigint
               FROM format('otp.event_%s', lpad(otp.event_slot(clock_timestamp() - make_interval(days => $1))::text,
                                                2, '0')) AS p",
            &[&days],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn old_events(db: &mut Client, agent: &str, days: i32) {
    db.execute(
        "INSERT INTO otp.event (at, slot, agent, subject, event)
         SELECT t, otp.event_slot(t), $1, 'p', 'issued'
           FROM (SELECT clock_timestamp() - make_interval(days => $2) AS t FROM generate_series(1, 10)) AS old",
        &[&agent, &days],
    )
    .unwrap();
}

/// Purging the audit trail stalls nothing. A purge that empties an old
/// week's partition holds it until it commits, but authentications write
/// to this week's and never wait for it; and a purge never waits for a
/// reader of an old week: it deletes that week's rows one by one instead.
/// (Each side runs under a lock_timeout: a wait would fail it with 55P03.)
#[test]
fn purging_the_audit_trail_waits_for_nobody_and_stalls_no_authentication() {
    let mut db = superuser();
    let mut purger = superuser();
    purger.batch_execute("SET lock_timeout = '200ms'").unwrap();

    // A reader holds the old week: the purge deletes row by row.
    old_events(&mut db, "purge-reader", 100);
    let (week, file) = week_of(&mut db, 100);
    let mut reader = superuser();
    let mut reading = reader.transaction().unwrap();
    reading
        .query_one(&format!("SELECT count(*) FROM {week}"), &[])
        .unwrap();
    let purged: i64 = purger
        .query_one("SELECT events FROM otp_purge()", &[])
        .unwrap()
        .get(0);
    assert!(purged >= 10, "{purged}");
    assert_eq!(
        week_of(&mut db, 100).1,
        file,
        "not truncated under a reader"
    );
    reading.commit().unwrap();

    // The purge empties the old week and keeps it locked; a whole
    // authentication goes on meanwhile.
    old_events(&mut db, "purge-holder", 100);
    let mut purging = purger.transaction().unwrap();
    let purged: i64 = purging
        .query_one("SELECT events FROM otp_purge()", &[])
        .unwrap()
        .get(0);
    assert!(purged >= 10, "{purged}");
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    app.batch_execute("SET lock_timeout = '200ms'").unwrap();
    sender.batch_execute("SET lock_timeout = '200ms'").unwrap();
    let conversation = conversation("purge-flow");
    assert_eq!(issue(&mut app, &conversation), "code_sent");
    let code = claim_code(&mut sender, &conversation);
    let status: String = app
        .query_one(
            "SELECT status FROM otp_verify($1, $2, $3)",
            &[&AGENT, &conversation, &code],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "verified");
    purging.commit().unwrap();
    assert_ne!(week_of(&mut db, 100).1, file, "truncated");
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM otp.event WHERE agent IN ('purge-reader', 'purge-holder')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
