//! Guesses that a rollback cannot erase.
//!
//! The application controls its transactions: it can roll back, use
//! savepoints, catch errors in PL/pgSQL, make a statement fail on purpose
//! exactly when a guess was wrong, or close a cursor early. Whatever it
//! does, every attempt counts against the code and against the person, and a
//! right code works once. Each pattern below gave unlimited guesses on 0.2.0.

use pg_otp_integration::*;

/// An agent of its own: 3 attempts per code, lockout after 6 failures in a row.
const AGENT_RB: &str = "it-rollback";
const THRESHOLD: usize = 6;

fn setup() -> (Client, Client, Client) {
    let mut db = superuser();
    db.batch_execute(&format!(
        "SELECT otp_configure(agent => '{AGENT_RB}', source => 'people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email',
                              max_codes => 1000000, resend_cooldown => '0',
                              lockout_threshold => {THRESHOLD})"
    ))
    .unwrap();
    (db, connect(APP), connect(SENDER))
}

/// Issues a code for `person` in a new conversation; returns it and the code.
fn fresh_code(
    app: &mut Client,
    sender: &mut Client,
    person: &str,
    label: &str,
) -> (String, String) {
    let conversation = conversation(label);
    let status: String = app
        .query_one(
            "SELECT status FROM otp_issue($1, $2, $3)",
            &[&AGENT_RB, &conversation, &person],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "code_sent");
    let code = claim_code(sender, &conversation);
    (conversation, code)
}

