//! Attacks: a race of right and wrong codes on one challenge, and a million
//! guesses against one person across many conversations.

use pg_otp_integration::*;

#[test]
fn sixty_four_wrong_and_sixty_four_right_codes_at_once() {
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let mut db = superuser();
    for round in 0..3 {
        let conversation = conversation(&format!("race-{round}"));
        assert_eq!(issue(&mut app, &conversation), "code_sent");
        let code = claim_code(&mut sender, &conversation);
        let statuses: Vec<String> = all_at_once(128, APP, |app, i| {
            let guess = if i % 2 == 0 {
                code.clone()
            } else {
                other_code(&code, i as u32)
            };
            app.query_one(
                "SELECT status FROM otp_verify('it', $1, $2)",
                &[&conversation, &guess],
            )
            .unwrap()
            .get(0)
        });
        let (verified, locked) = (count(&statuses, "verified"), count(&statuses, "locked"));
        assert_eq!(verified + locked, 1, "exactly one ending: {statuses:?}");
        assert!(count(&statuses, "incorrect") <= 2, "{statuses:?}");
        let row = db
            .query_one(
                "SELECT c.attempts_used, (SELECT count(*) FROM otp.session s WHERE s.challenge_id = c.id)
                   FROM otp.challenge c WHERE c.conversation = $1",
                &[&conversation],
            )
            .unwrap();
        let (attempts, sessions): (i32, i64) = (row.get(0), row.get(1));
        assert!(attempts <= 3);
        assert_eq!(sessions, verified as i64);
    }
}

