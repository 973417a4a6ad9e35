//! Upgrading from every release: a database with an earlier pg_otp (its
//! frozen install script in sql/released/, which scripts/test.sh installs
//! next to the current version) and work in flight runs on the current
//! library, as it does between the restart and the update, then is updated
//! with ALTER EXTENSION UPDATE. Codes issued before keep working, queued
//! messages are still delivered, sessions stay active, and the updated
//! schema is exactly the schema a fresh CREATE EXTENSION makes.

use pg_otp_integration::*;

#[test]
fn update_from_0_1_0() {
    update_from("0.1.0", "pg_otp_upgraded_010");
}

#[test]
fn update_from_0_2_0() {
    update_from("0.2.0", "pg_otp_upgraded_020");
}

#[test]
fn update_from_0_3_0() {
    update_from("0.3.0", "pg_otp_upgraded_030");
}

/// Everything an install of pg_otp consists of, as sorted lines of text
/// without OIDs: tables and their columns, constraints, indexes, triggers,
/// privileges, storage options, and the extension's functions with their settings.
fn schema_fingerprint(db: &mut Client) -> Vec<String> {
    let rows = db
        .query(
            "SELECT 'column ' || c.relname || '.' || a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
                    || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                    || coalesce(' default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
                    || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE n.nspname = 'otp' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'constraint ' || c.relname || ' ' || pg_catalog.pg_get_constraintdef(k.oid)
               FROM pg_catalog.pg_constraint k
               JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'otp'
             UNION ALL
             SELECT 'domain ' || t.typname || ' ' || pg_catalog.format_type(t.typbasetype, t.typtypmod)
                    || ' owner ' || t.typowner::regrole::text || ' acl ' || coalesce(t.typacl::text, '-')
                    || coalesce(' ' || k.conname || ' ' || pg_catalog.pg_get_constraintdef(k.oid), '')
               FROM pg_catalog.pg_type t
               JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
               LEFT JOIN pg_catalog.pg_constraint k ON k.contypid = t.oid
              WHERE n.nspname = 'otp' AND t.typtype = 'd'
             UNION ALL
             SELECT 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid)
               FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'otp'
             UNION ALL
             SELECT 'trigger ' || pg_catalog.pg_get_triggerdef(t.oid)
               FROM pg_catalog.pg_trigger t
               JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'otp' AND NOT t.tgisinternal
             UNION ALL
             SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' owner ' || c.relowner::regrole::text
                    || ' acl ' || coalesce(c.relacl::text, '-')
                    || ' options ' || coalesce(c.reloptions::text, '-')
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'otp'
             UNION ALL
             SELECT 'function ' || p.oid::regprocedure::text || ' owner ' || p.proowner::regrole::text
                    || ' acl ' || coalesce(p.proacl::text, '-')
                    || ' ' || pg_catalog.pg_get_functiondef(p.oid)
               FROM pg_catalog.pg_depend dep
               JOIN pg_catalog.pg_extension e ON e.oid = dep.refobjid AND e.extname = 'pg_otp'
               JOIN pg_catalog.pg_proc p ON p.oid = dep.objid
              WHERE dep.classid = 'pg_catalog.pg_proc'::regclass AND dep.deptype = 'e'
             UNION ALL
             SELECT 'schema otp owner ' || nspowner::regrole::text || ' acl ' || coalesce(nspacl::text, '-')
               FROM pg_catalog.pg_namespace WHERE nspname = 'otp'
             ORDER BY 1",
            &[],
        )
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

fn extension_version(db: &mut Client) -> String {
    db.query_one(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_otp'",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Installs `version` (None: the default) with a people table and an agent.
fn install(db: &mut Client, version: Option<&str>) {
    let version = version.map_or(String::new(), |v| format!(" VERSION '{v}'"));
    db.batch_execute(&format!(
        "CREATE EXTENSION pg_otp{version};
         CREATE TABLE people (id text PRIMARY KEY, phone text, email text);
         INSERT INTO people VALUES ('p1', '+34 600 12 34 78', NULL), ('p2', NULL, 'p.two@example.com');
         SELECT otp_configure(agent => 'up', source => 'people', id_column => 'id',
                              phone_column => 'phone', email_column => 'email',
                              max_codes => 1000, resend_cooldown => '0');"
    ))
    .unwrap();
}

fn issue_for(db: &mut Client, conversation: &str, person: &str) {
    let status: String = db
        .query_one(
            "SELECT status FROM otp_issue('up', $1, $2)",
            &[&conversation, &person],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "code_sent", "{conversation}");
}

/// Claims every due message; returns (conversation, message id, code).
fn claim_all(db: &mut Client) -> Vec<(String, i64, String)> {
    db.query(
        "SELECT conversation, message_id, code FROM otp_outbox_claim(batch_size => 100)",
        &[],
    )
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

fn verify(db: &mut Client, conversation: &str, code: &str) -> (String, Option<String>) {
    let row = db
        .query_one(
            "SELECT status, session_token FROM otp_verify('up', $1, $2)",
            &[&conversation, &code],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// Work in flight under `old`, the update, and the schema compared with a
/// fresh install's.
fn update_from(old: &str, database: &str) {
    let mut db = fresh_database(database);
    install(&mut db, Some(old));
    assert_eq!(extension_version(&mut db), old);

    // Work in flight under the old schema: a code whose message was already sent, a
    // code whose message is still queued, and an active session.
    issue_for(&mut db, "sent-before", "p1");
    issue_for(&mut db, "session-before", "p2");
    let claimed = claim_all(&mut db);
    assert_eq!(claimed.len(), 2, "both messages claimed: {claimed:?}");
    // Reports name the claim's attempt from 0.3.0 on.
    let report = if matches!(old, "0.1.0" | "0.2.0") {
        "SELECT otp_outbox_sent($1, 'before')"
    } else {
        "SELECT otp_outbox_sent($1, (SELECT attempt FROM otp.outbox WHERE id = $1), 'before')"
    };
    for (_, message_id, _) in &claimed {
        db.execute(report, &[message_id]).unwrap();
    }
    let code_of = |conversation: &str| {
        claimed
            .iter()
            .find(|(c, _, _)| c == conversation)
            .map(|(_, _, code)| code.clone())
            .unwrap()
    };
    let (status, token) = verify(&mut db, "session-before", &code_of("session-before"));
    assert_eq!(status, "verified");
    let token = token.expect("a session token");
    issue_for(&mut db, "queued-before", "p1");
    // Rejected guesses count under the old schema and keep counting after the update.
    let wrong = other_code(&code_of("sent-before"), 7);
    assert_eq!(verify(&mut db, "sent-before", &wrong).0, "incorrect");

    let files = |db: &mut Client| -> Vec<(String, u32)> {
        db.query(
            "SELECT c.relname::text, c.relfilenode::oid FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'otp'::regnamespace AND c.relkind = 'r'
                AND c.relname !~ '^event(_[0-9]{2})?$' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
    };
    // Events with times pg_otp never writes, but a superuser may have:
    // before 1970 and infinite. The update copies them too.
    db.batch_execute(
        "INSERT INTO otp.event (at, agent, event)
         VALUES ('1969-12-25 00:00:00+00', 'up', 'issued'), ('infinity', 'up', 'issued'), ('-infinity', 'up', 'issued')",
    )
    .unwrap();
    let files_before = files(&mut db);
    let events = |db: &mut Client| -> (i64, Option<i64>, String) {
        let row = db
            .query_one(
                "SELECT count(*), max(id), string_agg(event || ' ' || at::text, ', ' ORDER BY id) FROM otp.event",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let events_before = events(&mut db);
    assert!(events_before.0 >= 5, "{events_before:?}");

    db.batch_execute("ALTER EXTENSION pg_otp UPDATE").unwrap();
    let new_version = extension_version(&mut db);
    assert_ne!(new_version, old, "ALTER EXTENSION UPDATE did nothing");
    if old == "0.3.0" {
        // The update from the previous release rewrites no table (the
        // columns that became domains included): the rows stay where they
        // are, read once to check the domains' constraints.
        assert_eq!(files(&mut db), files_before, "a table was rewritten");
    }
    // The audit trail, partitioned from 0.4.0 on, keeps every event, its id,
    // and each in its week's partition; new events take ids after the old.
    assert_eq!(events(&mut db), events_before);
    let misplaced: i64 = db
        .query_one(
            "SELECT count(*) FROM otp.event
              WHERE slot NOT IN (otp.event_slot(at), otp.event_slot(at + interval '1 minute'))
                 OR tableoid::regclass::text <> 'otp.event_' || lpad(slot::text, 2, '0')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(misplaced, 0);

    // The session is still active.
    let touched: String = db
        .query_one("SELECT status FROM session_touch($1)", &[&token])
        .unwrap()
        .get(0);
    assert_eq!(touched, "active");
    // The message queued before the update is delivered, and its code verifies.
    let queued = claim_all(&mut db);
    assert_eq!(
        queued
            .iter()
            .map(|(c, _, _)| c.as_str())
            .collect::<Vec<_>>(),
        ["queued-before"]
    );
    assert_eq!(verify(&mut db, "queued-before", &queued[0].2).0, "verified");
    let newer: i64 = db
        .query_one(
            "SELECT count(*) FROM otp.event WHERE conversation = 'queued-before' AND id > $1",
            &[&events_before.1.unwrap()],
        )
        .unwrap()
        .get(0);
    assert!(
        newer >= 2,
        "the events written after the update follow the old ids"
    );
    // The code sent before still has its attempts counted, and verifies.
    let (status, _) = verify(
        &mut db,
        "sent-before",
        &other_code(&code_of("sent-before"), 8),
    );
    assert_eq!(status, "incorrect");
    let remaining: i32 = db
        .query_one(
            "SELECT attempts_remaining FROM otp_status('up', 'sent-before')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        remaining, 1,
        "two wrong guesses of three, one on each version"
    );
    assert_eq!(
        verify(&mut db, "sent-before", &code_of("sent-before")).0,
        "verified"
    );

    // The updated schema is the schema of a fresh install of the new version.
    // (one per test: the tests run in parallel)
    let mut fresh = fresh_database(&format!("{database}_fresh"));
    install(&mut fresh, None);
    assert_eq!(extension_version(&mut fresh), new_version);
    let upgraded = schema_fingerprint(&mut db);
    let expected = schema_fingerprint(&mut fresh);
    assert!(upgraded.len() > 50, "the fingerprint sees the schema");
    let missing: Vec<_> = expected.iter().filter(|l| !upgraded.contains(l)).collect();
    let extra: Vec<_> = upgraded.iter().filter(|l| !expected.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after ALTER EXTENSION UPDATE the schema differs from a fresh install\n\
         missing: {missing:#?}\nunexpected: {extra:#?}"
    );
}
