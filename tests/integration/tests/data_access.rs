//! Sessions that guard the data, with real connections: a row-level
//! security policy on otp_subject() shows each transaction only the rows of
//! the person whose session it used, and a binding never outlives its
//! transaction, even on a connection that serves many conversations, as
//! one does behind a transaction-mode pooler.

use pg_otp_integration::*;

const OPEN_AGENT: &str = "it-open";

/// An agent that starts sessions at once (Require OTP off), people, and a
/// table of their rows guarded by the README's policy for the app's role.
fn setup(people: usize) -> Vec<(String, String)> {
    let mut db = superuser();
    db.batch_execute(&format!(
        "SELECT otp_configure(agent => '{OPEN_AGENT}', source => 'people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email', require_otp => false);
         CREATE TABLE IF NOT EXISTS guarded_rows (person text, n int);
         ALTER TABLE guarded_rows ENABLE ROW LEVEL SECURITY;
         DROP POLICY IF EXISTS own_rows ON guarded_rows;
         CREATE POLICY own_rows ON guarded_rows FOR SELECT TO {APP}
             USING (person = (SELECT otp_subject('{OPEN_AGENT}')));
         GRANT SELECT ON guarded_rows TO {APP};"
    ))
    .unwrap();
    let mut app = connect(APP);
    (0..people)
        .map(|i| {
            let person = new_person(&mut db, &format!("guarded-{i}"));
            db.execute(
                "INSERT INTO guarded_rows SELECT $1, n FROM generate_series(1, 3) n",
                &[&person],
            )
            .unwrap();
            let row = app
                .query_one(
                    "SELECT status, session_token FROM otp_issue($1, $2, $3)",
                    &[&OPEN_AGENT, &conversation("guarded"), &person],
                )
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "authenticated");
            (person, row.get(1))
        })
        .collect()
}

/// The people whose rows this transaction can see.
fn visible(app: &mut postgres::Transaction<'_>) -> Vec<String> {
    app.query("SELECT DISTINCT person FROM guarded_rows ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// 32 connections bind 32 different people at the same moment: each sees
/// its person's rows and nobody else's, and nothing once its transaction is over.
#[test]
fn thirty_two_connections_each_see_only_their_persons_rows() {
    let people = setup(32);
    let seen = all_at_once(32, APP, |app, i| {
        let (person, token) = &people[i];
        let mut tx = app.transaction().unwrap();
        let status: String = tx
            .query_one("SELECT status FROM session_use($1)", &[token])
            .unwrap()
            .get(0);
        assert_eq!(status, "active");
        let during = visible(&mut tx);
        tx.commit().unwrap();
        let mut after = app.transaction().unwrap();
        let after_commit = visible(&mut after);
        after.rollback().unwrap();
        assert_eq!(during, std::slice::from_ref(person), "connection {i}");
        after_commit
    });
    assert!(
        seen.iter().all(Vec::is_empty),
        "a binding outlived its transaction: {seen:?}"
    );
}

/// A pooled connection serves conversation after conversation; some bind,
/// some do not, some commit, some roll back, some bind in a savepoint that
/// rolls back. No transaction ever sees a person it did not bind itself.
#[test]
fn a_pooled_connection_never_carries_a_binding_into_the_next_transaction() {
    let people = setup(8);
    let results = all_at_once(4, APP, |app, worker| {
        let mut leaks = Vec::new();
        for round in 0..200usize {
            let pick = (round * 7 + worker * 3) % people.len();
            let (person, token) = &people[pick];
            let mut tx = app.transaction().unwrap();
            let expected: Vec<String> = match round % 4 {
                // binds, reads
                0 | 1 => {
                    tx.query_one("SELECT status FROM session_use($1)", &[token])
                        .unwrap();
                    vec![person.clone()]
                }
                // binds in a savepoint that rolls back
                2 => {
                    let mut savepoint = tx.transaction().unwrap();
                    savepoint
                        .query_one("SELECT status FROM session_use($1)", &[token])
                        .unwrap();
                    savepoint.rollback().unwrap();
                    vec![]
                }
                // does not bind
                _ => vec![],
            };
            let seen = visible(&mut tx);
            if seen != expected {
                leaks.push(format!(
                    "round {round}: expected {expected:?}, saw {seen:?}"
                ));
            }
            if round % 3 == 0 {
                tx.rollback().unwrap();
            } else {
                tx.commit().unwrap();
            }
        }
        leaks
    });
    let leaks: Vec<_> = results.into_iter().flatten().collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
}

/// Autocommit: each statement is its own transaction, so a session_use
/// alone binds nothing for the next statement. (Behind a statement-mode
/// pooler there is nothing else: the README says why it cannot work.)
#[test]
fn a_binding_ends_with_its_statement_in_autocommit() {
    let people = setup(1);
    let mut app = connect(APP);
    let (person, token) = &people[0];
    let status: String = app
        .query_one("SELECT status FROM session_use($1)", &[token])
        .unwrap()
        .get(0);
    assert_eq!(status, "active");
    let seen: i64 = app
        .query_one("SELECT count(*) FROM guarded_rows", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
    // And no setting stands in for the binding.
    let forged: i64 = app
        .query_one(
            "SELECT count(*) FROM guarded_rows, (SELECT set_config('app.subject', $1, true)) forged",
            &[person],
        )
        .unwrap()
        .get(0);
    assert_eq!(forged, 0);
}

/// A cursor carries no binding: one declared WITH HOLD is computed at the
/// commit of its transaction, while still bound, so it holds that person's
/// rows and nobody else's; one declared in the next, unbound transaction
/// sees nothing.
#[test]
fn a_held_cursor_keeps_only_what_its_bound_transaction_could_see() {
    let people = setup(2);
    let mut app = connect(APP);
    let (person, token) = &people[0];
    let mut tx = app.transaction().unwrap();
    tx.query_one("SELECT status FROM session_use($1)", &[token])
        .unwrap();
    tx.batch_execute("DECLARE held CURSOR WITH HOLD FOR SELECT person FROM guarded_rows")
        .unwrap();
    tx.commit().unwrap();
    let rows: Vec<String> = app
        .query("FETCH ALL FROM held", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|p| p == person), "{rows:?}");
    app.batch_execute("CLOSE held").unwrap();
    let mut tx = app.transaction().unwrap();
    tx.batch_execute("DECLARE later CURSOR FOR SELECT person FROM guarded_rows")
        .unwrap();
    let later = tx.query("FETCH ALL FROM later", &[]).unwrap();
    assert!(later.is_empty(), "an unbound transaction's cursor saw rows");
    tx.rollback().unwrap();
}