/// The attacker knows an employee number and tries everything: new
/// conversations for fresh codes, and a million guesses spread over them.
/// However the million is spread, at most lockout_threshold guesses are
/// ever checked against a real code, then the person is locked out and no
/// new code is sent. (The guesses avoid the real codes, so the outcome is
/// deterministic; what matters is how many were checked at all.)
#[test]
fn a_million_guesses_against_one_person_are_cut_off_by_the_lockout() {
    const GUESSES: i64 = 1_000_000;
    const CONVERSATIONS: i64 = 64;
    const CHUNK: i64 = 10_000;
    let mut db = superuser();
    db.batch_execute(
        "SELECT otp_configure(agent => 'it-brute', source => 'people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email',
                              max_codes => 100, resend_cooldown => '0', lockout_threshold => 20)",
    )
    .unwrap();
    let person = new_person(&mut db, "brute");
    let label = conversation("brute");
    let mut app = connect(APP);
    let mut sender = connect(SENDER);

    // The attacker opens conversations until refused.
    let mut real_codes = Vec::new();
    let mut refused = 0;
    for n in 0..CONVERSATIONS {
        let conversation = format!("{label}-{n}");
        let status: String = app
            .query_one(
                "SELECT status FROM otp_issue('it-brute', $1, $2)",
                &[&conversation, &person],
            )
            .unwrap()
            .get(0);
        match status.as_str() {
            "code_sent" => real_codes.push((n, claim_code(&mut sender, &conversation))),
            "rate_limited" => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(refused, 0, "100 codes allowed; 64 asked");
    // Guesses avoid every real code, so that the outcome is deterministic.
    let avoid: Vec<i32> = real_codes
        .iter()
        .map(|(_, code)| code.parse().unwrap())
        .collect();

    // A million guesses, 10,000 per statement, round-robin over the conversations.
    let mut tally = std::collections::BTreeMap::<String, i64>::new();
    for chunk in 0..(GUESSES / CHUNK) {
        let rows = app
            .query(
                "SELECT v.status, count(*)
                   FROM generate_series($1::bigint, $1 + $2 - 1) g,
                        LATERAL (SELECT (g % $3)::int AS n, ((g * 7919) % 1000000)::int AS candidate) c,
                        LATERAL otp_verify('it-brute', $4 || '-' || c.n,
                                           lpad((CASE WHEN c.candidate = ANY ($5) THEN (c.candidate + 1) % 1000000
                                                      ELSE c.candidate END)::text, 6, '0')) v
                  GROUP BY v.status",
                &[&(chunk * CHUNK), &CHUNK, &CONVERSATIONS, &label, &avoid],
            )
            .unwrap();
        for row in rows {
            *tally.entry(row.get(0)).or_default() += row.get::<_, i64>(1);
        }
    }
    assert_eq!(tally.values().sum::<i64>(), GUESSES);
    assert_eq!(tally.get("verified"), None, "{tally:?}");

    let checked: i64 = db
        .query_one(
            "SELECT sum(attempts_used)::bigint FROM otp.challenge WHERE agent = 'it-brute' AND subject = $1",
            &[&person],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        checked, 20,
        "only the lockout threshold of guesses was checked: {tally:?}"
    );
    let locked: bool = db
        .query_one(
            "SELECT locked_until > now() FROM otp.subject_guard WHERE agent = 'it-brute' AND subject = $1",
            &[&person],
        )
        .unwrap()
        .get(0);
    assert!(locked, "the lockout engaged");
    let status: String = app
        .query_one(
            "SELECT status FROM otp_issue('it-brute', $1, $2)",
            &[&format!("{label}-more"), &person],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "rate_limited", "no new code while locked out");
}

/// The same million guesses, each rolled back (a PL/pgSQL exception block
/// undoes it after reading the answer): the application keeps nothing of
/// what it did, yet the guesses count. At most lockout_threshold of them
/// are ever checked against a code; then the person is locked out, even
/// for the right codes, and no new code is sent.
#[test]
fn a_million_rolled_back_guesses_are_cut_off_by_the_lockout_too() {
    const GUESSES: i64 = 1_000_000;
    const CONVERSATIONS: i32 = 64;
    const CHUNK: i64 = 100_000;
    const THRESHOLD: i64 = 20;
    let mut db = superuser();
    db.batch_execute(&format!(
        "SELECT otp_configure(agent => 'it-brute-rb', source => 'people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email',
                              max_codes => 100, resend_cooldown => '0', lockout_threshold => {THRESHOLD},
                              code_ttl => '1 hour')"
    ))
    .unwrap();
    let person = new_person(&mut db, "brute-rb");
    let label = conversation("brute-rb");
    let mut app = connect(APP);
    let mut sender = connect(SENDER);
    let mut real_codes = Vec::new();
    for n in 0..CONVERSATIONS {
        let conversation = format!("{label}-{n}");
        let status: String = app
            .query_one(
                "SELECT status FROM otp_issue('it-brute-rb', $1, $2)",
                &[&conversation, &person],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "code_sent");
        real_codes.push(claim_code(&mut sender, &conversation));
    }
    let avoid: Vec<i32> = real_codes
        .iter()
        .map(|code| code.parse().unwrap())
        .collect();

    app.batch_execute(
        "CREATE FUNCTION pg_temp.rolled_back_guesses(label text, first bigint, n bigint,
                                                     conversations int, avoid int[])
             RETURNS TABLE(status text, answers bigint) LANGUAGE plpgsql AS $$
         DECLARE
             g bigint; candidate int; answer text;
             verified bigint := 0; incorrect bigint := 0; locked bigint := 0; other bigint := 0;
         BEGIN
             FOR g IN first .. first + n - 1 LOOP
                 candidate := ((g::bigint * 7919) % 1000000)::int;
                 IF candidate = ANY (avoid) THEN candidate := (candidate + 1) % 1000000; END IF;
                 BEGIN
                     SELECT v.status INTO answer
                       FROM otp_verify('it-brute-rb', label || '-' || (g % conversations),
                                       lpad(candidate::text, 6, '0')) v;
                     RAISE EXCEPTION 'roll the guess back';
                 EXCEPTION WHEN raise_exception THEN
                     CASE answer
                         WHEN 'verified' THEN verified := verified + 1;
                         WHEN 'incorrect' THEN incorrect := incorrect + 1;
                         WHEN 'locked' THEN locked := locked + 1;
                         ELSE other := other + 1;
                     END CASE;
                 END;
             END LOOP;
             RETURN QUERY VALUES ('verified', verified), ('incorrect', incorrect),
                                 ('locked', locked), ('other', other);
         END $$",
    )
    .unwrap();
    let mut tally = std::collections::BTreeMap::<String, i64>::new();
    for chunk in 0..(GUESSES / CHUNK) {
        for row in app
            .query(
                "SELECT status, answers FROM pg_temp.rolled_back_guesses($1, $2, $3, $4, $5)",
                &[&label, &(chunk * CHUNK), &CHUNK, &CONVERSATIONS, &avoid],
            )
            .unwrap()
        {
            *tally.entry(row.get(0)).or_default() += row.get::<_, i64>(1);
        }
    }
    assert_eq!(tally.values().sum::<i64>(), GUESSES);
    assert_eq!(tally["verified"], 0, "{tally:?}");
    assert_eq!(
        tally["incorrect"],
        THRESHOLD - 1,
        "only the lockout threshold of guesses was checked (the last answers locked): {tally:?}"
    );
    // Nothing of it is in the tables: the counts live where no rollback reaches.
    let durable: i64 = db
        .query_one(
            "SELECT coalesce(sum(attempts_used), 0)::bigint FROM otp.challenge
              WHERE agent = 'it-brute-rb' AND subject = $1",
            &[&person],
        )
        .unwrap()
        .get(0);
    assert_eq!(durable, 0, "every guess was rolled back");
    // The person is locked out: the right code does not verify, no new code is sent.
    let status: String = app
        .query_one(
            "SELECT status FROM otp_verify('it-brute-rb', $1, $2)",
            &[&format!("{label}-0"), &real_codes[0]],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "locked");
    let status: String = app
        .query_one(
            "SELECT status FROM otp_issue('it-brute-rb', $1, $2)",
            &[&format!("{label}-more"), &person],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "rate_limited", "no new code while locked out");
}
