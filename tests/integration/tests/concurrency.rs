//! The rules that are the point of doing this inside the database, proven
//! with real parallel connections released at the same moment.

use pg_otp_integration::*;
use std::time::Duration;

const CONNECTIONS: usize = 32;
const ROUNDS: usize = 5;

fn verify_all(conversation: &str, codes: impl Fn(usize) -> String + Sync) -> Vec<String> {
    all_at_once(CONNECTIONS, APP, |app, i| {
        app.query_one(
            "SELECT status FROM otp_verify($1, $2, $3)",
            &[&AGENT, &conversation, &codes(i)],
        )
        .unwrap()
        .get(0)
    })
}

fn challenge_summary(db: &mut Client, conversation: &str) -> (String, i32) {
    let row = db
        .query_one(
            "SELECT state, attempts_used FROM otp.challenge WHERE conversation = $1",
            &[&conversation],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn sessions(db: &mut Client, conversation: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM otp.session WHERE conversation = $1",
        &[&conversation],
    )
    .unwrap()
    .get(0)
}

#[test]
fn parallel_wrong_guesses_never_use_more_than_max_attempts() {
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let mut db = superuser();
    for round in 0..ROUNDS {
        let conversation = conversation(&format!("wrong-{round}"));
        assert_eq!(issue(&mut app, &conversation), "code_sent");
        let code = claim_code(&mut sender, &conversation);
        let statuses = verify_all(&conversation, |i| other_code(&code, i as u32));
        assert_eq!(count(&statuses, "incorrect"), 2, "{statuses:?}");
        assert_eq!(count(&statuses, "locked"), 1, "{statuses:?}");
        assert_eq!(
            count(&statuses, "no_challenge"),
            CONNECTIONS - 3,
            "{statuses:?}"
        );
        assert_eq!(
            challenge_summary(&mut db, &conversation),
            ("locked".to_owned(), 3)
        );
        assert_eq!(sessions(&mut db, &conversation), 0);
    }
}

#[test]
fn parallel_correct_submissions_verify_exactly_once() {
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let mut db = superuser();
    for round in 0..ROUNDS {
        let conversation = conversation(&format!("right-{round}"));
        assert_eq!(issue(&mut app, &conversation), "code_sent");
        let code = claim_code(&mut sender, &conversation);
        let statuses = verify_all(&conversation, |_| code.clone());
        assert_eq!(count(&statuses, "verified"), 1, "{statuses:?}");
        assert_eq!(
            count(&statuses, "no_challenge"),
            CONNECTIONS - 1,
            "{statuses:?}"
        );
        assert_eq!(
            challenge_summary(&mut db, &conversation),
            ("verified".to_owned(), 0)
        );
        assert_eq!(sessions(&mut db, &conversation), 1);
    }
}

#[test]
fn parallel_mix_of_right_and_wrong_codes_ends_exactly_once() {
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let mut db = superuser();
    for round in 0..ROUNDS {
        let conversation = conversation(&format!("mixed-{round}"));
        assert_eq!(issue(&mut app, &conversation), "code_sent");
        let code = claim_code(&mut sender, &conversation);
        let statuses = verify_all(&conversation, |i| {
            if i % 2 == 0 {
                code.clone()
            } else {
                other_code(&code, i as u32)
            }
        });
        // Either a right code came first (at most 2 wrong ones before it) or
        // three wrong ones locked the challenge; never both, never neither.
        let (verified, locked) = (count(&statuses, "verified"), count(&statuses, "locked"));
        assert_eq!(verified + locked, 1, "{statuses:?}");
        assert!(count(&statuses, "incorrect") <= 2, "{statuses:?}");
        let (state, attempts) = challenge_summary(&mut db, &conversation);
        assert!(attempts <= 3);
        assert_eq!(state, if verified == 1 { "verified" } else { "locked" });
        assert_eq!(sessions(&mut db, &conversation), verified as i64);
    }
}

#[test]
fn parallel_issues_leave_exactly_one_pending_challenge() {
    let mut db = superuser();
    for round in 0..ROUNDS {
        let conversation = conversation(&format!("issue-{round}"));
        let statuses = all_at_once(CONNECTIONS, APP, |app, _| issue(app, &conversation));
        assert_eq!(count(&statuses, "code_sent"), CONNECTIONS, "{statuses:?}");
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'superseded'),
                        (SELECT count(*) FROM otp.outbox WHERE conversation = $1 AND state = 'queued')
                   FROM otp.challenge WHERE conversation = $1",
                &[&conversation],
            )
            .unwrap();
        let (pending, superseded, queued): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (pending, superseded, queued),
            (1, CONNECTIONS as i64 - 1, 1)
        );
    }
}