fn verify(app: &mut Client, conversation: &str, code: &str) -> (String, Option<i32>) {
    let row = app
        .query_one(
            "SELECT status, attempts_remaining FROM otp_verify($1, $2, $3)",
            &[&AGENT_RB, &conversation, &code],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn issue_status(app: &mut Client, person: &str) -> String {
    app.query_one(
        "SELECT status FROM otp_issue($1, $2, $3)",
        &[&AGENT_RB, &conversation("rb-after"), &person],
    )
    .unwrap()
    .get(0)
}

/// A way of guessing whose writes are thrown away; returns the answer.
type Guess = fn(&mut Client, &str, &str) -> (String, Option<i32>);

/// Three wrong guesses at a fresh code, each made with `guess`: they count
/// down as if committed, and then the code is gone (even the right code no
/// longer verifies). More wrong guesses the same way, at fresh codes, reach
/// the person's lockout threshold: no new code is sent.
fn assert_rolled_back_guesses_count(label: &str, guess: Guess) {
    let (mut db, mut app, mut sender) = setup();
    let person = new_person(&mut db, label);
    let (conversation, code) = fresh_code(&mut app, &mut sender, &person, label);
    let answers: Vec<_> = (0..3)
        .map(|i| guess(&mut app, &conversation, &other_code(&code, i)))
        .collect();
    let expected = [
        ("incorrect".to_owned(), Some(2)),
        ("incorrect".to_owned(), Some(1)),
        ("locked".to_owned(), Some(0)),
    ];
    assert_eq!(answers, expected, "rolled-back guesses count down");
    let (fourth, _) = verify(&mut app, &conversation, &code);
    assert!(
        fourth == "locked" || fourth == "no_challenge",
        "the right code after three rolled-back wrong ones: {fourth}"
    );

    let mut failures = 3; // the three of the first code
    while failures < THRESHOLD {
        let (conversation, code) = fresh_code(&mut app, &mut sender, &person, label);
        for _ in 0..3.min(THRESHOLD - failures) {
            guess(&mut app, &conversation, &other_code(&code, failures as u32));
            failures += 1;
        }
    }
    assert_eq!(
        issue_status(&mut app, &person),
        "rate_limited",
        "{THRESHOLD} rolled-back failures lock the person out"
    );
}

#[test]
fn guesses_rolled_back_with_their_transaction_still_count() {
    assert_rolled_back_guesses_count("rb-tx", |app, conversation, code| {
        app.batch_execute("BEGIN").unwrap();
        let answer = verify(app, conversation, code);
        app.batch_execute("ROLLBACK").unwrap();
        answer
    });
}

#[test]
fn guesses_rolled_back_to_a_savepoint_still_count() {
    assert_rolled_back_guesses_count("rb-savepoint", |app, conversation, code| {
        app.batch_execute("BEGIN; SAVEPOINT guess").unwrap();
        let answer = verify(app, conversation, code);
        app.batch_execute("ROLLBACK TO SAVEPOINT guess; COMMIT")
            .unwrap();
        answer
    });
}

/// A PL/pgSQL block that guesses and then throws the guess away with an
/// exception: the answer survives in a variable, the writes do not.
#[test]
fn guesses_undone_by_an_exception_block_still_count() {
    assert_rolled_back_guesses_count("rb-exception", |app, conversation, code| {
        app.execute(
            "SELECT set_config('rb.agent', $1, false), set_config('rb.conversation', $2, false),
                    set_config('rb.code', $3, false)",
            &[&AGENT_RB, &conversation, &code],
        )
        .unwrap();
        app.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS answers (status text, remaining int);
             TRUNCATE answers;
             DO $$
             DECLARE s text; r int;
             BEGIN
                 BEGIN
                     SELECT status, attempts_remaining INTO s, r
                       FROM otp_verify(current_setting('rb.agent'), current_setting('rb.conversation'),
                                       current_setting('rb.code'));
                     RAISE EXCEPTION 'undo the guess';
                 EXCEPTION WHEN raise_exception THEN
                     INSERT INTO answers VALUES (s, r);
                 END;
             END $$",
        )
        .unwrap();
        let row = app
            .query_one("SELECT status, remaining FROM answers", &[])
            .unwrap();
        (row.get(0), row.get(1))
    });
}

/// One autocommit statement that fails, and so rolls back, exactly when the
/// guess is wrong: the attacker learns the answer from the error. (The
/// division depends on the answer, so it cannot fail before the guess.)
fn failing_when_wrong(app: &mut Client, conversation: &str, code: &str) -> Result<String, String> {
    app.query_one(
        "SELECT (1 / (status = 'verified')::int)::text FROM otp_verify($1, $2, $3)",
        &[&AGENT_RB, &conversation, &code],
    )
    .map(|row| row.get(0))
    .map_err(|err| {
        err.as_db_error()
            .map(|e| e.code().code().to_owned())
            .unwrap_or_default()
    })
}

/// The attacker reads the answer from whether the statement failed: a
/// failure (22012) means a wrong guess, and rolls the guess back.
#[test]
fn guesses_in_a_statement_that_fails_on_purpose_still_count() {
    assert_rolled_back_guesses_count("rb-statement", |app, conversation, code| {
        match failing_when_wrong(app, conversation, code) {
            Err(sqlstate) => {
                assert_eq!(sqlstate, "22012", "a wrong guess fails the statement");
                // what the attacker learns; the countdown is checked by the caller
                let row = app
                    .query_one(
                        "SELECT status, attempts_remaining FROM otp_status($1, $2)",
                        &[&AGENT_RB, &conversation],
                    )
                    .unwrap();
                let (status, remaining): (String, Option<i32>) = (row.get(0), row.get(1));
                match status.as_str() {
                    "pending" => ("incorrect".to_owned(), remaining),
                    other => (other.to_owned(), Some(0)),
                }
            }
            Ok(yes) => (yes, None),
        }
    });
}

#[test]
fn a_cursor_closed_early_does_not_hide_a_guess() {
    let (mut db, mut app, mut sender) = setup();
    let person = new_person(&mut db, "rb-cursor");
    let (conversation, code) = fresh_code(&mut app, &mut sender, &person, "rb-cursor");
    for i in 0..3 {
        // (test-made values: no quotes to escape)
        app.batch_execute(&format!(
            "BEGIN;
             DECLARE guess CURSOR FOR SELECT status FROM otp_verify('{AGENT_RB}', '{conversation}', '{}');
             FETCH 1 FROM guess; CLOSE guess; ROLLBACK",
            other_code(&code, i)
        ))
        .unwrap();
    }
    let (status, _) = verify(&mut app, &conversation, &code);
    assert!(status == "locked" || status == "no_challenge", "{status}");
}

/// Codes issued and guessed inside transactions that are rolled back never
/// became durable, but the guesses at them count against the person.
#[test]
fn guesses_at_codes_issued_in_rolled_back_transactions_count_against_the_person() {
    let (mut db, mut app, _sender) = setup();
    let person = new_person(&mut db, "rb-issue");
    let mut guesses = 0;
    while guesses < THRESHOLD {
        app.batch_execute("BEGIN").unwrap();
        let conversation = conversation("rb-issue");
        let status: String = app
            .query_one(
                "SELECT status FROM otp_issue($1, $2, $3)",
                &[&AGENT_RB, &conversation, &person],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "code_sent");
        for i in 0..3 {
            let (status, _) = verify(&mut app, &conversation, &format!("{:06}", 100_000 + i));
            assert_ne!(status, "verified", "a lucky guess: rerun");
            guesses += 1;
        }
        app.batch_execute("ROLLBACK").unwrap();
    }
    assert_eq!(issue_status(&mut app, &person), "rate_limited");
}

/// A right code whose verification is rolled back counts as used: no second
/// session from the same code, and the rolled-back token opens nothing.
#[test]
fn a_code_verified_in_a_rolled_back_transaction_is_used_up() {
    let (mut db, mut app, mut sender) = setup();
    let person = new_person(&mut db, "rb-verified");
    let (conversation, code) = fresh_code(&mut app, &mut sender, &person, "rb-verified");
    app.batch_execute("BEGIN").unwrap();
    let row = app
        .query_one(
            "SELECT status, session_token FROM otp_verify($1, $2, $3)",
            &[&AGENT_RB, &conversation, &code],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "verified");
    let token: String = row.get(1);
    app.batch_execute("ROLLBACK").unwrap();

    assert_eq!(verify(&mut app, &conversation, &code).0, "no_challenge");
    let touched: String = app
        .query_one("SELECT status FROM session_touch($1)", &[&token])
        .unwrap()
        .get(0);
    assert_eq!(touched, "unknown");
    let state: String = db
        .query_one(
            "SELECT state FROM otp.challenge WHERE conversation = $1",
            &[&conversation],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "verified", "recorded as used, without a session");
}

/// The ledger outlives the extension (it is the server's), but challenge ids
/// start over when pg_otp is dropped and created again. Attempts counted
/// against a dropped install's challenge must not count against the new
/// install's challenge with the same id.
#[test]
fn a_new_install_does_not_inherit_the_attempts_of_the_old_one() {
    let mut db = fresh_database("pg_otp_reinstalled");
    let install = |db: &mut Client| {
        db.batch_execute(
            "CREATE EXTENSION pg_otp;
             CREATE TABLE IF NOT EXISTS people (id text PRIMARY KEY, email text);
             INSERT INTO people VALUES ('p1', 'p1@example.com') ON CONFLICT DO NOTHING;
             SELECT otp_configure(agent => 'again', source => 'people', id_column => 'id', email_column => 'email');",
        )
        .unwrap();
        db.batch_execute("SELECT otp_issue('again', 'c1', 'p1')")
            .unwrap();
        let id: i64 = db
            .query_one("SELECT max(id) FROM otp.challenge", &[])
            .unwrap()
            .get(0);
        let code: String = db
            .query_one("SELECT code FROM otp_outbox_claim(batch_size => 10)", &[])
            .unwrap()
            .get(0);
        (id, other_code(&code, 1))
    };
    let (first, wrong) = install(&mut db);
    // Every attempt of the code used, in transactions that rolled back.
    for _ in 0..3 {
        db.batch_execute("BEGIN").unwrap();
        let status: String = db
            .query_one(
                "SELECT status FROM otp_verify('again', 'c1', $1)",
                &[&wrong],
            )
            .unwrap()
            .get(0);
        assert!(
            matches!(status.as_str(), "incorrect" | "locked"),
            "{status}"
        );
        db.batch_execute("ROLLBACK").unwrap();
    }
    db.batch_execute("DROP EXTENSION pg_otp CASCADE").unwrap();
    let (second, wrong) = install(&mut db);
    assert_eq!(first, second, "the ids start over");
    let row = db
        .query_one(
            "SELECT status, attempts_remaining FROM otp_verify('again', 'c1', $1)",
            &[&wrong],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, Option<i32>>(1)),
        ("incorrect".to_owned(), Some(2))
    );
}
