//! `#[pg_test]`s: every status path of the SQL interface, run inside a real
//! PostgreSQL by `cargo pgrx test`. Each test runs in its own transaction,
//! which is rolled back afterwards.
//!
//! Time: deadlines are judged by clock_timestamp(). Instead of sleeping, tests
//! move a deadline into the past with an UPDATE (they run as superuser), which
//! is deterministic. One pg_regress case shows real expiry with a short TTL.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A small HR table and the `payroll` agent of the README's example.
    const FIXTURE: &str = r#"
        CREATE TABLE IF NOT EXISTS public.employees (
            employee_no text PRIMARY KEY,
            full_name   text NOT NULL,
            whatsapp    text,
            email       text,
            net_pay     numeric
        );
        INSERT INTO public.employees VALUES
            ('4721', 'Ana Ruiz',   '+34 600 123 478', 'ana@example.com', 2150.00),
            ('5000', 'Bo Lind',    NULL,              'bo@example.com',  1900.00),
            ('6000', 'Cy Okafor',  '',                NULL,              1800.00),
            ('7000', 'Di Ruiz',    '+34600123478',    NULL,              1700.00) -- Ana's phone
        ON CONFLICT DO NOTHING;
        -- Limits out of the way: these tests issue many codes for one person.
        SELECT otp_configure(agent => 'payroll', source => 'public.employees', id_column => 'employee_no',
                             phone_column => 'whatsapp', email_column => 'email',
                             max_codes => 1000000, resend_cooldown => '0');
        CREATE OR REPLACE FUNCTION pg_temp.sqlstate_of(query text) RETURNS text LANGUAGE plpgsql AS $f$
        BEGIN
            EXECUTE query;
            RETURN 'ok';
        EXCEPTION WHEN OTHERS THEN
            RETURN SQLSTATE;
        END
        $f$;
    "#;

    fn fixture() {
        Spi::run(FIXTURE).unwrap();
    }

    /// Only the pg_temp.sqlstate_of helper, for tests that need no agent.
    fn fixture_sqlstate_helper() {
        let helper = &FIXTURE[FIXTURE.find("CREATE OR REPLACE FUNCTION").unwrap()..];
        Spi::run(helper).unwrap();
    }

    fn run(sql: &str) {
        Spi::run(sql).unwrap();
    }

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
        Spi::get_one(sql).unwrap()
    }

    /// The plan EXPLAIN prints for `sql` (its options included), one line per row.
    fn explain(sql: &str) -> String {
        Spi::connect(|client| {
            client
                .select(sql, None, &[])
                .unwrap()
                .map(|row| row.get::<String>(1).unwrap().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// The SQLSTATE a statement fails with, or "ok".
    fn sqlstate(sql: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[sql.into()])
            .unwrap()
            .unwrap()
    }

    #[derive(Debug)]
    struct Issue {
        status: String,
        channel: Option<String>,
        hint: Option<String>,
        expires_in_future: Option<bool>,
        token: Option<String>,
    }

    fn issue_for(agent: &str, conversation: &str, identifier: &str) -> Issue {
        Spi::connect(|c| {
            let row = c
                .select(
                    "SELECT status, channel, destination_hint, expires_at > clock_timestamp(), session_token
                       FROM otp_issue($1, $2, $3)",
                    None,
                    &[agent.into(), conversation.into(), identifier.into()],
                )
                .unwrap()
                .first();
            Issue {
                status: row.get(1).unwrap().unwrap(),
                channel: row.get(2).unwrap(),
                hint: row.get(3).unwrap(),
                expires_in_future: row.get(4).unwrap(),
                token: row.get(5).unwrap(),
            }
        })
    }

    fn issue(conversation: &str, identifier: &str) -> Issue {
        issue_for("payroll", conversation, identifier)
    }

    #[derive(Debug)]
    struct Verify {
        status: String,
        remaining: Option<i32>,
        token: Option<String>,
        subject: Option<String>,
    }

    fn verify(conversation: &str, code: &str) -> Verify {
        Spi::connect(|c| {
            let row = c
                .select(
                    "SELECT status, attempts_remaining, session_token, subject FROM otp_verify('payroll', $1, $2)",
                    None,
                    &[conversation.into(), code.into()],
                )
                .unwrap()
                .first();
            Verify {
                status: row.get(1).unwrap().unwrap(),
                remaining: row.get(2).unwrap(),
                token: row.get(3).unwrap(),
                subject: row.get(4).unwrap(),
            }
        })
    }

    /// Claims every due message, the way a dispatcher does, into the
    /// temporary table `claimed`, kept for the other conversations of the test.
    fn claim_all() {
        run("CREATE TEMP TABLE IF NOT EXISTS claimed (conversation text, message_id bigint, code text);
             INSERT INTO claimed SELECT conversation, message_id, code FROM otp_outbox_claim(batch_size => 1000)");
    }

    /// The code of a conversation's newest message, read the way a dispatcher
    /// does (see `claim_all`).
    fn delivered_code(conversation: &str) -> String {
        claim_all();
        Spi::get_one_with_args::<String>(
            "SELECT code FROM claimed WHERE conversation = $1 ORDER BY message_id DESC LIMIT 1",
            &[conversation.into()],
        )
        .unwrap()
        .expect("a queued message for the conversation")
    }

    fn wrong_code(right: &str) -> String {
        let n: u32 = right.parse().unwrap();
        format!("{:06}", (n + 1) % 1_000_000)
    }

    fn touch_status(token: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT status FROM session_touch($1)", &[token.into()])
            .unwrap()
            .unwrap()
    }

    fn challenge_field(conversation: &str, column: &str) -> Option<String> {
        Spi::get_one_with_args::<String>(
            &format!("SELECT {column}::text FROM otp.challenge WHERE conversation = $1 ORDER BY id DESC LIMIT 1"),
            &[conversation.into()],
        )
        .unwrap()
    }

    // ---- otp_issue -------------------------------------------------------

    #[pg_test]
    fn issue_sends_code_to_whatsapp_with_masked_hint() {
        fixture();
        let issued = issue("t-issue-1", "4721");
        assert_eq!(issued.status, "code_sent");
        assert_eq!(issued.channel.as_deref(), Some("whatsapp"));
        assert_eq!(issued.hint.as_deref(), Some("***78"));
        assert_eq!(issued.expires_in_future, Some(true));
        assert_eq!(issued.token, None);
        // one pending challenge, one queued message, sealed
        assert_eq!(
            challenge_field("t-issue-1", "state").as_deref(),
            Some("pending")
        );
        let queued: Option<i64> = one(
            "SELECT count(*) FROM otp.outbox WHERE conversation = 't-issue-1' AND state = 'queued'
               AND destination = '+34 600 123 478' AND code_sealed IS NOT NULL",
        );
        assert_eq!(queued, Some(1));
    }

    #[pg_test]
    fn issue_falls_back_to_email_and_honours_preferred_channel() {
        fixture();
        let issued = issue("t-issue-2", "5000");
        assert_eq!(
            (issued.status.as_str(), issued.channel.as_deref()),
            ("code_sent", Some("email"))
        );
        assert_eq!(issued.hint.as_deref(), Some("b***@example.com"));

        configure("payroll-mail", ", preferred_channel => 'email'");
        let issued = issue_for("payroll-mail", "t-issue-3", "4721");
        assert_eq!(
            (issued.channel.as_deref(), issued.hint.as_deref()),
            (Some("email"), Some("a***@example.com"))
        );
    }

    #[pg_test]
    fn issue_reports_not_found_and_no_channel() {
        fixture();
        assert_eq!(issue("t-issue-4", "9999").status, "not_found");
        assert_eq!(issue("t-issue-4", "").status, "not_found");
        assert_eq!(issue("t-issue-4", "   ").status, "not_found");
        assert_eq!(issue("t-issue-4", &"9".repeat(10_000)).status, "not_found");
        assert_eq!(issue("t-issue-4", "4721' OR '1'='1").status, "not_found");
        assert_eq!(issue("t-issue-4", "6000").status, "no_channel");
        let rows: Option<i64> =
            one("SELECT count(*) FROM otp.challenge WHERE conversation = 't-issue-4'");
        assert_eq!(rows, Some(0));
    }

    #[pg_test]
    fn issue_trims_the_identifier() {
        fixture();
        assert_eq!(issue("t-issue-5", "  4721 ").status, "code_sent");
    }

    #[pg_test]
    fn new_issue_supersedes_pending_challenge_and_cancels_its_message() {
        fixture();
        issue("t-super", "4721");
        let old_code = delivered_code("t-super");
        issue("t-super", "4721");
        let states: Option<String> =
            one("SELECT string_agg(state, ',' ORDER BY id) FROM otp.challenge WHERE conversation = 't-super'");
        assert_eq!(states.as_deref(), Some("superseded,pending"));
        let old_message: Option<String> = one(
            "SELECT state || ':' || (code_sealed IS NULL) FROM otp.outbox WHERE conversation = 't-super' ORDER BY id LIMIT 1",
        );
        assert_eq!(old_message.as_deref(), Some("cancelled:true"));
        let new_code = delivered_code("t-super");
        if old_code != new_code {
            assert_eq!(verify("t-super", &old_code).status, "incorrect");
        }
        assert_eq!(verify("t-super", &new_code).status, "verified");
    }

    #[pg_test]
    fn issue_without_otp_authenticates_at_once() {
        fixture();
        configure("faq", ", require_otp => false");
        let issued = issue_for("faq", "t-noauth", "4721");
        assert_eq!(issued.status, "authenticated");
        assert_eq!((issued.channel, issued.hint), (None, None));
        let token = issued.token.expect("a session token");
        assert_eq!(touch_status(&token), "active");
        let messages: Option<i64> =
            one("SELECT count(*) FROM otp.outbox WHERE conversation = 't-noauth'");
        assert_eq!(messages, Some(0));
    }

    // ---- otp_verify ------------------------------------------------------

    #[pg_test]
    fn correct_code_verifies_once_and_starts_a_session() {
        fixture();
        issue("t-ok", "4721");
        let code = delivered_code("t-ok");
        let verified = verify("t-ok", &code);
        assert_eq!(verified.status, "verified");
        assert_eq!(verified.subject.as_deref(), Some("4721"));
        let token = verified.token.expect("session token");
        assert_eq!(token.len(), 43);
        assert_eq!(touch_status(&token), "active");
        // single use
        let again = verify("t-ok", &code);
        assert_eq!((again.status.as_str(), again.token), ("no_challenge", None));
        assert_eq!(
            challenge_field("t-ok", "state").as_deref(),
            Some("verified")
        );
        // the session is bound to the verified challenge
        let linked: Option<i64> =
            one("SELECT count(*) FROM otp.session s JOIN otp.challenge c ON c.id = s.challenge_id WHERE c.conversation = 't-ok'");
        assert_eq!(linked, Some(1));
    }

    #[pg_test]
    fn wrong_codes_count_down_then_lock() {
        fixture();
        issue("t-wrong", "4721");
        let code = delivered_code("t-wrong");
        let wrong = wrong_code(&code);
        let first = verify("t-wrong", &wrong);
        assert_eq!(
            (first.status.as_str(), first.remaining),
            ("incorrect", Some(2))
        );
        let second = verify("t-wrong", &wrong);
        assert_eq!(
            (second.status.as_str(), second.remaining),
            ("incorrect", Some(1))
        );
        let third = verify("t-wrong", &wrong);
        assert_eq!(
            (third.status.as_str(), third.remaining, third.token),
            ("locked", Some(0), None)
        );
        // the right code no longer helps: the user must start again
        assert_eq!(verify("t-wrong", &code).status, "no_challenge");
        assert_eq!(
            challenge_field("t-wrong", "state").as_deref(),
            Some("locked")
        );
        assert_eq!(
            challenge_field("t-wrong", "attempts_used").as_deref(),
            Some("3")
        );
        let sessions: Option<i64> =
            one("SELECT count(*) FROM otp.session WHERE conversation = 't-wrong'");
        assert_eq!(sessions, Some(0));
    }

    #[pg_test]
    fn malformed_codes_use_no_attempt() {
        fixture();
        issue("t-format", "4721");
        let code = delivered_code("t-format");
        for bad in ["", "12345", "1234567", "12a456", "١٢٣٤٥٦", "123.456"] {
            let result = verify("t-format", bad);
            assert_eq!(
                (result.status.as_str(), result.remaining),
                ("invalid_format", None),
                "{bad:?}"
            );
        }
        assert_eq!(
            challenge_field("t-format", "attempts_used").as_deref(),
            Some("0")
        );
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert_eq!(verify("t-format", &spaced).status, "verified");
    }

    #[pg_test]
    fn hyphenated_code_verifies() {
        fixture();
        issue("t-hyphen", "4721");
        let code = delivered_code("t-hyphen");
        assert_eq!(
            verify("t-hyphen", &format!("{}-{}", &code[..3], &code[3..])).status,
            "verified"
        );
    }

    #[pg_test]
    fn expired_code_is_rejected_without_using_an_attempt() {
        fixture();
        issue("t-expired", "4721");
        let code = delivered_code("t-expired");
        run("UPDATE otp.challenge SET expires_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-expired'");
        let result = verify("t-expired", &code);
        assert_eq!((result.status.as_str(), result.token), ("expired", None));
        assert_eq!(
            challenge_field("t-expired", "attempts_used").as_deref(),
            Some("0")
        );
        assert_eq!(
            challenge_field("t-expired", "state").as_deref(),
            Some("expired")
        );
        assert_eq!(verify("t-expired", &code).status, "no_challenge");
    }

    #[pg_test]
    fn code_is_bound_to_its_conversation() {
        fixture();
        issue("t-bound-a", "4721");
        issue("t-bound-b", "4721");
        let code_a = delivered_code("t-bound-a");
        let code_b = delivered_code("t-bound-b");
        assert_eq!(verify("t-bound-c", &code_a).status, "no_challenge");
        if code_a != code_b {
            assert_eq!(verify("t-bound-b", &code_a).status, "incorrect");
        }
        assert_eq!(verify("t-bound-a", &code_a).status, "verified");
    }

    #[pg_test]
    fn verify_without_challenge() {
        fixture();
        assert_eq!(verify("t-none", "123456").status, "no_challenge");
    }

    #[pg_test]
    fn no_plaintext_code_in_challenge_or_outbox_rows() {
        fixture();
        issue("t-plain", "4721");
        let code = Spi::get_one::<String>(
            "SELECT code FROM otp_outbox_claim(batch_size => 1000, lease => '1 hour') WHERE conversation = 't-plain'",
        )
        .unwrap()
        .unwrap();
        let leaks: Option<i64> = Spi::get_one_with_args(
            "SELECT (SELECT count(*) FROM otp.challenge c WHERE c::text LIKE '%' || $1 || '%'
                        OR position(convert_to($1, 'UTF8') IN c.code_hash) > 0)
                  + (SELECT count(*) FROM otp.outbox o WHERE o::text LIKE '%' || $1 || '%'
                        OR position(convert_to($1, 'UTF8') IN o.code_sealed) > 0)",
            &[code.as_str().into()],
        )
        .unwrap();
        assert_eq!(leaks, Some(0));
    }

    /// Configures `agent` over the fixture table with the given extra settings
    /// (send limits out of the way unless `extra` sets them).
    fn configure(agent: &str, extra: &str) {
        let limits = if extra.contains("max_codes") || extra.contains("resend_cooldown") {
            ""
        } else {
            ", max_codes => 1000000, resend_cooldown => '0'"
        };
        run(&format!(
            "SELECT otp_configure(agent => '{agent}', source => 'public.employees', id_column => 'employee_no',
                                  phone_column => 'whatsapp', email_column => 'email'{limits}{extra})"
        ));
    }

    #[pg_test]
    fn short_code_ttl_expires_for_real() {
        fixture();
        configure("short-ttl", ", code_ttl => '200 milliseconds'");
        issue_for("short-ttl", "t-real-ttl", "4721");
        let code = delivered_code("t-real-ttl");
        // Sleeping past a fixed deadline: the outcome does not depend on timing.
        run("SELECT pg_sleep(0.3)");
        let late = Spi::get_one_with_args::<String>(
            "SELECT status FROM otp_verify('short-ttl', 't-real-ttl', $1)",
            &[code.as_str().into()],
        )
        .unwrap();
        assert_eq!(late.as_deref(), Some("expired"));
    }

    #[pg_test]
    fn short_idle_and_absolute_timeouts_end_sessions_for_real() {
        fixture();
        configure(
            "short-idle",
            ", require_otp => false, idle_timeout => '200 milliseconds'",
        );
        configure("short-abs", ", require_otp => false, idle_timeout => '200 milliseconds', absolute_timeout => '200 milliseconds'");
        let idle = issue_for("short-idle", "t-real-idle", "4721")
            .token
            .unwrap();
        let absolute = issue_for("short-abs", "t-real-abs", "4721").token.unwrap();
        run("SELECT pg_sleep(0.3)");
        assert_eq!(touch_status(&idle), "idle_timeout");
        assert_eq!(touch_status(&absolute), "expired");
    }

    // ---- abuse resistance: send limits and lockout ------------------------

    /// Status of an issue, and how many whole seconds until its expires_at.
    fn issue_with_wait(agent: &str, conversation: &str, identifier: &str) -> (String, Option<i64>) {
        Spi::connect(|c| {
            let row = c
                .select(
                    "SELECT status, round(extract(epoch FROM expires_at - clock_timestamp()))::bigint
                       FROM otp_issue($1, $2, $3)",
                    None,
                    &[agent.into(), conversation.into(), identifier.into()],
                )
                .unwrap()
                .first();
            (row.get(1).unwrap().unwrap(), row.get(2).unwrap())
        })
    }

    fn count(sql: &str) -> i64 {
        one::<i64>(sql).unwrap()
    }

    #[pg_test]
    fn at_most_max_codes_per_person_per_window() {
        fixture();
        configure(
            "two-codes",
            ", max_codes => 2, resend_cooldown => '0', code_window => '15 minutes'",
        );
        assert_eq!(
            issue_with_wait("two-codes", "t-win-a", "4721").0,
            "code_sent"
        );
        assert_eq!(
            issue_with_wait("two-codes", "t-win-b", "4721").0,
            "code_sent"
        );
        let (status, wait) = issue_with_wait("two-codes", "t-win-c", "4721");
        assert_eq!(status, "rate_limited");
        let wait = wait.expect("rate_limited says when the next code is allowed");
        assert!(
            (890..=900).contains(&wait),
            "next code in {wait} s, expected about 15 minutes"
        );
        // refused: nothing written, nothing sent
        assert_eq!(
            count("SELECT count(*) FROM otp.challenge WHERE conversation = 't-win-c'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation = 't-win-c'"),
            0
        );
        // once the oldest code leaves the window, there is room again
        run("UPDATE otp.challenge SET created_at = created_at - interval '16 minutes' WHERE conversation = 't-win-a'");
        assert_eq!(
            issue_with_wait("two-codes", "t-win-c", "4721").0,
            "code_sent"
        );
    }

    #[pg_test]
    fn resend_cooldown_refuses_without_cancelling_the_earlier_code() {
        fixture();
        configure("cooldown", ", resend_cooldown => '30 seconds'");
        assert_eq!(issue_with_wait("cooldown", "t-cool", "4721").0, "code_sent");
        let code = delivered_code("t-cool");
        let (status, wait) = issue_with_wait("cooldown", "t-cool", "4721");
        assert_eq!(status, "rate_limited");
        assert!((29..=30).contains(&wait.unwrap()), "{wait:?}");
        // the user can still use the code they have
        let verified = Spi::get_one_with_args::<String>(
            "SELECT status FROM otp_verify('cooldown', 't-cool', $1)",
            &[code.as_str().into()],
        )
        .unwrap();
        assert_eq!(verified.as_deref(), Some("verified"));
    }

    #[pg_test]
    fn limits_also_count_per_destination_across_people() {
        fixture();
        configure("per-phone", ", max_codes => 2, resend_cooldown => '0'");
        assert_eq!(
            issue_with_wait("per-phone", "t-dest-1", "4721").0,
            "code_sent"
        );
        assert_eq!(
            issue_with_wait("per-phone", "t-dest-2", "4721").0,
            "code_sent"
        );
        // 7000 is someone else with the same phone, written differently
        assert_eq!(
            issue_with_wait("per-phone", "t-dest-3", "7000").0,
            "rate_limited"
        );
        // a different destination is not affected
        assert_eq!(
            issue_with_wait("per-phone", "t-dest-4", "5000").0,
            "code_sent"
        );
    }

    fn verify_as(agent: &str, conversation: &str, code: &str) -> (String, Option<i32>) {
        Spi::connect(|c| {
            let row = c
                .select(
                    "SELECT status, attempts_remaining FROM otp_verify($1, $2, $3)",
                    None,
                    &[agent.into(), conversation.into(), code.into()],
                )
                .unwrap()
                .first();
            (row.get(1).unwrap().unwrap(), row.get(2).unwrap())
        })
    }

    #[pg_test]
    fn consecutive_failures_across_codes_lock_the_person_out() {
        fixture();
        configure(
            "lockout",
            ", lockout_threshold => 4, lockout_duration => '1 hour'",
        );
        // first code: three wrong guesses use it up (3 failures in a row)
        issue_for("lockout", "t-lock-1", "4721");
        let code = delivered_code("t-lock-1");
        let wrong = wrong_code(&code);
        assert_eq!(verify_as("lockout", "t-lock-1", &wrong).0, "incorrect");
        assert_eq!(verify_as("lockout", "t-lock-1", &wrong).0, "incorrect");
        assert_eq!(
            verify_as("lockout", "t-lock-1", &wrong),
            ("locked".into(), Some(0))
        );
        // restarting the flow does not refill the budget: the 4th failure locks the person
        issue_for("lockout", "t-lock-2", "4721");
        let code = delivered_code("t-lock-2");
        assert_eq!(
            verify_as("lockout", "t-lock-2", &wrong_code(&code)),
            ("locked".into(), Some(0))
        );
        let (status, wait) = issue_with_wait("lockout", "t-lock-3", "4721");
        assert_eq!(status, "rate_limited");
        assert!((3590..=3600).contains(&wait.unwrap()), "{wait:?}");
        // others are not affected
        assert_eq!(
            issue_with_wait("lockout", "t-lock-4", "5000").0,
            "code_sent"
        );
        // an operator ends the lockout early (a plain UPDATE of the table
        // would not: the attempt ledger remembers it too); codes are sent
        // again and the count starts over
        assert_eq!(
            one::<bool>("SELECT otp_unlock('lockout', '4721')"),
            Some(true)
        );
        assert_eq!(
            one::<bool>("SELECT otp_unlock('lockout', '4721')"),
            Some(false)
        );
        assert_eq!(
            issue_with_wait("lockout", "t-lock-5", "4721").0,
            "code_sent"
        );
        assert_eq!(count("SELECT consecutive_failures::bigint FROM otp.subject_guard WHERE agent = 'lockout' AND subject = '4721'"), 0);
    }

    #[pg_test]
    fn a_short_lockout_ends_for_real() {
        fixture();
        configure(
            "short-lockout",
            ", lockout_threshold => 1, lockout_duration => '200 milliseconds'",
        );
        issue_for("short-lockout", "t-sl-1", "4721");
        let code = delivered_code("t-sl-1");
        assert_eq!(
            verify_as("short-lockout", "t-sl-1", &wrong_code(&code)).0,
            "locked"
        );
        assert_eq!(
            issue_with_wait("short-lockout", "t-sl-2", "4721").0,
            "rate_limited"
        );
        // Sleeping past a fixed deadline: the outcome does not depend on timing.
        run("SELECT pg_sleep(0.3)");
        assert_eq!(
            issue_with_wait("short-lockout", "t-sl-3", "4721").0,
            "code_sent"
        );
        let code = delivered_code("t-sl-3");
        assert_eq!(verify_as("short-lockout", "t-sl-3", &code).0, "verified");
    }

    #[pg_test]
    fn a_locked_out_person_cannot_verify_a_code_issued_before() {
        fixture();
        configure("lockout-pending", ", lockout_threshold => 2");
        issue_for("lockout-pending", "t-lp-early", "4721"); // pending in another conversation
        issue_for("lockout-pending", "t-lp-attack", "4721");
        let early = delivered_code("t-lp-early");
        let attacked = delivered_code("t-lp-attack");
        assert_eq!(
            verify_as("lockout-pending", "t-lp-attack", &wrong_code(&attacked)).0,
            "incorrect"
        );
        assert_eq!(
            verify_as("lockout-pending", "t-lp-attack", &wrong_code(&attacked)).0,
            "locked"
        );
        // even the right code of the other conversation is refused now
        assert_eq!(
            verify_as("lockout-pending", "t-lp-early", &early),
            ("locked".into(), Some(0))
        );
        assert_eq!(
            challenge_field("t-lp-early", "state").as_deref(),
            Some("locked")
        );
    }

    #[pg_test]
    fn a_success_resets_the_failure_count() {
        fixture();
        configure("reset", ", lockout_threshold => 3");
        issue_for("reset", "t-reset", "4721");
        let code = delivered_code("t-reset");
        assert_eq!(
            verify_as("reset", "t-reset", &wrong_code(&code)).0,
            "incorrect"
        );
        assert_eq!(
            verify_as("reset", "t-reset", &wrong_code(&code)).0,
            "incorrect"
        );
        assert_eq!(verify_as("reset", "t-reset", &code).0, "verified");
        assert_eq!(
            count(
                "SELECT consecutive_failures::bigint FROM otp.subject_guard WHERE agent = 'reset'"
            ),
            0
        );
    }

    #[pg_test]
    fn limit_settings_are_validated() {
        fixture();
        let attempt = |extra: &str| {
            sqlstate(&format!(
                "SELECT otp_configure('lim', 'public.employees', 'employee_no', 'whatsapp'{extra})"
            ))
        };
        assert_eq!(attempt(", max_codes => 0"), "22023");
        assert_eq!(attempt(", code_window => '0'"), "22023");
        assert_eq!(attempt(", resend_cooldown => '-1 second'"), "22023");
        assert_eq!(attempt(", resend_cooldown => '0'"), "ok");
        assert_eq!(
            attempt(", lockout_threshold => 101"),
            "22023",
            "NIST caps it at 100"
        );
        assert_eq!(attempt(", lockout_threshold => 0"), "22023");
        assert_eq!(attempt(", lockout_duration => '0'"), "22023");
        assert_eq!(attempt(", max_codes => NULL"), "22004");
        let stored: Option<String> = one(
            "SELECT concat_ws('/', max_codes, code_window, resend_cooldown, lockout_threshold, lockout_duration)
               FROM otp.agent WHERE name = 'lim'",
        );
        assert_eq!(stored.as_deref(), Some("5/00:15:00/00:00:00/20/01:00:00"));
    }

    // ---- anti-enumeration --------------------------------------------------

    /// Everything an outsider sees of an otp_issue answer, expiry rounded.
    fn answer(agent: &str, conversation: &str, identifier: &str) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT concat_ws('/', status, channel, destination_hint,
                              round(extract(epoch FROM expires_at - clock_timestamp()) / 60), session_token)
               FROM otp_issue($1, $2, $3)",
            &[agent.into(), conversation.into(), identifier.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn hidden_unknown_identifiers_look_like_a_code_sent_and_nothing_is_sent() {
        fixture();
        configure(
            "hidden",
            ", reveal_unknown => false, resend_cooldown => '0'",
        );
        let known = answer("hidden", "t-hide-known", "4721");
        let unknown = answer("hidden", "t-hide-unknown", "9999");
        assert!(known.starts_with("code_sent/whatsapp/***78/5"), "{known}");
        // the shape of a real answer: a WhatsApp hint or an email one of the
        // source's domain (see decoys_look_like_the_people_of_the_source)
        let real_shape = |answer: &str| {
            let parts: Vec<&str> = answer.split('/').collect();
            parts.len() == 4
                && parts[0] == "code_sent"
                && match parts[1] {
                    "whatsapp" => parts[2].len() == 5 && parts[2].starts_with("***"),
                    "email" => parts[2].len() == 16 && parts[2].ends_with("***@example.com"),
                    _ => false,
                }
                && parts[3] == "5"
        };
        assert!(real_shape(&known), "{known}");
        assert!(real_shape(&unknown), "{unknown}");
        // the same identifier always gets the same hint
        assert_eq!(answer("hidden", "t-hide-again", "9999"), unknown);
        // its message is queued like a real one, but has no destination and
        // no dispatcher ever gets it (see a_decoy_delivery_looks_like_a_real_one)
        assert_eq!(count("SELECT count(*) FROM otp.outbox WHERE conversation IN ('t-hide-unknown', 't-hide-again')"), 2);
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation IN ('t-hide-unknown', 't-hide-again')
                      AND destination <> ''"),
            0
        );
        claim_all();
        assert_eq!(count("SELECT count(*) FROM claimed WHERE conversation IN ('t-hide-unknown', 't-hide-again')"), 0);
        let status: Option<String> = one(
            "SELECT concat_ws('/', status, delivery, attempts_remaining) FROM otp_status('hidden', 't-hide-unknown')",
        );
        assert_eq!(status.as_deref(), Some("pending/queued/3"));
        // no code verifies; guesses count down and lock as usual
        assert_eq!(
            verify_as("hidden", "t-hide-unknown", "000000"),
            ("incorrect".into(), Some(2))
        );
        assert_eq!(
            verify_as("hidden", "t-hide-unknown", "111111"),
            ("incorrect".into(), Some(1))
        );
        assert_eq!(
            verify_as("hidden", "t-hide-unknown", "222222"),
            ("locked".into(), Some(0))
        );
        // someone without a destination is hidden the same way
        let no_channel = answer("hidden", "t-hide-nochannel", "6000");
        assert!(real_shape(&no_channel), "{no_channel}");
    }

    #[pg_test]
    fn hidden_unknown_identifiers_are_rate_limited_like_real_ones() {
        fixture();
        configure(
            "hidden-limited",
            ", reveal_unknown => false, max_codes => 2, resend_cooldown => '0'",
        );
        for agent_answer in [
            answer("hidden-limited", "t-hl-1", "9999"),
            answer("hidden-limited", "t-hl-2", "9999"),
        ] {
            assert!(agent_answer.starts_with("code_sent/"), "{agent_answer}");
        }
        assert!(answer("hidden-limited", "t-hl-3", "9999").starts_with("rate_limited"));
    }

    #[pg_test]
    fn hidden_email_hints_use_a_domain_of_the_source() {
        fixture();
        run("SELECT otp_configure(agent => 'hidden-mail', source => 'public.employees', id_column => 'employee_no',
                                  email_column => 'email', reveal_unknown => false)");
        let unknown = answer("hidden-mail", "t-hm", "no-such-person");
        let (status_channel, hint) = unknown.split_at(unknown.find("/email/").unwrap() + 7);
        assert_eq!(status_channel, "code_sent/email/");
        assert!(
            hint.starts_with(|c: char| c.is_ascii_lowercase())
                && hint[1..].starts_with("***@example.com/5"),
            "{hint}"
        );
    }

    #[pg_test]
    fn revealing_agents_still_say_not_found() {
        fixture();
        assert_eq!(answer("payroll", "t-reveal", "9999"), "not_found");
        assert_eq!(answer("payroll", "t-reveal", "6000"), "no_channel");
    }

    // ---- key rotation --------------------------------------------------------
    // The test cluster runs with otp.previous_secret_key set (see lib.rs), as
    // a server does during a rotation. A reload cannot happen inside a test's
    // transaction, so rows are written here as the previous secret wrote them.

    /// Re-keys a conversation's pending challenge and its message as if `secret`
    /// had made them, with `code` as the code.
    fn rekey(conversation: &str, secret: &str, code: &str) {
        let keys = crate::crypto::Keys::derive(&hex::decode(secret).unwrap());
        let challenge_id: i64 = Spi::get_one_with_args(
            "SELECT id FROM otp.challenge WHERE conversation = $1 AND state = 'pending'",
            &[conversation.into()],
        )
        .unwrap()
        .unwrap();
        let hash = keys.code_hash(challenge_id, "payroll", conversation, code);
        let sealed = keys.seal_code(challenge_id, code).unwrap();
        // the fixture's people get codes by WhatsApp
        let phone: String = Spi::get_one_with_args(
            "SELECT e.whatsapp FROM otp.challenge c JOIN public.employees e ON e.employee_no = c.subject
              WHERE c.id = $1",
            &[challenge_id.into()],
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "UPDATE otp.challenge SET code_hash = $2, key_id = $3, destination_key = $4 WHERE id = $1;",
            &[
                challenge_id.into(),
                hash.to_vec().into(),
                keys.id.to_vec().into(),
                keys.destination_key("whatsapp", &phone).to_vec().into(),
            ],
        )
        .unwrap();
        Spi::run_with_args(
            "UPDATE otp.outbox SET code_nonce = $2, code_sealed = $3, key_id = $4 WHERE challenge_id = $1",
            &[
                challenge_id.into(),
                sealed.nonce.into(),
                sealed.ciphertext.into(),
                keys.id.to_vec().into(),
            ],
        )
        .unwrap();
    }

    #[pg_test]
    fn codes_and_messages_of_the_previous_secret_keep_working() {
        fixture();
        issue("t-rot", "4721");
        rekey("t-rot", crate::TEST_PREVIOUS_SECRET, "246810");
        // the dispatcher opens the message with the previous secret
        assert_eq!(delivered_code("t-rot"), "246810");
        // a wrong guess counts as usual; the right code verifies
        assert_eq!(verify("t-rot", "135790").status, "incorrect");
        assert_eq!(verify("t-rot", "246810").status, "verified");
        // new codes are made with the current secret
        issue("t-rot-new", "4721");
        let current: Vec<u8> =
            one("SELECT key_id FROM otp.challenge WHERE conversation = 't-rot-new'").unwrap();
        let previous: Vec<u8> =
            one("SELECT key_id FROM otp.challenge WHERE conversation = 't-rot'").unwrap();
        assert_ne!(current, previous);
        let code = delivered_code("t-rot-new");
        assert_eq!(verify("t-rot-new", &code).status, "verified");
    }

    #[pg_test]
    fn codes_of_a_secret_no_longer_configured_expire_and_are_never_sent() {
        fixture();
        issue("t-rot-gone", "4721");
        // a secret rotated away twice: neither current nor previous
        rekey("t-rot-gone", &"ab".repeat(32), "246810");
        claim_all();
        assert_eq!(
            count("SELECT count(*) FROM claimed WHERE conversation = 't-rot-gone'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation = 't-rot-gone' AND state = 'failed' AND code_sealed IS NULL"),
            1
        );
        let answer = verify("t-rot-gone", "246810");
        assert_eq!(
            (answer.status.as_str(), answer.remaining),
            ("expired", None)
        );
    }

    // ---- purge -------------------------------------------------------------

    /// The audit trail is 53 weekly partitions, event_00 to event_52, each
    /// holding one slot; every event pg_otp writes goes to its week's (or,
    /// written as a week turns, to the next one's).
    #[pg_test]
    fn every_event_is_written_to_its_weeks_partition() {
        fixture();
        assert_eq!(
            count(
                "SELECT count(DISTINCT p.relname) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
                  WHERE i.inhparent = 'otp.event'::regclass AND p.relkind = 'r'
                    AND p.relname ~ '^event_[0-9]{2}$' AND substr(p.relname, 7)::int <= 52
                    AND pg_get_expr(p.relpartbound, p.oid) = format('FOR VALUES IN (''%s'')', substr(p.relname, 7)::int)"
            ),
            53
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'otp.event'::regclass"),
            53
        );
        // A week is 604,800 seconds from the Unix epoch, so weeks begin on
        // Thursdays at 00:00 UTC; slots go round after 53 of them.
        assert_eq!(
            one::<i16>("SELECT otp.event_slot('1970-01-01 00:00:00+00')"),
            Some(0)
        );
        assert_eq!(
            one::<i16>("SELECT otp.event_slot('1970-01-07 23:59:59.999999+00')"),
            Some(0)
        );
        assert_eq!(
            one::<i16>("SELECT otp.event_slot('1970-01-08 00:00:00+00')"),
            Some(1)
        );
        assert_eq!(
            one::<i16>("SELECT otp.event_slot('1970-12-31 00:00:00+00')"),
            Some(52)
        );
        assert_eq!(
            one::<i16>("SELECT otp.event_slot('1971-01-07 00:00:00+00')"),
            Some(0)
        );
        // 2026-11-26 is day 20,783 since the epoch: week 2,969
        assert_eq!(
            one::<i16>("SELECT otp.event_slot('2026-11-26 12:00:00+00')"),
            Some(2969 % 53)
        );
        // before 1970 (a row written by hand, say), and infinite times
        assert_eq!(
            one::<i16>("SELECT otp.event_slot('1969-12-31 23:00:00+00')"),
            Some(52)
        );
        assert_eq!(one::<i16>("SELECT otp.event_slot('infinity')"), Some(0));
        assert_eq!(one::<i16>("SELECT otp.event_slot('-infinity')"), Some(0));
        // The slot's default is inlined into every insert's plan: called
        // instead (its argument, clock_timestamp(), is volatile), the SQL
        // function would be parsed and planned again at every insert.
        let plan = explain(
            "EXPLAIN (VERBOSE, COSTS OFF) INSERT INTO otp.event (at, agent, event) VALUES (now(), 'a', 'issued')",
        );
        assert!(plan.contains("clock_timestamp()"), "{plan}");
        assert!(!plan.contains("event_slot"), "not inlined: {plan}");
        run("SET LOCAL TimeZone = 'Pacific/Kiritimati'");
        assert_eq!(
            one::<i16>("SELECT otp.event_slot('1970-01-08 00:00:00+00')"),
            Some(1)
        );
        issue("t-slots", "4721");
        let code = delivered_code("t-slots");
        verify("t-slots", &code);
        assert!(count("SELECT count(*) FROM otp.event WHERE conversation = 't-slots'") >= 3);
        assert_eq!(
            count(
                "SELECT count(*) FROM otp.event
                    WHERE slot NOT IN (otp.event_slot(at), otp.event_slot(at + interval '1 minute'))
                       OR tableoid::regclass::text <> 'otp.event_' || lpad(slot::text, 2, '0')"
            ),
            0
        );
    }

    /// A week whose every event is past the retention empties with one
    /// TRUNCATE; the week the cutoff falls in, and the weeks after it, lose
    /// only their old rows, row by row.
    #[pg_test]
    fn purge_empties_the_weeks_past_the_retention_and_deletes_the_rest() {
        fixture();
        // the start of the week 90 days ago falls in: older than a 90-day
        // cutoff, in the cutoff's own week
        let cutoff_week = "to_timestamp(floor(extract(epoch FROM clock_timestamp() - interval '90 days') / 604800) * 604800)";
        run(&format!(
            "INSERT INTO otp.event (at, slot, agent, subject, event)
             SELECT t, otp.event_slot(t), 'weeks', 'p', 'issued'
               FROM unnest(ARRAY[clock_timestamp() - interval '100 days',
                                 clock_timestamp() - interval '101 days',
                                 {cutoff_week},
                                 clock_timestamp() - interval '89 days',
                                 clock_timestamp()]) AS t"
        ));
        // the size of the partition a time's events are in: none once
        // truncated, a page still after its rows were deleted one by one
        // (within the test's transaction, a TRUNCATE keeps the file)
        let size = |at: &str| -> i64 {
            one::<i64>(&format!(
                "SELECT pg_relation_size(format('otp.event_%s', lpad(otp.event_slot({at})::text, 2, '0')))"
            ))
            .unwrap()
        };
        let days_ago = |days: i32| format!("clock_timestamp() - interval '{days} days'");
        let purged: i64 =
            one("SELECT events FROM otp_purge(event_retention => interval '90 days')").unwrap();
        assert_eq!(purged, 3);
        assert_eq!(
            one::<String>(
                "SELECT string_agg(extract(day FROM clock_timestamp() - at)::text, ',' ORDER BY at)
                   FROM otp.event WHERE agent = 'weeks'"
            ),
            Some("89,0".into())
        );
        assert_eq!(size(&days_ago(100)), 0, "the old week was truncated");
        assert!(size(cutoff_week) > 0, "the cutoff's week was not");
        assert!(size(&days_ago(0)) > 0, "this week was not");

        let old = |days: i32| {
            run(&format!(
                "INSERT INTO otp.event (at, slot, agent, subject, event)
                 VALUES ({at}, otp.event_slot({at}), 'weeks', 'p', 'issued')",
                at = days_ago(days)
            ))
        };
        // A retention as long as the ring (53 weeks) truncates nothing.
        old(400);
        let purged: i64 =
            one("SELECT events FROM otp_purge(event_retention => interval '380 days')").unwrap();
        assert_eq!(purged, 1);
        assert!(size(&days_ago(400)) > 0, "deleted row by row");
        // A shorter one truncates whatever lies wholly before it.
        old(100);
        assert!(size(&days_ago(100)) > 0);
        let purged: i64 =
            one("SELECT events FROM otp_purge(event_retention => interval '60 days')").unwrap();
        assert_eq!(purged, 2);
        assert_eq!(size(&days_ago(100)), 0);
        // 401 days old: 53 weeks before 30 days ago, so in the partition of
        // a week in use again (a row not purged a year ago): deleted as any
        // old row.
        old(401);
        assert_eq!(
            one::<String>(&format!(
                "SELECT (otp.event_slot({}) = otp.event_slot({}))::text",
                days_ago(401),
                days_ago(30)
            )),
            Some("true".into())
        );
        let purged: i64 =
            one("SELECT events FROM otp_purge(event_retention => interval '90 days')").unwrap();
        assert_eq!(purged, 1);
        assert_eq!(
            count("SELECT count(*) FROM otp.event WHERE agent = 'weeks'"),
            1
        );
    }

    /// The partitions of the audit trail this backend holds a lock on, and
    /// in which mode.
    fn event_locks() -> String {
        one::<String>(
            "SELECT coalesce(string_agg(c.relname || ' ' || l.mode, ', ' ORDER BY c.relname, l.mode), '')
               FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
               JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'otp.event'::regclass
              WHERE l.pid = pg_backend_pid()",
        )
        .unwrap_or_default()
    }

    /// A purge with nothing old to remove locks no week: a lock on each
    /// empty one, at every pass of the worker, would be written to the WAL,
    /// replayed on standbys and make otp_events wait.
    #[pg_test]
    fn a_purge_with_nothing_to_empty_locks_no_week() {
        fixture();
        issue("t-nolock", "4721");
        one::<i64>("SELECT events FROM otp_purge()");
        let locks = event_locks();
        assert!(!locks.contains("AccessExclusiveLock"), "{locks}");
    }

    /// otp_events reads (and locks) only the weeks its `since` reaches, so
    /// that a transaction holding its result keeps no old week from the
    /// purge.
    #[pg_test]
    fn otp_events_locks_only_the_weeks_it_reads() {
        fixture();
        issue("t-weeks-read", "4721");
        let old_week = one::<String>(
            "SELECT format('event_%s', lpad(otp.event_slot(clock_timestamp() - interval '100 days')::text, 2, '0'))",
        )
        .unwrap();
        let recent =
            count("SELECT count(*) FROM otp_events('payroll', '4721', since => '30 days')");
        assert!(recent >= 1);
        let locks = event_locks();
        assert!(!locks.contains(&format!("{old_week} ")), "{locks}");
        assert!(locks.matches("AccessShareLock").count() <= 7, "{locks}");
        // Reaching back 100 days reads (and locks) that week.
        count("SELECT count(*) FROM otp_events('payroll', '4721', since => '100 days')");
        assert!(event_locks().contains(&format!("{old_week} AccessShareLock")));
    }

    /// A week holding a row newer than the cutoff (a clock stepped back, a
    /// row written by hand) is never truncated: its old rows go one by one.
    #[pg_test]
    fn purge_never_truncates_a_week_with_a_newer_row() {
        fixture();
        run("INSERT INTO otp.event (at, slot, agent, subject, event)
             SELECT t, otp.event_slot(clock_timestamp() - interval '100 days'), 'stepped', 'p', 'issued'
               FROM unnest(ARRAY[clock_timestamp() - interval '100 days', clock_timestamp()]) AS t");
        let purged: i64 =
            one("SELECT events FROM otp_purge(event_retention => interval '90 days')").unwrap();
        assert_eq!(purged, 1);
        assert_eq!(
            count("SELECT count(*) FROM otp.event WHERE agent = 'stepped' AND at > clock_timestamp() - interval '1 day'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.event WHERE agent = 'stepped'"),
            1
        );
    }

    #[pg_test]
    fn purge_deletes_what_ended_long_ago_and_keeps_the_rest() {
        fixture();
        // an old, finished flow: code, message, session, events
        issue("t-old", "4721");
        let code = delivered_code("t-old");
        verify("t-old", &code);
        run("UPDATE otp.challenge SET created_at = created_at - interval '8 days', ended_at = ended_at - interval '8 days',
                                      expires_at = expires_at - interval '8 days' WHERE conversation = 't-old';
             UPDATE otp.outbox SET state = 'sent', code_nonce = NULL, code_sealed = NULL,
                                   finished_at = clock_timestamp() - interval '8 days' WHERE conversation = 't-old';
             UPDATE otp.session SET expires_at = clock_timestamp() - interval '8 days',
                                    idle_expires_at = clock_timestamp() - interval '8 days' WHERE conversation = 't-old';
             ALTER TABLE otp.event DISABLE TRIGGER event_append_only;
             UPDATE otp.event SET at = at - interval '91 days', slot = otp.event_slot(at - interval '91 days')
              WHERE conversation = 't-old';
             ALTER TABLE otp.event ENABLE TRIGGER event_append_only;");
        // a current flow
        issue("t-new", "4721");
        let purged: Option<String> =
            one("SELECT concat_ws('/', challenges, messages, sessions, events) FROM otp_purge()");
        let counts: Vec<i64> = purged
            .unwrap()
            .split('/')
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(counts.iter().all(|&n| n >= 1), "{counts:?}");
        assert_eq!(
            count("SELECT count(*) FROM otp.challenge WHERE conversation = 't-old'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation = 't-old'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.session WHERE conversation = 't-old'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.event WHERE conversation = 't-old'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.challenge WHERE conversation = 't-new'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation = 't-new'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.event WHERE conversation = 't-new'"),
            1
        );
    }

    #[pg_test]
    fn purge_keeps_codes_inside_a_send_window_and_live_lockouts() {
        fixture();
        configure("long-window", ", max_codes => 3, code_window => '30 days'");
        issue_for("long-window", "t-window", "4721");
        run("UPDATE otp.challenge SET state = 'expired', created_at = created_at - interval '8 days',
                                      ended_at = clock_timestamp() - interval '8 days'
              WHERE conversation = 't-window'");
        run("INSERT INTO otp.subject_guard VALUES ('long-window', 'locked', 0, clock_timestamp() + interval '1 hour'),
                                                  ('long-window', 'counting', 2, NULL),
                                                  ('long-window', 'idle', 0, NULL)");
        run("SELECT * FROM otp_purge()");
        // still counted by the 30-day send window
        assert_eq!(
            count("SELECT count(*) FROM otp.challenge WHERE conversation = 't-window'"),
            1
        );
        let guards: Option<String> =
            one("SELECT string_agg(subject, ',' ORDER BY subject) FROM otp.subject_guard WHERE agent = 'long-window'");
        assert_eq!(guards.as_deref(), Some("counting,locked"));
        assert_eq!(
            sqlstate("SELECT * FROM otp_purge(retention => NULL)"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_purge(retention => '-1 day')"),
            "22023"
        );
    }

    // ---- audit trail -----------------------------------------------------

    /// The person's events for an agent, oldest first, as "event@conversation".
    fn events(agent: &str, subject: &str) -> Vec<String> {
        let listed: Option<String> = Spi::get_one_with_args(
            "SELECT string_agg(event || '@' || coalesce(conversation, ''), ',' ORDER BY n DESC)
               FROM otp_events($1, $2) WITH ORDINALITY AS e(at, event, conversation, channel, destination_hint, n)",
            &[agent.into(), subject.into()],
        )
        .unwrap();
        listed
            .map(|l| l.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    }

    #[pg_test]
    fn a_full_flow_leaves_an_audit_trail_without_codes() {
        fixture();
        configure("audited", ", resend_cooldown => '30 seconds'");
        issue_for("audited", "t-audit", "4721");
        let code = delivered_code("t-audit");
        assert_eq!(
            issue_with_wait("audited", "t-audit-2", "4721").0,
            "rate_limited"
        );
        assert_eq!(
            verify_as("audited", "t-audit", &wrong_code(&code)).0,
            "incorrect"
        );
        let token: String = Spi::get_one_with_args(
            "SELECT session_token FROM otp_verify('audited', 't-audit', $1)",
            &[code.as_str().into()],
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args("SELECT session_revoke($1)", &[token.as_str().into()]).unwrap();
        assert_eq!(
            events("audited", "4721"),
            [
                "issued@t-audit",
                "rate_limited@t-audit-2",
                "incorrect@t-audit",
                "verified@t-audit",
                "session_started@t-audit",
                "session_revoked@t-audit"
            ]
        );
        let row: Option<String> = one(
            "SELECT channel || ' ' || destination_hint FROM otp.event WHERE agent = 'audited' AND event = 'issued'",
        );
        assert_eq!(row.as_deref(), Some("whatsapp ***78"));
        let leaks: Option<i64> = Spi::get_one_with_args(
            "SELECT count(*) FROM otp.event e WHERE e::text LIKE '%' || $1 || '%' OR e::text LIKE '%' || $2 || '%'",
            &[code.as_str().into(), token.as_str().into()],
        )
        .unwrap();
        assert_eq!(leaks, Some(0));
    }

    #[pg_test]
    fn delivery_supersession_and_timeouts_are_recorded_once() {
        fixture();
        configure("audited-2", "");
        issue_for("audited-2", "t-audit-d", "4721");
        let id = claim_id("t-audit-d").unwrap();
        report_failed(id, "131026", false);
        let email = claim_id("t-audit-d").unwrap();
        report_sent(email, "smtp:250");
        issue_for("audited-2", "t-audit-d", "4721"); // supersedes
        assert_eq!(
            events("audited-2", "4721"),
            [
                "issued@t-audit-d",
                "delivery_failed@t-audit-d",
                "delivered@t-audit-d",
                "superseded@t-audit-d",
                "issued@t-audit-d"
            ]
        );
    }

    #[pg_test]
    fn a_timed_out_session_is_recorded_once() {
        fixture();
        configure("audited-3", ", require_otp => false");
        let token = issue_for("audited-3", "t-audit-s", "4721").token.unwrap();
        run("UPDATE otp.session SET idle_expires_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-audit-s'");
        assert_eq!(touch_status(&token), "idle_timeout");
        assert_eq!(touch_status(&token), "idle_timeout");
        assert_eq!(
            events("audited-3", "4721"),
            ["session_started@t-audit-s", "session_expired@t-audit-s"]
        );
    }

    #[pg_test]
    fn the_audit_trail_is_append_only_and_its_reader_validates() {
        fixture();
        issue("t-audit-ro", "4721");
        assert_eq!(
            sqlstate("UPDATE otp.event SET event = 'verified' WHERE conversation = 't-audit-ro'"),
            "42501"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_events('payroll', '4721', max_rows => 0)"),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_events('payroll', NULL)"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_events('nobody', '4721')"),
            "42704"
        );
    }

    // ---- sessions --------------------------------------------------------

    fn session_for(conversation: &str) -> String {
        issue(conversation, "4721");
        let code = delivered_code(conversation);
        verify(conversation, &code).token.expect("session token")
    }

    #[pg_test]
    fn touch_extends_idle_deadline_but_never_past_absolute() {
        fixture();
        let token = session_for("t-touch");
        run(
            "UPDATE otp.session SET idle_expires_at = clock_timestamp() + interval '1 minute',
                                    expires_at = clock_timestamp() + interval '10 minutes'
              WHERE conversation = 't-touch'",
        );
        let moved: Option<bool> = Spi::get_one_with_args(
            "SELECT idle_expires_at > clock_timestamp() + interval '9 minutes' AND idle_expires_at <= expires_at
               FROM session_touch($1)",
            &[token.as_str().into()],
        )
        .unwrap();
        assert_eq!(moved, Some(true));
        let row: Option<String> = Spi::get_one_with_args(
            "SELECT status || '/' || agent || '/' || conversation || '/' || subject FROM session_touch($1)",
            &[token.as_str().into()],
        )
        .unwrap();
        assert_eq!(row.as_deref(), Some("active/payroll/t-touch/4721"));
    }

    #[pg_test]
    fn idle_session_times_out() {
        fixture();
        let token = session_for("t-idle");
        run("UPDATE otp.session SET idle_expires_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-idle'");
        assert_eq!(touch_status(&token), "idle_timeout");
        // a timed-out session stays timed out
        assert_eq!(touch_status(&token), "idle_timeout");
    }

    #[pg_test]
    fn session_expires_at_absolute_limit() {
        fixture();
        let token = session_for("t-abs");
        run(
            "UPDATE otp.session SET expires_at = clock_timestamp() - interval '1 second',
                                    idle_expires_at = clock_timestamp() - interval '1 second'
              WHERE conversation = 't-abs'",
        );
        assert_eq!(touch_status(&token), "expired");
    }

    #[pg_test]
    fn default_session_lifetimes_are_30_minutes_idle_and_24_hours() {
        fixture();
        session_for("t-life");
        let lifetimes: Option<String> = one(
            "SELECT (idle_expires_at - created_at)::text || ' ' || (expires_at - created_at)::text
               FROM otp.session WHERE conversation = 't-life'",
        );
        assert_eq!(lifetimes.as_deref(), Some("00:30:00 1 day"));
    }

    #[pg_test]
    fn revoke_ends_a_session_once() {
        fixture();
        let token = session_for("t-revoke");
        let first: Option<bool> =
            Spi::get_one_with_args("SELECT session_revoke($1)", &[token.as_str().into()]).unwrap();
        let second: Option<bool> =
            Spi::get_one_with_args("SELECT session_revoke($1)", &[token.as_str().into()]).unwrap();
        assert_eq!((first, second), (Some(true), Some(false)));
        assert_eq!(touch_status(&token), "revoked");
        let unknown: Option<bool> = one("SELECT session_revoke('no-such-token')");
        assert_eq!(unknown, Some(false));
    }

    #[pg_test]
    fn unknown_token() {
        fixture();
        assert_eq!(
            touch_status("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            "unknown"
        );
        assert_eq!(touch_status(""), "unknown");
        let stored: Option<i64> =
            one("SELECT count(*) FROM otp.session WHERE octet_length(token_hash) <> 32");
        assert_eq!(stored, Some(0));
    }

    // ---- outbox protocol -------------------------------------------------

    fn message_field(conversation: &str, column: &str) -> Option<String> {
        Spi::get_one_with_args::<String>(
            &format!("SELECT {column}::text FROM otp.outbox WHERE conversation = $1 ORDER BY id DESC LIMIT 1"),
            &[conversation.into()],
        )
        .unwrap()
    }

    /// A dispatcher's reports on message `id`, for the attempt it is at.
    fn report_sent(id: i64, provider_ref: &str) {
        Spi::run_with_args(
            "SELECT otp_outbox_sent($1, (SELECT attempt FROM otp.outbox WHERE id = $1), $2)",
            &[id.into(), provider_ref.into()],
        )
        .unwrap();
    }

    fn report_failed(id: i64, error: &str, retryable: bool) {
        Spi::run_with_args(
            "SELECT otp_outbox_failed($1, (SELECT attempt FROM otp.outbox WHERE id = $1), $2, $3)",
            &[id.into(), error.into(), retryable.into()],
        )
        .unwrap();
    }

    fn report_expired(id: i64) {
        Spi::run_with_args(
            "SELECT otp_outbox_expired($1, (SELECT attempt FROM otp.outbox WHERE id = $1))",
            &[id.into()],
        )
        .unwrap();
    }

    /// Claims every due message; the id of the one for `conversation`, if any.
    /// A dispatcher's sweep: (real messages finished, decoys moved).
    fn sweep() -> (i64, i64) {
        Spi::connect(|client| {
            let row = client
                .select("SELECT finished, decoys FROM otp_outbox_sweep()", None, &[])
                .unwrap()
                .first();
            (
                row.get::<i64>(1).unwrap().unwrap(),
                row.get::<i64>(2).unwrap().unwrap(),
            )
        })
    }

    fn claim_id(conversation: &str) -> Option<i64> {
        Spi::get_one_with_args::<i64>(
            "SELECT max(message_id) FROM otp_outbox_claim(batch_size => 1000) WHERE conversation = $1",
            &[conversation.into()],
        )
        .unwrap()
    }

    #[pg_test]
    fn claim_leases_a_message_and_reoffers_it_after_the_lease() {
        fixture();
        issue("t-lease", "4721");
        let id = claim_id("t-lease").expect("claimed");
        assert_eq!(
            message_field("t-lease", "state").as_deref(),
            Some("sending")
        );
        assert_eq!(
            claim_id("t-lease"),
            None,
            "leased messages are not offered twice"
        );
        run("UPDATE otp.outbox SET available_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-lease'");
        let attempt: Option<i32> = Spi::get_one_with_args(
            "SELECT max(attempt) FROM otp_outbox_claim() WHERE message_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(attempt, Some(2));
    }

    #[pg_test]
    fn a_verified_challenge_is_never_sent_again_after_a_lease_runs_out() {
        fixture();
        issue("t-lease-verified", "4721");
        let code = delivered_code("t-lease-verified");
        assert_eq!(verify("t-lease-verified", &code).status, "verified");
        // the dispatcher died without reporting; its lease runs out
        assert_eq!(
            message_field("t-lease-verified", "state").as_deref(),
            Some("sending")
        );
        run(
            "UPDATE otp.outbox SET available_at = clock_timestamp() - interval '1 second'
              WHERE conversation = 't-lease-verified'",
        );
        assert_eq!(claim_id("t-lease-verified"), None);
        // the claim only claims; the sweep ends it
        assert_eq!(sweep().0, 1);
        assert_eq!(
            message_field("t-lease-verified", "state").as_deref(),
            Some("cancelled")
        );
        assert_eq!(message_field("t-lease-verified", "code_sealed"), None);
    }

    /// Undeliverable messages ahead in the queue take no places in a
    /// claim: asked for n, it returns n when n are deliverable.
    #[pg_test]
    fn a_claim_returns_as_many_deliverable_messages_as_asked() {
        fixture();
        for n in 0..3 {
            issue(&format!("t-full-dead-{n}"), "4721");
            run(&format!(
                "UPDATE otp.outbox SET expires_at = clock_timestamp() - interval '1 second',
                                       available_at = clock_timestamp() - interval '1 hour'
                  WHERE conversation = 't-full-dead-{n}'"
            ));
        }
        for n in 0..2 {
            issue(&format!("t-full-live-{n}"), "5000");
        }
        assert_eq!(
            count("SELECT count(*) FROM otp_outbox_claim(batch_size => 2)"),
            2
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation LIKE 't-full-dead-%' AND state = 'queued'"),
            3
        );
    }

    /// The purge worker sweeps too, but never delivers a decoy: with no
    /// dispatcher running, a real message is never sent, so neither is a
    /// decoy's. It only ends what can no longer be delivered.
    #[pg_test]
    fn the_workers_sweep_ends_decoys_but_never_delivers_them() {
        use crate::delivery::{sweep as sweep_with, Decoys};
        fixture();
        configure("idle-hidden", ", reveal_unknown => false");
        issue_for("idle-hidden", "t-idle-live", "ghost-live");
        issue_for("idle-hidden", "t-idle-dead", "ghost-dead");
        run(
            "UPDATE otp.outbox SET expires_at = clock_timestamp() - interval '1 second'
              WHERE conversation = 't-idle-dead'",
        );
        let swept = Spi::connect_mut(|client| sweep_with(client, Decoys::OnlyEnd)).unwrap();
        assert_eq!((swept.finished, swept.decoys), (0, 1));
        assert_eq!(
            message_field("t-idle-live", "state").as_deref(),
            Some("queued")
        );
        assert_eq!(
            message_field("t-idle-dead", "state").as_deref(),
            Some("expired")
        );
    }

    #[pg_test]
    fn claim_never_returns_expired_codes_and_erases_them() {
        fixture();
        issue("t-claim-exp", "4721");
        run("UPDATE otp.outbox SET expires_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-claim-exp'");
        assert_eq!(claim_id("t-claim-exp"), None);
        // the claim only claims (the code stays sealed until the sweep)
        assert_eq!(
            message_field("t-claim-exp", "state").as_deref(),
            Some("queued")
        );
        assert_eq!(sweep().0, 1);
        assert_eq!(
            message_field("t-claim-exp", "state").as_deref(),
            Some("expired")
        );
        assert_eq!(message_field("t-claim-exp", "code_sealed"), None);
        assert_eq!(
            challenge_field("t-claim-exp", "delivery").as_deref(),
            Some("expired")
        );
    }

    #[pg_test]
    fn a_message_that_cannot_be_unsealed_fails_alone() {
        fixture();
        issue("t-unseal-bad", "4721");
        issue("t-unseal-good", "5000");
        // as if sealed under a previous secret
        run("UPDATE otp.outbox SET code_sealed = '\\x00'::bytea || code_sealed WHERE conversation = 't-unseal-bad'");
        assert_eq!(claim_id("t-unseal-bad"), None);
        assert_eq!(
            message_field("t-unseal-bad", "state").as_deref(),
            Some("failed")
        );
        assert_eq!(
            challenge_field("t-unseal-bad", "delivery").as_deref(),
            Some("failed")
        );
        assert_eq!(
            message_field("t-unseal-good", "state").as_deref(),
            Some("sending")
        );
    }

    #[pg_test]
    fn sent_finishes_the_message_and_is_idempotent() {
        fixture();
        issue("t-sent", "4721");
        let id = claim_id("t-sent").unwrap();
        report_sent(id, "wamid.1");
        report_sent(id, "wamid.1");
        assert_eq!(message_field("t-sent", "state").as_deref(), Some("sent"));
        assert_eq!(
            message_field("t-sent", "provider_ref").as_deref(),
            Some("wamid.1")
        );
        // WhatsApp confirms delivery later: the sealed code stays until then
        // (see provider_statuses_only_move_forward), and no longer
        assert!(message_field("t-sent", "code_sealed").is_some());
        assert_eq!(
            challenge_field("t-sent", "delivery").as_deref(),
            Some("sent")
        );
        assert_eq!(
            provider_status("wamid.1", Some(id), "delivered", false),
            "recorded"
        );
        assert_eq!(message_field("t-sent", "code_sealed"), None);
    }

    #[pg_test]
    fn retryable_failure_requeues_before_expiry() {
        fixture();
        issue("t-retry", "4721");
        let id = claim_id("t-retry").unwrap();
        report_failed(id, "HTTP 503", true);
        let requeued: Option<String> = Spi::get_one_with_args(
            "SELECT state || ':' || (available_at > clock_timestamp()) || ':' || (available_at < expires_at)
                    || ':' || (code_sealed IS NOT NULL) || ':' || last_error
               FROM otp.outbox WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(requeued.as_deref(), Some("queued:true:true:true:HTTP 503"));
        assert_eq!(
            challenge_field("t-retry", "delivery").as_deref(),
            Some("queued")
        );
    }

    #[pg_test]
    fn retryable_failure_near_expiry_expires_instead_of_sending_late() {
        fixture();
        issue("t-retry-late", "4721");
        let id = claim_id("t-retry-late").unwrap();
        run(
            "UPDATE otp.outbox SET expires_at = clock_timestamp() + interval '100 milliseconds'
              WHERE conversation = 't-retry-late'",
        );
        report_failed(id, "timeout", true);
        assert_eq!(
            message_field("t-retry-late", "state").as_deref(),
            Some("expired")
        );
        assert_eq!(message_field("t-retry-late", "code_sealed"), None);
    }

    #[pg_test]
    fn permanent_failure_is_final_and_visible_on_the_challenge() {
        fixture();
        // an agent without an email column: nothing to fall back to
        run("SELECT otp_configure(agent => 'wa-only', source => 'public.employees', id_column => 'employee_no',
                                  phone_column => 'whatsapp')");
        issue_for("wa-only", "t-perm", "4721");
        let (id, code) = Spi::connect(|c| {
            let row = c
                .select("SELECT message_id, code FROM otp_outbox_claim(1000) WHERE conversation = 't-perm'", None, &[])
                .unwrap()
                .first();
            (
                row.get::<i64>(1).unwrap().unwrap(),
                row.get::<String>(2).unwrap().unwrap(),
            )
        });
        // a provider echoing the message back must not put the code in a table
        let error = format!("131026: recipient cannot receive message with code {code}");
        report_failed(id, &error, false);
        assert_eq!(message_field("t-perm", "state").as_deref(), Some("failed"));
        assert_eq!(message_field("t-perm", "code_sealed"), None);
        let stored_error = message_field("t-perm", "last_error").unwrap();
        assert!(!stored_error.contains(&code), "{stored_error}");
        assert!(stored_error.ends_with("with code [code]"), "{stored_error}");
        assert_eq!(
            challenge_field("t-perm", "delivery").as_deref(),
            Some("failed")
        );
    }

    fn status_of(conversation: &str) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT concat_ws('/', status, channel, destination_hint, delivery, attempts_remaining)
               FROM otp_status('payroll', $1)",
            &[conversation.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn permanent_whatsapp_failure_falls_back_to_email_with_the_same_code() {
        fixture();
        issue("t-fallback", "4721");
        assert_eq!(status_of("t-fallback"), "pending/whatsapp/***78/queued/3");
        let (id, code) = Spi::connect(|c| {
            let row = c
                .select("SELECT message_id, code FROM otp_outbox_claim(1000) WHERE conversation = 't-fallback'", None, &[])
                .unwrap()
                .first();
            (
                row.get::<i64>(1).unwrap().unwrap(),
                row.get::<String>(2).unwrap().unwrap(),
            )
        });
        report_failed(id, "131026: not a WhatsApp user", false);
        assert_eq!(
            status_of("t-fallback"),
            "pending/email/a***@example.com/queued/3"
        );
        let emailed: Option<String> = one(
            "SELECT channel || ':' || destination || ':' || code FROM otp_outbox_claim(1000) WHERE conversation = 't-fallback'",
        );
        assert_eq!(emailed, Some(format!("email:ana@example.com:{code}")));
        let email_id: i64 =
            one("SELECT max(id) FROM otp.outbox WHERE conversation = 't-fallback'").unwrap();
        report_sent(email_id, "smtp-queued");
        assert_eq!(
            status_of("t-fallback"),
            "pending/email/a***@example.com/sent/3"
        );
        let states: Option<String> =
            one("SELECT string_agg(channel || '=' || state, ',' ORDER BY id) FROM otp.outbox WHERE conversation = 't-fallback'");
        assert_eq!(states.as_deref(), Some("whatsapp=failed,email=sent"));
        assert_eq!(verify("t-fallback", &code).status, "verified");
    }

    /// Claims every due message; the language and time zone each
    /// conversation's got.
    fn claimed_locales() -> std::collections::HashMap<String, (Option<String>, Option<String>)> {
        Spi::connect(|c| {
            c.select(
                "SELECT conversation, language, time_zone FROM otp_outbox_claim(1000)",
                None,
                &[],
            )
            .unwrap()
            .map(|row| {
                (
                    row.get(1).unwrap().unwrap(),
                    (row.get(2).unwrap(), row.get(3).unwrap()),
                )
            })
            .collect()
        })
    }

    #[pg_test]
    fn messages_carry_the_persons_language_and_time_zone_when_valid() {
        fixture();
        run("CREATE TABLE public.people_lang (id text PRIMARY KEY, whatsapp text, email text, lang text, tz text);
             INSERT INTO public.people_lang VALUES
                 ('1', '+52 55 1234 5601', 'uno@example.com', 'es-mx', 'America/Mexico_City'),
                 ('2', '+52 55 1234 5602', NULL, NULL, NULL),
                 ('3', '+52 55 1234 5603', NULL, 'español', 'Mars/Olympus_Mons'),
                 ('4', '+52 55 1234 5604', NULL, 'x-private', '../../../etc/passwd'),
                 ('5', '+52 55 1234 5605', NULL, ' en ', ' Europe/Madrid ');
             SELECT otp_configure(agent => 'lang', source => 'public.people_lang', id_column => 'id',
                                  phone_column => 'whatsapp', email_column => 'email',
                                  language_column => 'lang', time_zone_column => 'tz');");
        for id in ["1", "2", "3", "4", "5"] {
            assert_eq!(
                issue_for("lang", &format!("t-lang-{id}"), id).status,
                "code_sent"
            );
        }
        issue("t-lang-none", "4721");
        let claimed = claimed_locales();
        let locale = |conversation: &str| {
            let (language, time_zone) = &claimed[conversation];
            (language.clone(), time_zone.clone())
        };
        let both = |l: &str, t: &str| (Some(l.to_owned()), Some(t.to_owned()));
        assert_eq!(locale("t-lang-1"), both("es-MX", "America/Mexico_City"));
        assert_eq!(locale("t-lang-2"), (None, None));
        assert_eq!(locale("t-lang-3"), (None, None));
        assert_eq!(locale("t-lang-4"), (None, None));
        assert_eq!(locale("t-lang-5"), both("en", "Europe/Madrid"));
        // an agent without these columns passes none
        assert_eq!(locale("t-lang-none"), (None, None));
        // the fallback message keeps it
        let id: i64 = one("SELECT id FROM otp.outbox WHERE conversation = 't-lang-1'").unwrap();
        report_failed(id, "131026: not a WhatsApp user", false);
        assert_eq!(
            claimed_locales()["t-lang-1"],
            both("es-MX", "America/Mexico_City")
        );
        // the table refuses what is not a tag, whoever writes it
        assert_eq!(
            sqlstate("UPDATE otp.outbox SET language = 'es MX' WHERE conversation = 't-lang-2'"),
            "23514"
        );
        assert_eq!(
            sqlstate("UPDATE otp.outbox SET time_zone = '../x' WHERE conversation = 't-lang-2'"),
            "23514"
        );
        // a language column that does not exist
        assert_eq!(
            sqlstate(
                "SELECT otp_configure(agent => 'lang', source => 'public.people_lang', id_column => 'id',
                                      phone_column => 'whatsapp', language_column => 'idioma')"
            ),
            "42703"
        );
        let stored: Option<String> = one(
            "SELECT language_column || ',' || time_zone_column FROM otp.agent WHERE name = 'lang'",
        );
        assert_eq!(stored.as_deref(), Some("lang,tz"));
    }

    #[pg_test]
    fn no_fallback_without_another_channel_or_after_expiry() {
        fixture();
        issue("t-nofallback", "5000"); // email only
        let id = claim_id("t-nofallback").unwrap();
        report_failed(id, "550 no such user", false);
        assert_eq!(
            status_of("t-nofallback"),
            "pending/email/b***@example.com/failed/3"
        );

        issue("t-late-fallback", "4721");
        let id = claim_id("t-late-fallback").unwrap();
        run("UPDATE otp.outbox SET expires_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-late-fallback'");
        report_failed(id, "rejected", false);
        let messages: Option<i64> =
            one("SELECT count(*) FROM otp.outbox WHERE conversation = 't-late-fallback'");
        assert_eq!(messages, Some(1));
    }

    #[pg_test]
    fn dispatcher_can_decline_a_code_that_expires_too_soon() {
        fixture();
        issue("t-decline", "4721");
        let queued: i64 =
            one("SELECT id FROM otp.outbox WHERE conversation = 't-decline'").unwrap();
        assert_eq!(
            sqlstate(&format!("SELECT otp_outbox_expired({queued}, 1)")),
            "55000"
        );
        let id = claim_id("t-decline").unwrap();
        report_expired(id);
        report_expired(id);
        assert_eq!(
            message_field("t-decline", "state").as_deref(),
            Some("expired")
        );
        assert_eq!(message_field("t-decline", "code_sealed"), None);
        assert_eq!(
            challenge_field("t-decline", "delivery").as_deref(),
            Some("expired")
        );
    }

    #[pg_test]
    fn status_follows_the_latest_challenge() {
        fixture();
        assert_eq!(status_of("t-status"), "no_challenge");
        issue("t-status", "4721");
        let code = delivered_code("t-status");
        verify("t-status", &wrong_code(&code));
        assert_eq!(status_of("t-status"), "pending/whatsapp/***78/queued/2");
        verify("t-status", &code);
        assert_eq!(status_of("t-status"), "verified/whatsapp/***78/queued");
        issue("t-status", "4721");
        run(
            "UPDATE otp.challenge SET expires_at = clock_timestamp() - interval '1 second'
              WHERE conversation = 't-status' AND state = 'pending'",
        );
        assert_eq!(status_of("t-status"), "expired/whatsapp/***78/queued");
        assert_eq!(sqlstate("SELECT * FROM otp_status('nobody', 'c')"), "42704");
        assert_eq!(
            sqlstate("SELECT * FROM otp_status('payroll', NULL)"),
            "22004"
        );
    }

    #[pg_test]
    fn reports_on_unclaimed_or_unknown_messages_are_errors() {
        fixture();
        issue("t-proto", "4721");
        let id: i64 = one("SELECT id FROM otp.outbox WHERE conversation = 't-proto'").unwrap();
        assert_eq!(
            sqlstate(&format!("SELECT otp_outbox_sent({id}, 1, 'x')")),
            "55000"
        );
        assert_eq!(
            sqlstate(&format!("SELECT otp_outbox_failed({id}, 1, 'x', true)")),
            "55000"
        );
        assert_eq!(sqlstate("SELECT otp_outbox_sent(-1, 1, 'x')"), "P0002");
        assert_eq!(sqlstate("SELECT otp_outbox_sent(NULL, 1, 'x')"), "22004");
        assert_eq!(
            sqlstate(&format!("SELECT otp_outbox_sent({id}, NULL, 'x')")),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT otp_outbox_failed(1, 1, 'x', NULL)"),
            "22004"
        );
        assert_eq!(sqlstate("SELECT * FROM otp_outbox_claim(0)"), "22023");
        assert_eq!(
            sqlstate("SELECT * FROM otp_outbox_claim(10, '0 seconds')"),
            "22023"
        );
    }

    #[pg_test]
    fn a_message_cancelled_in_flight_still_records_its_delivery() {
        fixture();
        issue("t-race", "4721");
        let id = claim_id("t-race").unwrap();
        issue("t-race", "4721"); // supersedes while the dispatcher is sending
        report_sent(id, "wamid.late");
        let row: Option<String> = Spi::get_one_with_args(
            "SELECT state || ':' || provider_ref || ':' || (sent_at IS NOT NULL) FROM otp.outbox WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(row.as_deref(), Some("cancelled:wamid.late:true"));
    }

    // ---- bad input and configuration --------------------------------------

    #[pg_test]
    fn null_and_empty_arguments_are_errors_with_sqlstates() {
        fixture();
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue(NULL, 'c', '4721')"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue('payroll', NULL, '4721')"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue('payroll', 'c', NULL)"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue('', 'c', '4721')"),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue('payroll', '', '4721')"),
            "22023"
        );
        assert_eq!(
            sqlstate(&format!(
                "SELECT * FROM otp_issue('payroll', '{}', '4721')",
                "c".repeat(513)
            )),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_verify('payroll', 'c', NULL)"),
            "22004"
        );
        assert_eq!(sqlstate("SELECT * FROM session_touch(NULL)"), "22004");
        assert_eq!(sqlstate("SELECT session_revoke(NULL)"), "22004");
    }

    #[pg_test]
    fn unknown_agent_is_an_error() {
        fixture();
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue('nobody', 'c', '4721')"),
            "42704"
        );
        assert_eq!(
            sqlstate("SELECT * FROM otp_verify('nobody', 'c', '123456')"),
            "42704"
        );
    }

    #[pg_test]
    fn configure_validates_everything() {
        fixture();
        let base = "agent => 'cfg', source => 'public.employees', id_column => 'employee_no'";
        let configured = |extra: &str| sqlstate(&format!("SELECT otp_configure({base}{extra})"));
        assert_eq!(configured(", phone_column => 'whatsapp'"), "ok");
        assert_eq!(configured(""), "22023", "no channel column");
        assert_eq!(configured(", phone_column => 'nope'"), "42703");
        assert_eq!(
            configured(", phone_column => 'WhatsApp'"),
            "42703",
            "names are case-sensitive"
        );
        assert_eq!(
            configured(", email_column => 'email', code_ttl => '-5 minutes'"),
            "22023"
        );
        assert_eq!(
            configured(", email_column => 'email', code_ttl => '0'"),
            "22023"
        );
        assert_eq!(
            configured(", email_column => 'email', idle_timeout => '0'"),
            "22023"
        );
        assert_eq!(
            configured(", email_column => 'email', absolute_timeout => '-1 hour'"),
            "22023"
        );
        assert_eq!(
            configured(", email_column => 'email', idle_timeout => '2 days'"),
            "22023"
        );
        assert_eq!(
            configured(", email_column => 'email', max_attempts => 0"),
            "22023"
        );
        assert_eq!(
            configured(", email_column => 'email', max_attempts => 11"),
            "22023"
        );
        assert_eq!(
            configured(", email_column => 'email', preferred_channel => 'sms'"),
            "22023"
        );
        assert_eq!(
            configured(", email_column => 'email', require_otp => NULL"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT otp_configure('x', 'public.no_such_table', 'id', 'phone')"),
            "42P01"
        );
        assert_eq!(
            sqlstate(
                "SELECT otp_configure('x', 'pg_catalog.pg_class_oid_index', 'oid', 'relname')"
            ),
            "42809"
        );
        assert_eq!(
            sqlstate("SELECT otp_configure(NULL, 'public.employees', 'employee_no', 'whatsapp')"),
            "22004"
        );
        // hostile column names are identifiers, never SQL
        run(
            r#"CREATE TABLE IF NOT EXISTS public."odd ""names""" ("id; DROP TABLE x" text, "e-mail" text)"#,
        );
        run(r#"INSERT INTO public."odd ""names""" VALUES ('1', 'odd@example.com')"#);
        run(
            r#"SELECT otp_configure('odd', 'public."odd ""names"""', 'id; DROP TABLE x', email_column => 'e-mail')"#,
        );
        assert_eq!(
            issue_for("odd", "t-odd", "1").hint.as_deref(),
            Some("o***@example.com")
        );
    }

    #[pg_test]
    fn reconfiguring_replaces_settings() {
        fixture();
        run("SELECT otp_configure(agent => 'payroll', source => 'public.employees', id_column => 'employee_no',
                                  email_column => 'email', max_attempts => 5)");
        let settings: Option<String> =
            one("SELECT phone_column IS NULL || ':' || max_attempts FROM otp.agent WHERE name = 'payroll'");
        assert_eq!(settings.as_deref(), Some("true:5"));
        issue("t-reconf", "4721");
        let code = delivered_code("t-reconf");
        assert_eq!(verify("t-reconf", &wrong_code(&code)).remaining, Some(4));
    }

    #[pg_test]
    fn dropped_source_column_is_a_clear_error_not_corruption() {
        fixture();
        run("CREATE TABLE public.shrinking (id text PRIMARY KEY, phone text, email text)");
        run("INSERT INTO public.shrinking VALUES ('1', '+1 555 0101', 'x@example.com')");
        run("SELECT otp_configure('shrink', 'public.shrinking', 'id', 'phone', 'email')");
        run("ALTER TABLE public.shrinking DROP COLUMN phone");
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue('shrink', 't-shrink', '1')"),
            "42703"
        );
        run("DROP TABLE public.shrinking");
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue('shrink', 't-shrink', '1')"),
            "42P01"
        );
        let rows: Option<i64> = one("SELECT count(*) FROM otp.challenge WHERE agent = 'shrink'");
        assert_eq!(rows, Some(0));
    }

    #[pg_test]
    fn duplicate_identifiers_are_a_configuration_error() {
        fixture();
        run("CREATE TABLE public.dupes (id text, email text)");
        run("INSERT INTO public.dupes VALUES ('1', 'a@example.com'), ('1', 'b@example.com')");
        run("SELECT otp_configure('dupes', 'public.dupes', 'id', email_column => 'email')");
        assert_eq!(
            sqlstate("SELECT * FROM otp_issue('dupes', 't-dupes', '1')"),
            "21000"
        );
    }

    #[pg_test]
    fn integer_id_columns_work() {
        fixture();
        run("CREATE TABLE public.numbered (id integer PRIMARY KEY, email text)");
        run("INSERT INTO public.numbered VALUES (4721, 'n@example.com')");
        run("SELECT otp_configure('numbered', 'public.numbered', 'id', email_column => 'email')");
        assert_eq!(issue_for("numbered", "t-num", "4721").status, "code_sent");
        assert_eq!(issue_for("numbered", "t-num", "abc").status, "not_found");
    }

    #[pg_test]
    fn secret_is_hidden_from_ordinary_roles() {
        run("CREATE ROLE otp_test_nobody NOLOGIN");
        fixture_sqlstate_helper();
        run("GRANT EXECUTE ON FUNCTION pg_temp.sqlstate_of(text) TO otp_test_nobody");
        run("SET LOCAL ROLE otp_test_nobody");
        let visible: Option<i64> =
            one("SELECT count(*) FROM pg_settings WHERE name = 'otp.secret_key'");
        assert_eq!(visible, Some(0));
        assert_eq!(sqlstate("SHOW otp.secret_key"), "42501");
        assert_eq!(
            sqlstate("SELECT current_setting('otp.secret_key')"),
            "42501"
        );
        // a SIGHUP parameter: not settable in a session by anyone
        assert_eq!(sqlstate("SET otp.secret_key = 'x'"), "55P02");
        assert_eq!(
            sqlstate("SELECT otp_configure('x', 'pg_class', 'oid', 'relname')"),
            "42501"
        );
        run("RESET ROLE");
    }

    // ---- findings of the attack on 0.2.0 --------------------------------------

    /// Decoy state is keyed on where the identifier is looked up (the source
    /// and its id column) and on the identifier exactly as it was compared:
    /// agents on one source share a decoy's send limits as they share a real
    /// person's, and another spelling is another decoy, as it would be
    /// another (unknown) person.
    #[pg_test]
    fn decoys_are_scoped_to_the_source_and_the_exact_identifier() {
        fixture();
        run("INSERT INTO public.employees VALUES ('e-77', 'Eve Ito', '+34 600 000 077', NULL, 1000)");
        run("CREATE TABLE public.contractors AS SELECT * FROM public.employees");
        // default limits: a 30-second cooldown per person and per destination
        for (agent, source) in [
            ("hide-a", "employees"),
            ("hide-b", "employees"),
            ("hide-c", "contractors"),
        ] {
            run(&format!(
                "SELECT otp_configure(agent => '{agent}', source => 'public.{source}', id_column => 'employee_no',
                                      phone_column => 'whatsapp', reveal_unknown => false)"
            ));
        }
        // spellings: E-77 is unknown, e-77 real; E-99 and e-99 both unknown
        assert!(answer("hide-a", "t-sp-1", "E-77").starts_with("code_sent/"));
        assert!(answer("hide-a", "t-sp-2", "e-77").starts_with("code_sent/"));
        assert!(answer("hide-a", "t-sp-3", "E-99").starts_with("code_sent/"));
        let second_unknown = answer("hide-a", "t-sp-4", "e-99");
        assert!(second_unknown.starts_with("code_sent/"), "{second_unknown}");
        // agents on one source: a real person primed in one is limited in the
        // other (their phone is in its cooldown), and so is a decoy
        assert!(answer("hide-b", "t-ag-real", "e-77").starts_with("rate_limited"));
        assert!(answer("hide-a", "t-ag-1", "Z-1").starts_with("code_sent/"));
        let same_source = answer("hide-b", "t-ag-2", "Z-1");
        assert!(same_source.starts_with("rate_limited"), "{same_source}");
        // another source is another namespace, for people as for decoys
        let other_source = answer("hide-c", "t-ag-3", "Z-1");
        assert!(other_source.starts_with("code_sent/"), "{other_source}");
    }

    /// A decoy gets the channel (and an email's domain) of a real record, one
    /// of a sample taken at otp_configure, chosen by a keyed hash of the
    /// identifier: decoys come in the proportions real people do, the same
    /// identifier always gets the same one, and nothing about a decoy follows
    /// from the records next to its identifier (the helper's second attack
    /// compared the hint of X with that of X followed by '~'). An empty
    /// source still answers like a real code.
    #[pg_test]
    fn decoys_look_like_the_people_of_the_source() {
        fixture();
        run(
            "CREATE TABLE public.mixed (id text PRIMARY KEY, phone text, email text);
             INSERT INTO public.mixed VALUES ('a1', '+34 600 000 001', NULL),
                                             ('b1', NULL, 'bea@corp.example'),
                                             ('c1', '+34 600 000 003', 'cy@corp.example');
             CREATE TABLE public.nobody (id text PRIMARY KEY, phone text, email text);",
        );
        for (agent, source) in [("mixed", "mixed"), ("nobody", "nobody")] {
            run(&format!(
                "SELECT otp_configure(agent => '{agent}', source => 'public.{source}', id_column => 'id',
                                      phone_column => 'phone', email_column => 'email',
                                      reveal_unknown => false, max_codes => 1000000, resend_cooldown => '0')"
            ));
        }
        let channel_and_domain = |identifier: &str| -> String {
            let answer = answer("mixed", "t-mixed", identifier);
            let mut parts = answer.split('/');
            let (status, channel, hint) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
            assert_eq!(status, Some("code_sent"), "{answer}");
            format!(
                "{}{}",
                channel.unwrap_or(""),
                hint.split_once('@')
                    .map(|(_, d)| format!("@{d}"))
                    .unwrap_or_default()
            )
        };
        // identifiers that all sort between a1 and b1 (the email-only record):
        // their decoys take both channels, as the source's people do
        let shapes: Vec<String> = (0..30)
            .map(|n| channel_and_domain(&format!("a1-{n}")))
            .collect();
        assert!(shapes.iter().any(|s| s == "whatsapp"), "{shapes:?}");
        assert!(
            shapes.iter().any(|s| s == "email@corp.example"),
            "{shapes:?}"
        );
        assert!(
            shapes
                .iter()
                .all(|s| s == "whatsapp" || s == "email@corp.example"),
            "{shapes:?}"
        );
        // the same identifier, the same decoy
        assert_eq!(channel_and_domain("a1-7"), shapes[7]);
        let empty = answer("nobody", "t-nobody", "x");
        assert!(empty.starts_with("code_sent/whatsapp/***"), "{empty}");
    }

    /// Hiding unknown identifiers is refused over an id column whose
    /// collation is nondeterministic: there "e-77" finds the person stored as
    /// "E-77" (one person, shared limits) while spellings of an unknown
    /// identifier are different decoys, which would tell them apart.
    #[pg_test]
    fn hiding_needs_an_exactly_compared_id_column() {
        fixture();
        // Nondeterministic collations need ICU. A server built without it
        // (the PostgreSQL builds used for 16 to 18 here) refuses the
        // collation (0A000): no such column can exist there.
        let created = sqlstate(
            "CREATE COLLATION public.otp_test_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
        );
        if created == "0A000" {
            return;
        }
        assert_eq!(created, "ok");
        run("CREATE TABLE public.ci_people (id text COLLATE public.otp_test_ci PRIMARY KEY, phone text);");
        let configure = |reveal: bool| {
            sqlstate(&format!(
                "SELECT otp_configure(agent => 'ci', source => 'public.ci_people', id_column => 'id',
                                      phone_column => 'phone', reveal_unknown => {reveal})"
            ))
        };
        assert_eq!(configure(false), "0A000");
        assert_eq!(configure(true), "ok");
    }

    /// However many decoys an application makes, they never take the places
    /// of real messages in a claim: a real message queued behind a flood of
    /// them is claimed by the next dispatcher, and the decoys still move on.
    #[pg_test]
    fn a_flood_of_decoys_does_not_delay_real_messages() {
        fixture();
        configure("flood", ", reveal_unknown => false");
        for n in 0..50 {
            issue_for("flood", &format!("t-flood-{n}"), &format!("ghost-{n}"));
        }
        issue_for("flood", "t-flood-real", "4721");
        let claimed: Vec<String> = Spi::connect(|client| {
            client
                .select(
                    "SELECT conversation FROM otp_outbox_claim(batch_size => 10)",
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| row.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        assert_eq!(claimed, ["t-flood-real"]);
        // and the dispatcher's sweep puts the decoys on their way, as real
        // messages would be
        assert_eq!(sweep(), (0, 50));
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE agent = 'flood' AND destination = '' AND state = 'sending'"),
            50
        );
    }

    /// Makes `code` the code of the conversation's pending challenge (as if
    /// it had been drawn), under the current secret.
    fn force_code(agent: &str, conversation: &str, code: &str) {
        let keys = crate::gucs::keys().unwrap().current;
        let challenge_id: i64 = Spi::get_one_with_args(
            "SELECT id FROM otp.challenge WHERE agent = $1 AND conversation = $2 AND state = 'pending'",
            &[agent.into(), conversation.into()],
        )
        .unwrap()
        .unwrap();
        let hash = keys.code_hash(challenge_id, agent, conversation, code);
        Spi::run_with_args(
            "UPDATE otp.challenge SET code_hash = $2, key_id = $3 WHERE id = $1",
            &[
                challenge_id.into(),
                hash.to_vec().into(),
                keys.id.to_vec().into(),
            ],
        )
        .unwrap();
    }

    /// A decoy has a code like any challenge, but it never verifies: not for
    /// an unknown identifier (another spelling of a real one, say), and not
    /// for a real person without a channel. The attempt still counts and the
    /// answers look the same as for a wrong code.
    #[pg_test]
    fn a_decoy_never_verifies_even_with_its_own_code() {
        fixture();
        configure("hidden-verify", ", reveal_unknown => false");
        for (conversation, identifier) in [("t-dv-unknown", "04721"), ("t-dv-nochannel", "6000")] {
            assert!(answer("hidden-verify", conversation, identifier).starts_with("code_sent/"));
            force_code("hidden-verify", conversation, "424242");
            assert_eq!(
                verify_as("hidden-verify", conversation, "424242"),
                ("incorrect".into(), Some(2)),
                "{identifier}"
            );
            force_code("hidden-verify", conversation, "434343");
            assert_eq!(
                verify_as("hidden-verify", conversation, "434343"),
                ("incorrect".into(), Some(1))
            );
            assert_eq!(
                count(&format!(
                    "SELECT count(*) FROM otp.session WHERE conversation = '{conversation}'"
                )),
                0
            );
        }
    }

    /// A real code and a decoy, side by side: the same delivery lifecycle
    /// through otp_status and otp_events (queued until a dispatcher claims,
    /// then sent, with a `delivered` event), and no dispatcher ever gets the
    /// decoy.
    #[pg_test]
    fn a_decoy_delivery_looks_like_a_real_one() {
        fixture();
        configure("hidden-life", ", reveal_unknown => false");
        let delivery = |conversation: &str| -> String {
            one::<String>(&format!(
                "SELECT concat_ws('/', status, delivery) FROM otp_status('hidden-life', '{conversation}')"
            ))
            .unwrap()
        };
        issue_for("hidden-life", "t-life-real", "4721");
        issue_for("hidden-life", "t-life-decoy", "8888");
        assert_eq!(delivery("t-life-real"), "pending/queued");
        assert_eq!(delivery("t-life-decoy"), "pending/queued");

        // a dispatcher claims: only the real message reaches it
        claim_all();
        assert_eq!(
            count("SELECT count(*) FROM claimed WHERE conversation = 't-life-decoy'"),
            0
        );
        let real = one::<i64>("SELECT message_id FROM claimed WHERE conversation = 't-life-real'")
            .unwrap();
        report_sent(real, "wamid.test");
        // the dispatcher's sweep starts the decoy's simulated send
        assert_eq!(sweep(), (0, 1));
        assert_eq!(delivery("t-life-decoy"), "pending/queued");
        // the simulated send ends; the next sweep finishes it
        run(
            "UPDATE otp.outbox SET available_at = clock_timestamp() - interval '1 second'
              WHERE conversation = 't-life-decoy'",
        );
        claim_all();
        assert_eq!(sweep(), (0, 1));
        assert_eq!(
            count("SELECT count(*) FROM claimed WHERE conversation = 't-life-decoy'"),
            0
        );
        assert_eq!(delivery("t-life-real"), "pending/sent");
        assert_eq!(delivery("t-life-decoy"), "pending/sent");
        assert_eq!(
            events("hidden-life", "4721"),
            ["issued@t-life-real", "delivered@t-life-real"]
        );
        assert_eq!(
            events("hidden-life", "8888"),
            ["issued@t-life-decoy", "delivered@t-life-decoy"]
        );
        // the decoy's message never held a destination
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation = 't-life-decoy' AND destination <> ''"),
            0
        );
    }

    /// Codes sent to a destination under the previous secret (before a
    /// rotation) still count against its limit under the new one.
    #[pg_test]
    fn a_destination_at_its_limit_stays_limited_across_a_rotation() {
        fixture();
        configure("rot-limit", ", max_codes => 2, resend_cooldown => '0'");
        assert_eq!(
            issue_with_wait("rot-limit", "t-rl-1", "4721").0,
            "code_sent"
        );
        assert_eq!(
            issue_with_wait("rot-limit", "t-rl-2", "4721").0,
            "code_sent"
        );
        // as if both had been issued before the rotation
        let previous =
            crate::crypto::Keys::derive(&hex::decode(crate::TEST_PREVIOUS_SECRET).unwrap());
        let old_key = previous.destination_key("whatsapp", "+34 600 123 478");
        Spi::run_with_args(
            "UPDATE otp.challenge SET destination_key = $1 WHERE agent = 'rot-limit'",
            &[old_key.to_vec().into()],
        )
        .unwrap();
        // 7000 shares the phone: only the per-destination limit applies
        assert_eq!(
            issue_with_wait("rot-limit", "t-rl-3", "7000").0,
            "rate_limited"
        );
    }

    /// Dispatcher A's lease runs out and B claims the same message (attempt
    /// 2). A's late report is ignored, and says so; B's report counts.
    #[pg_test]
    fn reports_from_an_expired_lease_are_ignored() {
        fixture();
        issue("t-fence", "4721");
        claim_all();
        let message =
            one::<i64>("SELECT message_id FROM claimed WHERE conversation = 't-fence'").unwrap();
        run(&format!("UPDATE otp.outbox SET available_at = clock_timestamp() - interval '1 second' WHERE id = {message}"));
        claim_all();
        assert_eq!(message_field("t-fence", "attempt").as_deref(), Some("2"));
        // A (attempt 1): a stale retryable failure, a stale expiry
        let applied: Option<bool> = one(&format!(
            "SELECT otp_outbox_failed({message}, 1, 'timeout', true)"
        ));
        assert_eq!(applied, Some(false));
        let applied: Option<bool> = one(&format!("SELECT otp_outbox_expired({message}, 1)"));
        assert_eq!(applied, Some(false));
        assert_eq!(
            message_field("t-fence", "state").as_deref(),
            Some("sending")
        );
        // B (attempt 2): sent
        let applied: Option<bool> =
            one(&format!("SELECT otp_outbox_sent({message}, 2, 'wamid.b')"));
        assert_eq!(applied, Some(true));
        assert_eq!(message_field("t-fence", "state").as_deref(), Some("sent"));
        // and A's stale 'sent' cannot overwrite B's reference
        let applied: Option<bool> =
            one(&format!("SELECT otp_outbox_sent({message}, 1, 'wamid.a')"));
        assert_eq!(applied, Some(false));
        assert_eq!(
            message_field("t-fence", "provider_ref").as_deref(),
            Some("wamid.b")
        );
    }

    /// A provider that echoes the code: reports that arrive after the message
    /// ended (its sealed code already erased) are scrubbed too, the provider
    /// reference included.
    #[pg_test]
    fn late_reports_are_scrubbed_of_the_code() {
        fixture();
        issue("t-late", "4721");
        let code = delivered_code("t-late");
        let message =
            one::<i64>("SELECT message_id FROM claimed WHERE conversation = 't-late'").unwrap();
        // the user starts over while the message is on its way: it is cancelled
        issue("t-late", "4721");
        assert_eq!(
            one::<String>(&format!(
                "SELECT state FROM otp.outbox WHERE id = {message}"
            ))
            .as_deref(),
            Some("cancelled")
        );
        run(&format!(
            "SELECT otp_outbox_failed({message}, 1, 'rejected: your code is {code} (code {code})', false)"
        ));
        run(&format!(
            "SELECT otp_outbox_sent({message}, 1, 'ref-{code}-x')"
        ));
        let stored: Option<String> = one(&format!(
            "SELECT concat_ws(' | ', last_error, provider_ref) FROM otp.outbox WHERE id = {message}"
        ));
        let stored = stored.unwrap();
        assert!(!stored.contains(&code), "{stored}");
        assert!(
            stored.contains("[code]"),
            "the text is kept, the code blanked: {stored}"
        );
    }

    /// A provider that echoes the code spaced out, in fullwidth digits, or at
    /// the very end of a long text: no stored text keeps the code or five of
    /// its digits (the text is cut after blanking, never before).
    #[pg_test]
    fn reports_are_scrubbed_of_the_code_however_it_is_written() {
        fixture();
        issue("t-spaced", "4721");
        let code = delivered_code("t-spaced");
        let message =
            one::<i64>("SELECT message_id FROM claimed WHERE conversation = 't-spaced'").unwrap();
        let (head, tail) = code.split_at(3);
        let fullwidth: String = code
            .chars()
            .map(|d| char::from_u32(0xFF10 + d.to_digit(10).unwrap()).unwrap())
            .collect();
        let padding = "x".repeat(995);
        let texts = [
            format!("param {head} {tail} rejected"),
            format!("param {head}-{tail} rejected"),
            format!("param {fullwidth} rejected"),
            format!("{padding}{code}"),
        ];
        for text in &texts {
            run(&format!(
                "SELECT otp_outbox_failed({message}, 1, '{text}', true)"
            ));
            let stored = one::<String>(&format!(
                "SELECT last_error FROM otp.outbox WHERE id = {message}"
            ))
            .unwrap();
            assert!(
                !stored.contains(&code[..5])
                    && !stored.contains(&code[1..])
                    && !stored.contains(&fullwidth)
                    && !stored.contains(&format!("{head} {tail}"))
                    && !stored.contains(&format!("{head}-{tail}")),
                "{stored:?}"
            );
            // back to sending, for the next report
            run(&format!(
                "UPDATE otp.outbox SET state = 'sending' WHERE id = {message}"
            ));
        }
    }

    /// Delegated configuration: only a superuser or a member of otp_admin may
    /// configure, through otp_configure alone (otp.agent grants nothing),
    /// over sources it owns and whose columns it may read; replacing an
    /// agent takes the same rights over the source it had. System catalogs
    /// are never sources, whoever asks.
    #[pg_test]
    fn configuring_needs_otp_admin_and_the_rights_of_the_source_owner() {
        fixture();
        fixture_sqlstate_helper();
        run("CREATE ROLE otp_test_outsider NOLOGIN; CREATE ROLE otp_test_admin NOLOGIN IN ROLE otp_admin;
             CREATE ROLE otp_test_hr NOLOGIN;
             GRANT EXECUTE ON FUNCTION pg_temp.sqlstate_of(text) TO otp_test_outsider, otp_test_admin;
             CREATE TABLE public.delegated_people (id text PRIMARY KEY, phone text);
             ALTER TABLE public.delegated_people OWNER TO otp_test_hr;");
        let as_role = |role: &str, sql: &str| -> String {
            run(&format!("SET LOCAL ROLE {role}"));
            let state = sqlstate(sql);
            run("RESET ROLE");
            state
        };
        let configure = |agent: &str, source: &str, id: &str, phone: &str| {
            format!(
                "SELECT otp_configure('{agent}', '{source}', '{id}', phone_column => '{phone}')"
            )
        };
        // not a member of otp_admin: not even allowed to call it
        assert_eq!(
            as_role(
                "otp_test_outsider",
                &configure("delegated", "public.delegated_people", "id", "phone")
            ),
            "42501"
        );
        // otp_admin, but not the owner of the table (row-level security of
        // the table would not bind pg_otp's lookups): refused, even when the
        // columns are readable
        run("GRANT SELECT ON public.employees TO otp_test_admin");
        assert_eq!(
            as_role(
                "otp_test_admin",
                &configure("delegated", "public.employees", "employee_no", "whatsapp")
            ),
            "42501"
        );
        // a member of the owning role may
        run("GRANT otp_test_hr TO otp_test_admin");
        assert_eq!(
            as_role(
                "otp_test_admin",
                &configure("delegated", "public.delegated_people", "id", "phone")
            ),
            "ok"
        );
        // ...but may not take over an agent on a source it does not own
        assert_eq!(
            as_role(
                "otp_test_admin",
                &configure("payroll", "public.delegated_people", "id", "phone")
            ),
            "42501"
        );
        // nor write otp.agent other than through otp_configure
        assert_eq!(
            as_role(
                "otp_test_admin",
                "UPDATE otp.agent SET require_otp = false WHERE name = 'payroll'"
            ),
            "42501"
        );
        // catalogs: refused even to a superuser
        assert_eq!(sqlstate("SELECT otp_configure('cat', 'pg_authid', 'rolname', phone_column => 'rolpassword')"), "42809");
        assert_eq!(
            as_role(
                "otp_test_admin",
                &configure("cat", "pg_catalog.pg_class", "relname", "relname")
            ),
            "42809"
        );
        assert_eq!(sqlstate("SELECT otp_configure('cat', 'information_schema.tables', 'table_name', phone_column => 'table_name')"), "42809");
    }

    /// Pointing an agent at another source (or id column) ends its sessions
    /// and pending codes: "4721" of the new source may be someone else, and a
    /// session of the old one must not read the new one's rows.
    #[pg_test]
    fn a_new_source_ends_the_agents_sessions_and_codes() {
        fixture();
        run("CREATE TABLE public.other_people AS SELECT * FROM public.employees");
        issue("t-src-session", "4721");
        let code = delivered_code("t-src-session");
        let session = verify("t-src-session", &code).token.unwrap();
        issue("t-src-pending", "5000");
        run("SELECT otp_configure(agent => 'payroll', source => 'public.other_people', id_column => 'employee_no',
                                  phone_column => 'whatsapp', email_column => 'email',
                                  max_codes => 1000000, resend_cooldown => '0')");
        assert_eq!(use_session(&session), "revoked");
        let pending: Option<String> = one(
            "SELECT state FROM otp.challenge WHERE conversation = 't-src-pending' ORDER BY id DESC LIMIT 1",
        );
        assert_eq!(pending.as_deref(), Some("record_changed"));
        // the same source again changes nothing
        issue("t-src-again", "4721");
        let code = delivered_code("t-src-again");
        let session = verify("t-src-again", &code).token.unwrap();
        run("SELECT otp_configure(agent => 'payroll', source => 'public.other_people', id_column => 'employee_no',
                                  phone_column => 'whatsapp', email_column => 'email', max_attempts => 5,
                                  max_codes => 1000000, resend_cooldown => '0')");
        assert_eq!(use_session(&session), "active");
    }

    // ---- sessions that guard the data ----------------------------------------

    /// session_use's status for a token (it binds the rest of the transaction).
    fn use_session(token: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT status FROM session_use($1)", &[token.into()])
            .unwrap()
            .unwrap()
    }

    fn subject_for(agent: &str) -> Option<String> {
        Spi::get_one_with_args::<String>("SELECT otp_subject($1)", &[agent.into()]).unwrap()
    }

    #[pg_test]
    fn session_use_binds_the_transaction_to_the_person_of_its_agent_only() {
        fixture();
        assert_eq!(
            subject_for("payroll"),
            None,
            "nothing bound before session_use"
        );
        let token = session_for("t-bind");
        assert_eq!(use_session(&token), "active");
        assert_eq!(subject_for("payroll").as_deref(), Some("4721"));
        // another agent's namespace is separate
        assert_eq!(subject_for("benefits"), None);
        configure("benefits", ", require_otp => false");
        let benefits = issue_for("benefits", "t-bind-b", "5000").token.unwrap();
        assert_eq!(use_session(&benefits), "active");
        assert_eq!(subject_for("benefits").as_deref(), Some("5000"));
        assert_eq!(
            subject_for("payroll").as_deref(),
            Some("4721"),
            "two agents in one transaction"
        );
        // an unknown token unbinds every agent: which binding the caller
        // meant to replace cannot be known, so none stays (fail closed)
        assert_eq!(use_session("no-such-token"), "unknown");
        assert_eq!(subject_for("payroll"), None);
        assert_eq!(subject_for("benefits"), None);
        assert_eq!(use_session(&token), "active");
        assert_eq!(use_session(&benefits), "active");
        assert_eq!(subject_for("payroll").as_deref(), Some("4721"));
        // a session that is over unbinds its agent: fail closed
        run(
            "UPDATE otp.session SET idle_expires_at = clock_timestamp() - interval '1 second'
              WHERE conversation = 't-bind'",
        );
        assert_eq!(use_session(&token), "idle_timeout");
        assert_eq!(subject_for("payroll"), None);
        assert_eq!(subject_for("benefits").as_deref(), Some("5000"));
        // no setting can make a binding
        assert_eq!(
            sqlstate("SET otp.subject = '4721'"),
            "42602",
            "otp. is reserved"
        );
        run("SELECT set_config('otp_subject.payroll', '4721', true)");
        assert_eq!(subject_for("payroll"), None);
    }

    #[pg_test]
    fn a_binding_made_in_a_rolled_back_subtransaction_is_gone() {
        fixture();
        let token = session_for("t-bind-sub");
        // PL/pgSQL exception blocks are subtransactions
        run(&format!(
            "DO $$ BEGIN
                 BEGIN
                     PERFORM session_use('{token}');
                     IF otp_subject('payroll') IS DISTINCT FROM '4721' THEN RAISE EXCEPTION 'not bound'; END IF;
                     RAISE EXCEPTION USING ERRCODE = 'P0005';
                 EXCEPTION WHEN SQLSTATE 'P0005' THEN NULL;
                 END;
             END $$"
        ));
        assert_eq!(
            subject_for("payroll"),
            None,
            "rolled back with its subtransaction"
        );
        // one that commits stays, and one made before survives a later rollback
        run(&format!(
            "DO $$ BEGIN
                 BEGIN
                     PERFORM session_use('{token}');
                 END;
                 BEGIN
                     PERFORM 1 / 0;
                 EXCEPTION WHEN division_by_zero THEN NULL;
                 END;
             END $$"
        ));
        assert_eq!(subject_for("payroll").as_deref(), Some("4721"));
    }

    /// The README's policy, on a table large enough for a parallel plan,
    /// read by a role that is not its owner.
    #[pg_test]
    fn a_policy_with_otp_subject_filters_parallel_and_definer_queries() {
        fixture();
        run("CREATE ROLE otp_test_reader NOLOGIN;
             GRANT otp_app TO otp_test_reader;
             CREATE TABLE public.payslips (employee_no text, month int, net numeric);
             INSERT INTO public.payslips SELECT (4000 + n % 2000)::text, n, n FROM generate_series(1, 200000) n;
             ANALYZE public.payslips;
             ALTER TABLE public.payslips ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_payslips ON public.payslips FOR SELECT TO otp_test_reader
                 USING (employee_no = (SELECT otp_subject('payroll')));
             GRANT SELECT ON public.payslips TO otp_test_reader;
             -- an application's SECURITY DEFINER function reads through the binding too
             CREATE FUNCTION public.my_payslip_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER
                 SET search_path = pg_catalog AS 'SELECT count(*) FROM public.payslips';
             ALTER FUNCTION public.my_payslip_count() OWNER TO otp_test_reader;");
        let token = session_for("t-policy");
        run("SET LOCAL ROLE otp_test_reader");
        assert_eq!(
            count("SELECT count(*) FROM public.payslips"),
            0,
            "nothing before session_use"
        );
        assert_eq!(use_session(&token), "active");
        run("SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0;
             SET LOCAL min_parallel_table_scan_size = 0; SET LOCAL max_parallel_workers_per_gather = 2");
        let plan = explain("EXPLAIN (COSTS OFF) SELECT count(*) FROM public.payslips");
        assert!(plan.contains("Gather"), "a parallel plan: {plan}");
        assert_eq!(
            count("SELECT count(*) FROM public.payslips"),
            100,
            "only 4721's rows, in parallel"
        );
        assert_eq!(
            count("SELECT count(*) FROM public.payslips WHERE employee_no = '4722'"),
            0
        );
        assert_eq!(count("SELECT public.my_payslip_count()"), 100);
        run("RESET ROLE");
    }

    #[pg_test]
    fn a_code_does_not_verify_once_its_address_left_the_record() {
        fixture();
        // on the table itself, and through a view
        run("CREATE VIEW public.staff AS SELECT employee_no AS id, whatsapp AS phone, email FROM public.employees");
        configure("changes", "");
        run("SELECT otp_configure(agent => 'changes-view', source => 'public.staff', id_column => 'id',
                                  phone_column => 'phone', email_column => 'email',
                                  max_codes => 1000000, resend_cooldown => '0')");
        for agent in ["changes", "changes-view"] {
            // the phone number changes between issue and verify
            issue_for(agent, "t-chg-phone", "4721");
            let code = delivered_code("t-chg-phone");
            run("UPDATE public.employees SET whatsapp = '+34 699 999 999' WHERE employee_no = '4721'");
            assert_eq!(
                verify_as(agent, "t-chg-phone", &code),
                ("record_changed".into(), None),
                "{agent}"
            );
            assert_eq!(verify_as(agent, "t-chg-phone", &code).0, "no_challenge");
            run("UPDATE public.employees SET whatsapp = '+34 600 123 478' WHERE employee_no = '4721'");
            // formatting changes are not changes: the same number, written differently
            issue_for(agent, "t-chg-format", "4721");
            let code = delivered_code("t-chg-format");
            run("UPDATE public.employees SET whatsapp = '+34600123478' WHERE employee_no = '4721'");
            assert_eq!(
                verify_as(agent, "t-chg-format", &code).0,
                "verified",
                "{agent}"
            );
            run("UPDATE public.employees SET whatsapp = '+34 600 123 478' WHERE employee_no = '4721'");
            // the person leaves the source
            issue_for(agent, "t-chg-gone", "5000");
            let code = delivered_code("t-chg-gone");
            run("UPDATE public.employees SET employee_no = '5000-left' WHERE employee_no = '5000'");
            assert_eq!(
                verify_as(agent, "t-chg-gone", &code).0,
                "record_changed",
                "{agent}"
            );
            run("UPDATE public.employees SET employee_no = '5000' WHERE employee_no = '5000-left'");
        }
        assert!(events("changes", "4721").contains(&"record_changed@t-chg-phone".to_owned()));
        assert_eq!(
            challenge_field("t-chg-gone", "state").as_deref(),
            Some("record_changed")
        );
    }

    #[pg_test]
    fn a_session_ends_when_the_person_or_the_address_leaves_the_record() {
        fixture();
        run("CREATE VIEW public.staff AS SELECT employee_no AS id, whatsapp AS phone, email FROM public.employees");
        run("SELECT otp_configure(agent => 'payroll-view', source => 'public.staff', id_column => 'id',
                                  phone_column => 'phone', email_column => 'email',
                                  max_codes => 1000000, resend_cooldown => '0')");
        // email changed during a session started by an email code (5000 has only email)
        for agent in ["payroll", "payroll-view"] {
            issue_for(agent, "t-sess-mail", "5000");
            let code = delivered_code("t-sess-mail");
            let token: String = Spi::get_one_with_args(
                "SELECT session_token FROM otp_verify($1, 't-sess-mail', $2)",
                &[agent.into(), code.as_str().into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(touch_status(&token), "active");
            run("UPDATE public.employees SET email = 'bo.new@example.com' WHERE employee_no = '5000'");
            assert_eq!(touch_status(&token), "record_changed", "{agent}");
            run("UPDATE public.employees SET email = 'bo@example.com' WHERE employee_no = '5000'");
            assert_eq!(
                touch_status(&token),
                "record_changed",
                "over for good, {agent}"
            );
            assert_eq!(use_session(&token), "record_changed");
            assert_eq!(subject_for(agent), None);
        }
        // the person deleted during a session, also one started without a code
        configure("no-code", ", require_otp => false");
        let token = issue_for("no-code", "t-sess-gone", "7000").token.unwrap();
        assert_eq!(touch_status(&token), "active");
        run("DELETE FROM public.employees WHERE employee_no = '7000'");
        assert_eq!(touch_status(&token), "record_changed");
        assert_eq!(
            events("no-code", "7000").last().map(String::as_str),
            Some("record_changed@t-sess-gone")
        );
        // the session keeps a keyed fingerprint of the address, never the
        // address (looked for as written and as digits only; a bare "600"
        // would also match hex digits and timestamps now and then)
        assert_eq!(
            count("SELECT count(*) FROM otp.session s
                    WHERE s::text LIKE '%example.com%' OR s::text LIKE '%+34 600%' OR s::text LIKE '%34600123478%'"),
            0
        );
    }

    #[pg_test]
    fn a_persons_sessions_are_listed_and_revoked_together() {
        fixture();
        let first = session_for("t-list-1");
        let second = session_for("t-list-2");
        let listed: Option<String> = one(
            "SELECT string_agg(conversation, ',' ORDER BY conversation) FROM otp_sessions('payroll', '4721')",
        );
        assert_eq!(listed.as_deref(), Some("t-list-1,t-list-2"));
        // the listing has no token or hash in it
        let columns: Option<String> = one(
            "SELECT array_to_string(proargnames, ',') FROM pg_proc WHERE proname = 'otp_sessions'",
        );
        let columns = columns.unwrap();
        assert!(
            columns.contains("conversation") && !columns.contains("token"),
            "{columns}"
        );
        assert_eq!(
            one::<i32>("SELECT session_revoke_all('payroll', '4721')"),
            Some(2)
        );
        assert_eq!(touch_status(&first), "revoked");
        assert_eq!(touch_status(&second), "revoked");
        assert_eq!(
            count("SELECT count(*) FROM otp_sessions('payroll', '4721')"),
            0
        );
        assert_eq!(
            one::<i32>("SELECT session_revoke_all('payroll', '4721')"),
            Some(0)
        );
        let revoked = events("payroll", "4721")
            .iter()
            .filter(|e| e.starts_with("session_revoked"))
            .count();
        assert_eq!(revoked, 2);
    }

    #[pg_test]
    fn an_agent_with_an_app_role_refuses_other_callers() {
        fixture();
        fixture_sqlstate_helper();
        run(
            "CREATE ROLE otp_test_hr NOLOGIN; CREATE ROLE otp_test_other NOLOGIN;
             GRANT otp_app TO otp_test_hr, otp_test_other;
             GRANT EXECUTE ON FUNCTION pg_temp.sqlstate_of(text) TO otp_test_hr, otp_test_other;",
        );
        configure(
            "scoped",
            ", app_role => 'otp_test_hr', require_otp => false",
        );
        assert_eq!(sqlstate("SELECT otp_configure('bad', 'public.employees', 'employee_no', 'whatsapp', app_role => 'no_such_role')"), "42704");
        // a member may act for it
        run("SET LOCAL ROLE otp_test_hr");
        let token = issue_for("scoped", "t-scoped", "4721").token.unwrap();
        assert_eq!(touch_status(&token), "active");
        run("RESET ROLE");
        // another caller may not: errors where it names the agent, unknown for tokens
        run("SET LOCAL ROLE otp_test_other");
        for call in [
            "SELECT * FROM otp_issue('scoped', 't-other', '4721')",
            "SELECT * FROM otp_verify('scoped', 't-scoped', '123456')",
            "SELECT * FROM otp_status('scoped', 't-scoped')",
            "SELECT * FROM otp_events('scoped', '4721')",
            "SELECT * FROM otp_sessions('scoped', '4721')",
            "SELECT session_revoke_all('scoped', '4721')",
        ] {
            assert_eq!(sqlstate(call), "42501", "{call}");
        }
        assert_eq!(touch_status(&token), "unknown");
        assert_eq!(use_session(&token), "unknown");
        assert_eq!(subject_for("scoped"), None);
        assert_eq!(
            one::<bool>(&format!("SELECT session_revoke('{token}')")),
            Some(false)
        );
        run("RESET ROLE");
        assert_eq!(
            touch_status(&token),
            "active",
            "the other role's revoke did nothing"
        );
        // agents without an app_role stay open to every member of otp_app
        run("SET LOCAL ROLE otp_test_other");
        assert_eq!(issue("t-open", "4721").status, "code_sent");
        run("RESET ROLE");
    }

    /// A session's fingerprint made under the previous secret moves to the
    /// current one at the next touch; one made under a secret no longer
    /// configured can no longer be checked: the session has expired.
    #[pg_test]
    fn a_touch_during_a_rotation_moves_the_session_to_the_new_secret() {
        fixture();
        let refingerprint =
            |conversation: &str, secret: &str| {
                let keys = crate::crypto::Keys::derive(&hex::decode(secret).unwrap());
                Spi::run_with_args(
                "UPDATE otp.session SET key_id = $2, destination_key = $3 WHERE conversation = $1",
                &[
                    conversation.into(),
                    keys.id.to_vec().into(),
                    keys.destination_key("whatsapp", "+34 600 123 478").to_vec().into(),
                ],
            )
            .unwrap();
            };
        let current = crate::gucs::keys().unwrap().current.id.to_vec();
        let token = session_for("t-rot-session");
        refingerprint("t-rot-session", crate::TEST_PREVIOUS_SECRET);
        assert_eq!(touch_status(&token), "active");
        let key_id: Option<Vec<u8>> =
            one("SELECT key_id FROM otp.session WHERE conversation = 't-rot-session'");
        assert_eq!(key_id, Some(current), "moved to the current secret");
        assert_eq!(touch_status(&token), "active");
        let gone = session_for("t-rot-session-gone");
        refingerprint("t-rot-session-gone", &"ab".repeat(32));
        assert_eq!(touch_status(&gone), "expired");
        assert_eq!(touch_status(&gone), "expired");
    }

    /// The words a named CHECK constraint (of a table or a domain) allows,
    /// as written in its definition (`VALUE = ANY (ARRAY['a'::text,
    /// 'b'::text])`), sorted.
    fn check_words(constraint: &str) -> Vec<String> {
        let definition: String = Spi::get_one_with_args(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
              WHERE connamespace = 'otp'::regnamespace AND contype = 'c' AND conname = $1",
            &[constraint.into()],
        )
        .unwrap()
        .unwrap_or_else(|| panic!("no CHECK constraint named {constraint}"));
        let mut words: Vec<String> = definition
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        words.sort();
        words
    }

    fn sorted(words: impl IntoIterator<Item = &'static str>) -> Vec<String> {
        let mut words: Vec<String> = words.into_iter().map(str::to_owned).collect();
        words.sort();
        words
    }

    /// Each vocabulary is spelled once in Rust, and once in the schema as
    /// a domain: the domain must allow exactly the words of the type (a
    /// word added to one and not the other would fail at run time, on the
    /// first row that uses it), and every column holding the vocabulary
    /// must be of that domain.
    #[pg_test]
    fn the_schema_allows_exactly_the_words_of_the_types() {
        use crate::delivery::MessageState;
        use otp_common::Channel;
        assert_eq!(
            check_words("message_state_words"),
            sorted(MessageState::ALL.map(MessageState::as_str))
        );
        assert_eq!(
            check_words("delivery_state_words"),
            sorted(MessageState::deliveries().map(MessageState::as_str))
        );
        assert_eq!(
            check_words("channel_words"),
            sorted(Channel::ALL.map(Channel::as_str))
        );
        assert_eq!(
            check_words("event_words"),
            sorted(crate::audit::Event::ALL.map(crate::audit::Event::as_str))
        );
        assert_eq!(
            check_words("challenge_state_words"),
            sorted(crate::challenge::state_words())
        );
        for (column, domain) in [
            ("agent.preferred_channel", "otp.channel"),
            ("challenge.channel", "otp.channel"),
            ("outbox.channel", "otp.channel"),
            ("outbox.fallback_channel", "otp.channel"),
            ("session.channel", "otp.channel"),
            ("challenge.state", "otp.challenge_state"),
            ("challenge.delivery", "otp.delivery_state"),
            ("outbox.state", "otp.message_state"),
            ("event.event", "otp.event_word"),
        ] {
            let (table, name) = column.split_once('.').unwrap();
            let found: String = Spi::get_one_with_args(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                  WHERE attrelid = ('otp.' || $1)::regclass AND attname = $2",
                &[table.into(), name.into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(found, domain, "{column}");
        }
        // Open states are exactly those the finished_at and code checks treat
        // as open.
        let open = sorted(
            MessageState::ALL
                .into_iter()
                .filter(|state| !state.is_final())
                .map(MessageState::as_str),
        );
        assert_eq!(check_words("outbox_finished_iff_final"), open);
        let mut holding = check_words("outbox_code_only_while_open");
        holding.dedup();
        assert_eq!(
            holding,
            sorted(
                MessageState::ALL
                    .into_iter()
                    .filter(|state| state.may_hold_code())
                    .map(MessageState::as_str)
            )
        );
    }

    // ---- provider statuses (otp_outbox_status) ---------------------------

    /// A provider's status for `provider_ref`, as a dispatcher relays it.
    fn provider_status(
        provider_ref: &str,
        message_id: Option<i64>,
        status: &str,
        retryable: bool,
    ) -> String {
        Spi::get_one_with_args::<String>(
            "SELECT otp_outbox_status($1, $2, $3, clock_timestamp(), $4, $5)",
            &[
                provider_ref.into(),
                message_id.into(),
                status.into(),
                (status == "failed")
                    .then_some("131026 Message undeliverable")
                    .into(),
                retryable.into(),
            ],
        )
        .unwrap()
        .unwrap()
    }

    /// Issues a code for 4721 (WhatsApp, with an email fallback), has a
    /// dispatcher claim it and report it sent as `provider_ref`; returns the
    /// message id and the code.
    fn sent_on_whatsapp(conversation: &str, provider_ref: &str) -> (i64, String) {
        issue(conversation, "4721");
        let code = delivered_code(conversation);
        let id = one::<i64>(&format!(
            "SELECT max(message_id) FROM claimed WHERE conversation = '{conversation}'"
        ))
        .unwrap();
        report_sent(id, provider_ref);
        (id, code)
    }

    #[pg_test]
    fn provider_statuses_only_move_forward() {
        fixture();
        let (id, _) = sent_on_whatsapp("t-st-fwd", "wamid.fwd");
        // kept for a late fallback while delivery is unconfirmed
        assert!(message_field("t-st-fwd", "code_sealed").is_some());
        assert_eq!(
            provider_status("wamid.fwd", Some(id), "sent", false),
            "ignored"
        );
        assert_eq!(
            provider_status("wamid.fwd", Some(id), "delivered", false),
            "recorded"
        );
        assert_eq!(
            message_field("t-st-fwd", "code_sealed"),
            None,
            "confirmed: code erased"
        );
        assert_eq!(
            challenge_field("t-st-fwd", "delivery").as_deref(),
            Some("delivered")
        );
        assert_eq!(
            provider_status("wamid.fwd", None, "read", false),
            "recorded"
        );
        // late and repeated statuses change nothing
        for late in ["delivered", "sent", "read", "failed"] {
            assert_eq!(
                provider_status("wamid.fwd", Some(id), late, false),
                "ignored",
                "{late}"
            );
        }
        assert_eq!(message_field("t-st-fwd", "state").as_deref(), Some("read"));
        assert_eq!(
            challenge_field("t-st-fwd", "delivery").as_deref(),
            Some("read")
        );
        assert_eq!(
            one::<String>("SELECT string_agg(delivery || '/' || primary_device_only, ',') FROM otp_status('payroll', 't-st-fwd')").as_deref(),
            Some("read/true")
        );
        assert_eq!(
            events("payroll", "4721"),
            [
                "issued@t-st-fwd",
                "delivered@t-st-fwd",
                "received@t-st-fwd",
                "read@t-st-fwd"
            ]
        );
    }

    #[pg_test]
    fn a_failed_delivery_is_never_undone_by_a_late_one() {
        fixture();
        run("UPDATE public.employees SET email = NULL WHERE employee_no = '4721'");
        let (id, _) = sent_on_whatsapp("t-st-fail", "wamid.fail");
        assert_eq!(
            provider_status("wamid.fail", Some(id), "failed", false),
            "recorded"
        );
        assert_eq!(message_field("t-st-fail", "code_sealed"), None);
        for late in ["delivered", "read", "failed", "sent"] {
            assert_eq!(
                provider_status("wamid.fail", Some(id), late, false),
                "ignored",
                "{late}"
            );
        }
        assert_eq!(
            message_field("t-st-fail", "state").as_deref(),
            Some("failed")
        );
        assert_eq!(
            challenge_field("t-st-fail", "delivery").as_deref(),
            Some("failed")
        );
        assert_eq!(
            message_field("t-st-fail", "last_error").as_deref(),
            Some("131026 Message undeliverable")
        );
    }

    /// WhatsApp accepted the message, then said it cannot be delivered: the
    /// same code goes by email, once, and verifies.
    #[pg_test]
    fn a_late_failure_falls_back_to_email_once_with_the_same_code() {
        fixture();
        let (id, code) = sent_on_whatsapp("t-st-fb", "wamid.fb");
        assert_eq!(
            provider_status("wamid.fb", Some(id), "failed", false),
            "fallback"
        );
        assert_eq!(
            challenge_field("t-st-fb", "channel").as_deref(),
            Some("email")
        );
        assert_eq!(
            challenge_field("t-st-fb", "destination_hint").as_deref(),
            Some("a***@example.com")
        );
        assert_eq!(
            challenge_field("t-st-fb", "delivery").as_deref(),
            Some("queued")
        );
        let by_email = one::<String>(
            "SELECT channel || ':' || destination || ':' || code FROM otp_outbox_claim(1000) WHERE conversation = 't-st-fb'",
        );
        assert_eq!(by_email, Some(format!("email:ana@example.com:{code}")));
        // a second failure of the first message triggers nothing more
        assert_eq!(
            provider_status("wamid.fb", Some(id), "failed", false),
            "ignored"
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation = 't-st-fb'"),
            2
        );
        assert_eq!(verify("t-st-fb", &code).status, "verified");
        assert_eq!(
            message_field("t-st-fb", "channel").as_deref(),
            Some("email")
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation = 't-st-fb' AND channel = 'whatsapp' AND code_sealed IS NOT NULL"),
            0
        );
    }

    #[pg_test]
    fn a_failure_after_the_code_expired_is_only_recorded() {
        fixture();
        let (id, _) = sent_on_whatsapp("t-st-late", "wamid.late");
        run("UPDATE otp.outbox SET expires_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-st-late';
             UPDATE otp.challenge SET expires_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-st-late'");
        assert_eq!(
            provider_status("wamid.late", Some(id), "failed", false),
            "recorded"
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.outbox WHERE conversation = 't-st-late'"),
            1
        );
        assert_eq!(
            challenge_field("t-st-late", "channel").as_deref(),
            Some("whatsapp")
        );
    }

    #[pg_test]
    fn a_retryable_late_failure_sends_the_code_again() {
        fixture();
        run("UPDATE public.employees SET email = NULL WHERE employee_no = '4721'");
        let (id, code) = sent_on_whatsapp("t-st-retry", "wamid.retry");
        assert_eq!(
            provider_status("wamid.retry", Some(id), "failed", true),
            "retried"
        );
        assert_eq!(
            message_field("t-st-retry", "state").as_deref(),
            Some("queued")
        );
        assert_eq!(
            challenge_field("t-st-retry", "delivery").as_deref(),
            Some("queued")
        );
        run("UPDATE otp.outbox SET available_at = clock_timestamp() WHERE conversation = 't-st-retry'");
        assert_eq!(
            one::<String>(
                "SELECT code FROM otp_outbox_claim(1000) WHERE conversation = 't-st-retry'"
            ),
            Some(code)
        );
    }

    /// The provider's status may beat the dispatcher's own report of the
    /// send: the echoed message id finds the message, and the report, when
    /// it comes, finds the send recorded.
    #[pg_test]
    fn a_status_before_the_sent_report_is_recorded() {
        fixture();
        issue("t-st-early", "4721");
        delivered_code("t-st-early");
        let id =
            one::<i64>("SELECT max(message_id) FROM claimed WHERE conversation = 't-st-early'")
                .unwrap();
        assert_eq!(
            provider_status("wamid.early", Some(id), "delivered", false),
            "recorded"
        );
        assert_eq!(
            message_field("t-st-early", "state").as_deref(),
            Some("delivered")
        );
        assert_eq!(
            message_field("t-st-early", "provider_ref").as_deref(),
            Some("wamid.early")
        );
        assert_eq!(
            one::<bool>(&format!("SELECT otp_outbox_sent({id}, (SELECT attempt FROM otp.outbox WHERE id = {id}), 'wamid.early')")),
            Some(true)
        );
        assert_eq!(
            message_field("t-st-early", "state").as_deref(),
            Some("delivered")
        );
    }

    #[pg_test]
    fn statuses_for_unknown_or_mismatched_messages_change_nothing() {
        fixture();
        let (id, _) = sent_on_whatsapp("t-st-unk", "wamid.unk");
        assert_eq!(
            provider_status("wamid.nobody", None, "failed", false),
            "unknown"
        );
        assert_eq!(
            provider_status("wamid.nobody", Some(id + 1000), "failed", false),
            "unknown"
        );
        // the echoed id of a message reported under another reference
        assert_eq!(
            provider_status("wamid.other", Some(id), "failed", false),
            "unknown"
        );
        // a decoy's message, never handed to anyone
        configure("st-hidden", ", reveal_unknown => false");
        issue_for("st-hidden", "t-st-decoy", "ghost");
        let decoy =
            one::<i64>("SELECT id FROM otp.outbox WHERE conversation = 't-st-decoy'").unwrap();
        assert_eq!(sweep(), (0, 1));
        assert_eq!(
            provider_status("wamid.decoy", Some(decoy), "failed", false),
            "unknown"
        );
        assert_eq!(message_field("t-st-unk", "state").as_deref(), Some("sent"));
        assert_eq!(
            sqlstate("SELECT otp_outbox_status('wamid.unk', NULL, 'bounced', now(), NULL, false)"),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT otp_outbox_status(NULL, NULL, 'read', now(), NULL, false)"),
            "22004"
        );
    }

    /// A code kept for a late fallback is erased when the challenge ends and
    /// by the sweep once it expired.
    #[pg_test]
    fn kept_codes_are_erased_when_the_challenge_ends_or_expires() {
        fixture();
        let (_, code) = sent_on_whatsapp("t-st-keep", "wamid.keep");
        assert!(message_field("t-st-keep", "code_sealed").is_some());
        assert_eq!(verify("t-st-keep", &code).status, "verified");
        assert_eq!(message_field("t-st-keep", "code_sealed"), None);

        sent_on_whatsapp("t-st-keep2", "wamid.keep2");
        run("UPDATE otp.outbox SET expires_at = clock_timestamp() - interval '1 second' WHERE conversation = 't-st-keep2'");
        sweep();
        assert_eq!(message_field("t-st-keep2", "code_sealed"), None);
        // an email has no later confirmation: its code goes at once
        run("UPDATE public.employees SET whatsapp = NULL WHERE employee_no = '5000'");
        issue("t-st-mail", "5000");
        delivered_code("t-st-mail");
        let id = one::<i64>("SELECT max(message_id) FROM claimed WHERE conversation = 't-st-mail'")
            .unwrap();
        report_sent(id, "smtp-250");
        assert_eq!(message_field("t-st-mail", "code_sealed"), None);
    }

    /// A decoy has no phone for a provider to deliver to, so it never gets
    /// `delivered` or `read`. An agent that hides unknown identifiers must
    /// then not show them for real people either: they would tell real
    /// people from decoys. (The outbox keeps them, for operators.)
    #[pg_test]
    fn a_hiding_agent_shows_no_delivery_confirmations() {
        fixture();
        configure("hidden-confirm", ", reveal_unknown => false");
        let shown = |conversation: &str| -> String {
            one::<String>(&format!(
                "SELECT concat_ws('/', status, delivery) FROM otp_status('hidden-confirm', '{conversation}')"
            ))
            .unwrap()
        };
        issue_for("hidden-confirm", "t-hc-real", "4721");
        issue_for("hidden-confirm", "t-hc-decoy", "8888");
        claim_all();
        let real =
            one::<i64>("SELECT message_id FROM claimed WHERE conversation = 't-hc-real'").unwrap();
        report_sent(real, "wamid.hc");
        assert_eq!(sweep(), (0, 1));
        run(
            "UPDATE otp.outbox SET available_at = clock_timestamp() - interval '1 second'
              WHERE conversation = 't-hc-decoy'",
        );
        assert_eq!(sweep(), (0, 1));
        assert_eq!(
            provider_status("wamid.hc", Some(real), "delivered", false),
            "recorded"
        );
        assert_eq!(
            provider_status("wamid.hc", Some(real), "read", false),
            "recorded"
        );
        assert_eq!(message_field("t-hc-real", "state").as_deref(), Some("read"));
        assert_eq!(shown("t-hc-decoy"), "pending/sent");
        assert_eq!(shown("t-hc-real"), shown("t-hc-decoy"));
        assert_eq!(
            events("hidden-confirm", "4721"),
            ["issued@t-hc-real", "delivered@t-hc-real"]
        );
        assert_eq!(
            events("hidden-confirm", "8888"),
            ["issued@t-hc-decoy", "delivered@t-hc-decoy"]
        );
    }

    /// A provider's reference is kept with the code blanked out, also when
    /// a status records the send before the dispatcher's report, and cut to
    /// a sane length.
    #[pg_test]
    fn a_status_reference_is_blanked_of_the_code_and_cut() {
        fixture();
        issue("t-st-ref", "4721");
        let code = delivered_code("t-st-ref");
        let id = one::<i64>("SELECT max(message_id) FROM claimed WHERE conversation = 't-st-ref'")
            .unwrap();
        let reference = format!("wamid.code-{code}-{}", "x".repeat(5000));
        assert_eq!(
            provider_status(&reference, Some(id), "delivered", false),
            "recorded"
        );
        let stored = message_field("t-st-ref", "provider_ref").unwrap();
        assert!(!stored.contains(&code), "{stored}");
        assert!(stored.chars().count() <= 1000, "{}", stored.len());
    }

    /// A reference of many multi-byte characters (1,000 characters can be
    /// 4,000 bytes, more than an entry of outbox_by_provider_ref may hold)
    /// is cut by bytes, from a report and from a status alike: it is
    /// recorded, where it used to fail the report at every retry while the
    /// same code went out again and again.
    #[pg_test]
    fn a_long_multibyte_reference_is_cut_to_fit_its_index() {
        fixture();
        // Varied, so that PostgreSQL cannot compress the index entry.
        let reference: String = (0..1000u32)
            .map(|i| char::from_u32(0x20000 + i.wrapping_mul(2_654_435_761) % 0xA6D6).unwrap())
            .collect();
        issue("t-wide-ref", "4721");
        delivered_code("t-wide-ref");
        let id =
            one::<i64>("SELECT max(message_id) FROM claimed WHERE conversation = 't-wide-ref'")
                .unwrap();
        let applied: Option<bool> = Spi::get_one_with_args(
            "SELECT otp_outbox_sent($1, 1, $2)",
            &[id.into(), reference.as_str().into()],
        )
        .unwrap();
        assert_eq!(applied, Some(true));
        issue("t-wide-st", "4721");
        delivered_code("t-wide-st");
        let id = one::<i64>("SELECT max(message_id) FROM claimed WHERE conversation = 't-wide-st'")
            .unwrap();
        assert_eq!(
            provider_status(&reference, Some(id), "delivered", false),
            "recorded"
        );
        for conversation in ["t-wide-ref", "t-wide-st"] {
            let stored = message_field(conversation, "provider_ref").unwrap();
            assert!(
                stored.len() <= 512 && reference.starts_with(&stored) && stored.len() > 500,
                "{conversation}: {} bytes",
                stored.len()
            );
        }
    }

    /// A code verified while its message was still being sent is not kept
    /// for a late fallback when the send is reported afterwards.
    #[pg_test]
    fn a_code_verified_before_the_sent_report_is_not_kept() {
        fixture();
        issue("t-st-verified", "4721");
        let code = delivered_code("t-st-verified");
        let id =
            one::<i64>("SELECT max(message_id) FROM claimed WHERE conversation = 't-st-verified'")
                .unwrap();
        assert_eq!(verify("t-st-verified", &code).status, "verified");
        report_sent(id, "wamid.after-verify");
        assert_eq!(
            message_field("t-st-verified", "state").as_deref(),
            Some("sent")
        );
        assert_eq!(message_field("t-st-verified", "code_sealed"), None);
    }

    /// The echoed message id wins over a reference that several messages
    /// share (a provider that reuses ids, an email relay's "250"), and a
    /// status only ever concerns a channel whose provider sends statuses.
    #[pg_test]
    fn statuses_find_the_echoed_message_and_only_confirming_channels() {
        fixture();
        let (first, _) = sent_on_whatsapp("t-st-dup1", "wamid.same");
        let (second, _) = sent_on_whatsapp("t-st-dup2", "wamid.same");
        assert_eq!(
            provider_status("wamid.same", Some(second), "delivered", false),
            "recorded"
        );
        assert_eq!(
            message_field("t-st-dup2", "state").as_deref(),
            Some("delivered")
        );
        assert_eq!(message_field("t-st-dup1", "state").as_deref(), Some("sent"));
        assert!(first < second);
        run("UPDATE public.employees SET whatsapp = NULL WHERE employee_no = '5000'");
        issue("t-st-mail2", "5000");
        delivered_code("t-st-mail2");
        let mail =
            one::<i64>("SELECT max(message_id) FROM claimed WHERE conversation = 't-st-mail2'")
                .unwrap();
        report_sent(mail, "smtp:250");
        assert_eq!(
            provider_status("smtp:250", None, "failed", false),
            "unknown"
        );
        assert_eq!(
            message_field("t-st-mail2", "state").as_deref(),
            Some("sent")
        );
    }

    /// The time a provider gives is the audit event's, within reason: never
    /// before the message was sent, never after now.
    #[pg_test]
    fn a_status_time_cannot_backdate_the_audit_trail() {
        fixture();
        let (id, _) = sent_on_whatsapp("t-st-time", "wamid.time");
        assert_eq!(
            one::<String>(&format!(
                "SELECT otp_outbox_status('wamid.time', {id}, 'delivered', '-infinity', NULL, false)"
            ))
            .as_deref(),
            Some("recorded")
        );
        assert_eq!(
            count("SELECT count(*) FROM otp.event WHERE conversation = 't-st-time' AND event = 'received'
                     AND at >= (SELECT created_at FROM otp.outbox WHERE id = (SELECT max(id) FROM otp.outbox WHERE conversation = 't-st-time'))"),
            1
        );
    }
}