/// In a database where no "pg_otp wake" worker runs (the worker serves
/// otp.purge_database, 'postgres' in the test cluster), the issuing
/// transaction notifies itself.
#[test]
fn issue_wakes_a_listening_dispatcher() {
    let mut listener = connect(SENDER);
    listener.batch_execute("LISTEN otp_outbox").unwrap();
    let mut app = connect(APP);
    let conversation = conversation("notify");
    assert_eq!(issue(&mut app, &conversation), "code_sent");
    let first = next_notification(&mut listener);
    assert_eq!(first.channel(), "otp_outbox");
    assert_eq!(
        first.payload(),
        "",
        "the payload must not carry anything about the code"
    );
    assert_eq!(first.process_id(), backend_pid(&mut app));
}

/// In otp.purge_database the "pg_otp wake" worker sends the NOTIFY once
/// the issuing transaction has committed, so that issuing codes takes no
/// part in PostgreSQL's serialised commits of notifying transactions; the
/// dispatcher it wakes finds the message.
#[test]
fn in_the_workers_database_the_wake_worker_notifies_after_the_commit() {
    const WORKERS_DATABASE: &str = "postgres";
    let mut db = connect_in(WORKERS_DATABASE, "postgres");
    let worker_pid = |db: &mut Client| -> Option<i32> {
        db.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_otp wake' AND datname = $1",
            &[&WORKERS_DATABASE],
        )
        .unwrap()
        .map(|row| row.get(0))
    };
    // (just after a server start it may still be connecting)
    wait_until(
        "the wake worker to run in otp.purge_database",
        Duration::from_secs(30),
        || worker_pid(&mut db).is_some(),
    );
    let worker = worker_pid(&mut db).unwrap();
    let mut listener = connect_in(WORKERS_DATABASE, SENDER);
    listener.batch_execute("LISTEN otp_outbox").unwrap();
    let mut app = connect_in(WORKERS_DATABASE, APP);
    let conversation = conversation("wake");
    assert_eq!(issue(&mut app, &conversation), "code_sent");
    let first = next_notification(&mut listener);
    assert_eq!((first.channel(), first.payload()), ("otp_outbox", ""));
    assert_eq!(
        first.process_id(),
        worker,
        "the worker notifies, not the issuing backend"
    );
    assert!(!claim_code(&mut listener, &conversation).is_empty());
}

/// Runs `work` in a transaction and tries to PREPARE it: it must fail
/// with 0A000 (a prepared transaction left behind is rolled back first,
/// or it would hold its locks for the tests after this one).
fn refused_prepare(app: &mut Client, what: &str, work: impl FnOnce(&mut Client)) {
    app.batch_execute("BEGIN").unwrap();
    work(app);
    let prepared = app.batch_execute("PREPARE TRANSACTION 'pg_otp_it_prepare'");
    if prepared.is_ok() {
        app.batch_execute("ROLLBACK PREPARED 'pg_otp_it_prepare'")
            .unwrap();
        panic!("{what}: the transaction was prepared");
    }
    let err = prepared.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{what}: {err}"
    );
    app.batch_execute("ROLLBACK").unwrap();
}

