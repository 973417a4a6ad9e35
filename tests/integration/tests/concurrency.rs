//! The rules that are the point of doing this inside the database, proven
//! with real parallel connections released at the same moment.

use pg_otp_integration::*;
use postgres::fallible_iterator::FallibleIterator;

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

#[test]
fn issue_wakes_a_listening_dispatcher() {
    let mut listener = connect(SENDER);
    listener.batch_execute("LISTEN otp_outbox").unwrap();
    let mut app = connect(APP);
    let conversation = conversation("notify");
    assert_eq!(issue(&mut app, &conversation), "code_sent");
    let mut notifications = listener.notifications();
    let first = notifications
        .timeout_iter(std::time::Duration::from_secs(30))
        .next()
        .expect("reading notifications")
        .expect("a notification after otp_issue committed");
    assert_eq!(first.channel(), "otp_outbox");
    assert_eq!(
        first.payload(),
        "",
        "the payload must not carry anything about the code"
    );
}