/// A transaction that issued or verified a code cannot be prepared (PREPARE
/// TRANSACTION), in the wake worker's database as in any other, whatever
/// the outcome, just as PostgreSQL refuses to prepare one that notified: a
/// prepared transaction would keep pg_otp's locks on the person, the
/// conversation and the destination (and a verification's row locks) until
/// someone ended it, and stall every code and guess for them. One whose
/// issuing savepoint was rolled back can be.
#[test]
fn a_transaction_that_issued_or_verified_a_code_cannot_be_prepared() {
    for database in [DATABASE, "postgres"] {
        let mut db = connect_in(database, "postgres");
        limited_agent(&mut db, "it-prepare", "resend_cooldown => '1 hour'");
        // A person of its own: the cooldown counts every agent's codes to
        // an address, and other tests send to the fixture's people.
        let person = new_person(&mut db, "prepare");
        let mut app = connect_in(database, APP);
        let conversation = conversation("prepare");
        let issue_as = |app: &mut Client, conversation: &str| -> String {
            app.query_one(
                "SELECT status FROM otp_issue('it-prepare', $1, $2)",
                &[&conversation, &person],
            )
            .unwrap()
            .get(0)
        };
        refused_prepare(&mut app, &format!("{database}, code sent"), |app| {
            assert_eq!(issue_as(app, &conversation), "code_sent");
        });
        // Refused for the cooldown: no message queued, no NOTIFY, but the
        // person's, the conversation's and the destination's locks taken.
        assert_eq!(
            issue_as(&mut app, &format!("{conversation}-a")),
            "code_sent"
        );
        refused_prepare(&mut app, &format!("{database}, rate limited"), |app| {
            assert_eq!(issue_as(app, &format!("{conversation}-b")), "rate_limited");
        });
        // A wrong guess: the challenge's and the person's guard rows locked.
        refused_prepare(&mut app, &format!("{database}, wrong code"), |app| {
            let status: String = app
                .query_one(
                    "SELECT status FROM otp_verify('it-prepare', $1, '000000')",
                    &[&format!("{conversation}-a")],
                )
                .unwrap()
                .get(0);
            assert!(
                ["incorrect", "verified"].contains(&status.as_str()),
                "{status}"
            );
        });

        app.batch_execute("BEGIN; SAVEPOINT s").unwrap();
        issue_as(&mut app, &format!("{conversation}-c"));
        app.batch_execute("ROLLBACK TO SAVEPOINT s; PREPARE TRANSACTION 'pg_otp_it_prepare'")
            .unwrap_or_else(|err| {
                panic!("in {database}, after the rollback to the savepoint: {err}")
            });
        app.batch_execute("ROLLBACK PREPARED 'pg_otp_it_prepare'")
            .unwrap();
    }
}

/// Configures an agent over the fixture's people with the given limits.
fn limited_agent(db: &mut Client, name: &str, limits: &str) {
    db.batch_execute(&format!(
        "SELECT otp_configure(agent => '{name}', source => 'people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email', {limits})"
    ))
    .unwrap();
}

fn issue_all_at_once(agent: &str, person: &str, label: &str) -> Vec<String> {
    all_at_once(CONNECTIONS, APP, |app, i| {
        let conversation = format!("{label}-{i}");
        app.query_one(
            "SELECT status FROM otp_issue($1, $2, $3)",
            &[&agent, &conversation, &person],
        )
        .unwrap()
        .get(0)
    })
}

#[test]
fn parallel_issues_never_exceed_max_codes() {
    let mut db = superuser();
    limited_agent(&mut db, "it-five", "max_codes => 5, resend_cooldown => '0'");
    let person = new_person(&mut db, "five");
    let statuses = issue_all_at_once("it-five", &person, &conversation("five"));
    assert_eq!(count(&statuses, "code_sent"), 5, "{statuses:?}");
    assert_eq!(
        count(&statuses, "rate_limited"),
        CONNECTIONS - 5,
        "{statuses:?}"
    );
    let codes: i64 = db
        .query_one(
            "SELECT count(*) FROM otp.challenge WHERE agent = 'it-five' AND subject = $1",
            &[&person],
        )
        .unwrap()
        .get(0);
    assert_eq!(codes, 5);
}

#[test]
fn parallel_issues_respect_the_resend_cooldown() {
    let mut db = superuser();
    limited_agent(
        &mut db,
        "it-cooldown",
        "max_codes => 100, resend_cooldown => '30 seconds'",
    );
    let person = new_person(&mut db, "cooldown");
    let statuses = issue_all_at_once("it-cooldown", &person, &conversation("cooldown"));
    assert_eq!(count(&statuses, "code_sent"), 1, "{statuses:?}");
    assert_eq!(
        count(&statuses, "rate_limited"),
        CONNECTIONS - 1,
        "{statuses:?}"
    );
}

#[test]
fn parallel_guesses_across_conversations_stop_at_the_lockout_threshold() {
    const THRESHOLD: i64 = 10;
    const CONVERSATIONS: usize = 8;
    let mut db = superuser();
    limited_agent(
        &mut db,
        "it-lockout",
        "max_codes => 100, resend_cooldown => '0', lockout_threshold => 10",
    );
    let person = new_person(&mut db, "lockout");
    let label = conversation("lockout");
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let mut codes = Vec::new();
    for n in 0..CONVERSATIONS {
        let conversation = format!("{label}-{n}");
        let status: String = app
            .query_one(
                "SELECT status FROM otp_issue('it-lockout', $1, $2)",
                &[&conversation, &person],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "code_sent");
        codes.push((conversation.clone(), claim_code(&mut sender, &conversation)));
    }
    // 3 wrong guesses for each of the 8 codes, all at once: 24 > 10
    let statuses = all_at_once(CONVERSATIONS * 3, APP, |app, i| {
        let (conversation, code) = &codes[i % CONVERSATIONS];
        app.query_one(
            "SELECT status FROM otp_verify('it-lockout', $1, $2)",
            &[conversation, &other_code(code, i as u32)],
        )
        .unwrap()
        .get::<_, String>(0)
    });
    let used: i64 = db
        .query_one(
            "SELECT sum(attempts_used)::bigint FROM otp.challenge WHERE agent = 'it-lockout' AND subject = $1",
            &[&person],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        used, THRESHOLD,
        "exactly the threshold of failures was counted: {statuses:?}"
    );
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM otp.challenge WHERE agent = 'it-lockout' AND subject = $1 AND state = 'pending'",
            &[&person],
        )
        .unwrap()
        .get(0);
    let refused: String = app
        .query_one(
            "SELECT status FROM otp_issue('it-lockout', $1, $2)",
            &[&format!("{label}-after"), &person],
        )
        .unwrap()
        .get(0);
    assert_eq!(refused, "rate_limited", "locked out");
    // codes nobody guessed at last stay pending, but cannot be verified while locked
    if pending > 0 {
        let untouched = codes.iter().find(|(c, _)| {
            db.query_one(
                "SELECT state = 'pending' FROM otp.challenge WHERE conversation = $1",
                &[c],
            )
            .unwrap()
            .get(0)
        });
        if let Some((conversation, code)) = untouched {
            let status: String = app
                .query_one(
                    "SELECT status FROM otp_verify('it-lockout', $1, $2)",
                    &[conversation, code],
                )
                .unwrap()
                .get(0);
            assert_eq!(status, "locked");
        }
    }
}

/// Asserts that `result` is PostgreSQL's refusal to wait for a row lock
/// (55P03: NOWAIT, or lock_timeout); `otherwise` says what went wrong if
/// the call went through.
fn assert_lock_not_available<T: std::fmt::Debug>(
    result: Result<T, postgres::Error>,
    otherwise: &str,
) {
    match result {
        Ok(value) => panic!("{otherwise}: {value:?}"),
        Err(err) => assert_eq!(
            err.code(),
            Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            "{err}"
        ),
    }
}

/// Waits until backend `pid` is waiting for a lock.
fn wait_for_lock_wait(watch: &mut Client, pid: i32) {
    wait_until(
        "a backend to wait for a lock",
        Duration::from_secs(30),
        || {
            watch
            .query_one(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or(false)
        },
    );
}

/// A code issued to a new person whose WhatsApp number is `phone`:
/// (person, conversation).
fn issued(db: &mut Client, app: &mut Client, label: &str, phone: &str) -> (String, String) {
    let person = conversation(&format!("{label}-person"));
    db.execute(
        "INSERT INTO people VALUES ($1, $2, NULL)",
        &[&person, &phone],
    )
    .unwrap();
    let talk = conversation(label);
    let status: String = app
        .query_one(
            "SELECT status FROM otp_issue($1, $2, $3)",
            &[&AGENT, &talk, &person],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "code_sent");
    (person, talk)
}

/// A code issued to a new person on WhatsApp and claimed by the sender.
struct Claimed {
    person: String,
    talk: String,
    code: String,
    id: i64,
    attempt: i32,
}

fn claimed_message(
    db: &mut Client,
    app: &mut Client,
    sender: &mut Client,
    label: &str,
    phone: &str,
) -> Claimed {
    let (person, talk) = issued(db, app, label, phone);
    let code = claim_code(sender, &talk);
    let row = db
        .query_one(
            "SELECT id, attempt FROM otp.outbox WHERE conversation = $1",
            &[&talk],
        )
        .unwrap();
    Claimed {
        person,
        talk,
        code,
        id: row.get(0),
        attempt: row.get(1),
    }
}

/// A provider's status about a message and the right code for it, at the
/// same moment: whatever the order their locks are taken in, the code
/// verifies. (Locks taken in opposite orders would deadlock, and the
/// verification that PostgreSQL picked to abort would burn the right code.)
#[test]
fn a_status_racing_the_right_code_never_burns_it() {
    let mut db = superuser();
    let mut watch = superuser();
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let Claimed {
        person,
        talk,
        code,
        id,
        attempt,
    } = claimed_message(
        &mut db,
        &mut app,
        &mut sender,
        "status-race",
        "+34 600 55 66 78",
    );
    let reference = format!("wamid.{talk}");
    let sent: bool = sender
        .query_one(
            "SELECT otp_outbox_sent($1, $2, $3)",
            &[&id, &attempt, &reference],
        )
        .unwrap()
        .get(0);
    assert!(sent);

    // Hold the person's guard row: the verification stops between locking
    // the challenge and its later writes.
    let mut hold = db.transaction().unwrap();
    hold.execute(
        "INSERT INTO otp.subject_guard AS g (agent, subject) VALUES ($1, $2)
         ON CONFLICT (agent, subject) DO UPDATE SET consecutive_failures = g.consecutive_failures",
        &[&AGENT, &person],
    )
    .unwrap();
    let app_pid = backend_pid(&mut app);
    let status = |sender: &mut Client| {
        sender
            .query_one(
                "SELECT otp_outbox_status($1, $2, 'read', now(), NULL, false)",
                &[&reference, &id],
            )
            .map(|row| row.get::<_, String>(0))
    };
    std::thread::scope(|scope| {
        let verifying = scope.spawn(|| {
            app.query_one(
                "SELECT status FROM otp_verify($1, $2, $3)",
                &[&AGENT, &talk, &code],
            )
            .map(|row| row.get::<_, String>(0))
        });
        wait_for_lock_wait(&mut watch, app_pid);
        // The status comes while the verification holds the challenge: it
        // is refused at once (the dispatcher repeats it), never waits.
        assert_lock_not_available(status(&mut sender), "recorded while the challenge was held");
        hold.commit().unwrap();
        let verified = verifying.join().unwrap();
        assert_eq!(
            verified.as_deref().map_err(|e| e.to_string()),
            Ok("verified")
        );
    });
    // Repeated once the verification is done, it lands.
    assert_eq!(status(&mut sender).unwrap(), "recorded");
}

/// A report locks the message's challenge before the message itself, the
/// order otp_verify takes them in (it ends the challenge, then stops its
/// messages): a report waiting for its message already holds the
/// challenge. (The status race above cannot show the order: NOWAIT on the
/// challenge fails fast whichever row comes first.)
#[test]
fn a_report_locks_the_challenge_before_the_message() {
    let mut db = superuser();
    let mut watch = superuser();
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let Claimed { id, attempt, .. } = claimed_message(
        &mut db,
        &mut app,
        &mut sender,
        "report-order",
        "+34 600 55 66 79",
    );

    // Hold the message (not its challenge): the report must wait for it.
    let mut hold = db.transaction().unwrap();
    hold.execute("SELECT FROM otp.outbox WHERE id = $1 FOR UPDATE", &[&id])
        .unwrap();
    let sender_pid = backend_pid(&mut sender);
    std::thread::scope(|scope| {
        let reporting = scope.spawn(|| {
            sender
                .query_one(
                    "SELECT otp_outbox_sent($1, $2, 'wamid.order')",
                    &[&id, &attempt],
                )
                .map(|row| row.get::<_, bool>(0))
        });
        wait_for_lock_wait(&mut watch, sender_pid);
        // While it waits for the message, the report holds the challenge.
        assert_lock_not_available(
            watch.query_one(
                "SELECT FROM otp.challenge
                  WHERE id = (SELECT challenge_id FROM otp.outbox WHERE id = $1)
                    FOR UPDATE NOWAIT",
                &[&id],
            ),
            "the challenge was free while the report waited for its message",
        );
        hold.rollback().unwrap();
        assert!(reporting.join().unwrap().unwrap(), "the report was applied");
    });
}

/// A dispatcher that keeps its claim's transaction open holds the message,
/// and otp_verify must wait for it. An application that gives up on that
/// wait (here its lock_timeout) gets an error before the guess counts: the
/// right code still verifies once the dispatcher lets go, instead of being
/// used up by a verification that never started the session.
#[test]
fn a_verification_given_up_while_a_dispatcher_holds_the_message_keeps_the_code() {
    let mut db = superuser();
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let (_, talk) = issued(&mut db, &mut app, "held-claim", "+34 600 55 66 80");

    let mut claim = sender.transaction().unwrap();
    let code: String = claim
        .query(
            "SELECT conversation, code FROM otp_outbox_claim(batch_size => 1000)",
            &[],
        )
        .unwrap()
        .iter()
        .find(|row| row.get::<_, String>(0) == talk)
        .map(|row| row.get(1))
        .expect("the code was claimed");
    app.batch_execute("SET lock_timeout = '200ms'").unwrap();
    let verify = |app: &mut Client| {
        app.query_one(
            "SELECT status FROM otp_verify($1, $2, $3)",
            &[&AGENT, &talk, &code],
        )
        .map(|row| row.get::<_, String>(0))
    };
    assert_lock_not_available(verify(&mut app), "verified past the dispatcher's lock");
    claim.commit().unwrap();
    app.batch_execute("RESET lock_timeout").unwrap();
    assert_eq!(verify(&mut app).unwrap(), "verified");
}
