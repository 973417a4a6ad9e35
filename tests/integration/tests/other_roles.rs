//! Other login roles on the cluster, with no pg_otp rights, and some with
//! CREATE on `public` (not the default since PostgreSQL 15, but common):
//! nothing they can do reaches pg_otp's guarantees.

use std::time::Duration;

use pg_otp_integration::*;

/// A login role with no pg_otp rights at all.
const PLAIN: &str = "it_plain";

fn plain_role(db: &mut Client) {
    db.batch_execute(&format!(
        // Tests run in parallel: another may create the role between the
        // check and the CREATE, which is not a failure.
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PLAIN}') THEN CREATE ROLE {PLAIN} LOGIN; END IF;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$"
    ))
    .unwrap();
}

/// 0.2.0 serialised code issue with advisory locks whose keys anyone could
/// compute; a role with no rights held them and otp_issue for that person
/// waited (here: failed with a lock timeout). pg_otp's locks are now out of
/// reach of SQL.
#[test]
fn advisory_locks_of_another_role_do_not_block_code_issue() {
    let mut db = superuser();
    plain_role(&mut db);
    let person = new_person(&mut db, "blocked");
    let conversation = conversation("blocked");
    let mut plain = connect(PLAIN);
    plain
        .execute(
            "SELECT pg_advisory_lock(hashtext('pg_otp:' || $1), hashtext($2)),
                    pg_advisory_lock(hashtext('pg_otp:subject:' || $1), hashtext($3))",
            &[&AGENT, &conversation, &person],
        )
        .unwrap();
    let mut app = connect(APP);
    app.batch_execute("SET lock_timeout = '2s'").unwrap();
    let status: String = app
        .query_one(
            "SELECT status FROM otp_issue($1, $2, $3)",
            &[&AGENT, &conversation, &person],
        )
        .expect("otp_issue must not wait for another role's advisory locks")
        .get(0);
    assert_eq!(status, "code_sent");
    plain
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .unwrap();
}

/// Removes what a test planted in `public`, even when it failed.
struct Planted<'a> {
    database: &'a str,
    drop_sql: &'a str,
}

impl Drop for Planted<'_> {
    fn drop(&mut self) {
        let mut db = connect_to("postgres", self.database);
        db.batch_execute(self.drop_sql).unwrap();
        db.batch_execute(&format!("REVOKE CREATE ON SCHEMA public FROM {PLAIN}"))
            .unwrap();
    }
}

/// The purge worker (otp.purge_database = 'postgres' in the test cluster)
/// called `otp_purge()` by name; an overload with defaults planted in
/// `public` made that call ambiguous and purging stopped.
#[test]
fn an_overload_planted_in_public_does_not_stop_the_purge_worker() {
    let mut admin = connect_to("postgres", "postgres");
    plain_role(&mut admin);
    admin
        .batch_execute(&format!(
            "CREATE EXTENSION IF NOT EXISTS pg_otp;
             GRANT CREATE ON SCHEMA public TO {PLAIN};"
        ))
        .unwrap();
    let _planted = Planted {
        database: "postgres",
        drop_sql: "DROP FUNCTION IF EXISTS public.otp_purge(integer)",
    };
    connect_to(PLAIN, "postgres")
        .batch_execute(
            "CREATE FUNCTION public.otp_purge(planted integer DEFAULT 0) RETURNS void
                 LANGUAGE sql AS 'SELECT NULL'",
        )
        .unwrap();
    // An audit event older than any retention: the next pass deletes it.
    admin
        .batch_execute(
            "INSERT INTO otp.event (at, slot, agent, event)
             VALUES (now() - interval '2 years', otp.event_slot(now() - interval '2 years'), 'worker-probe', 'issued')",
        )
        .unwrap();
    wait_until(
        "the purge worker to delete the old event",
        Duration::from_secs(60),
        || {
            admin
                .query_one(
                    "SELECT count(*) FROM otp.event WHERE agent = 'worker-probe'",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
                == 0
        },
    );
}

/// An application that binds varchar parameters (as many drivers do) is
/// redirected by an overload `otp_verify(varchar, varchar, varchar)` planted
/// in `public` when it calls the function by name alone; the call the README
/// prescribes, with text-typed arguments, always reaches pg_otp.
#[test]
fn the_documented_call_form_is_not_captured_by_an_overload_in_public() {
    let mut db = superuser();
    plain_role(&mut db);
    db.batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {PLAIN}"))
        .unwrap();
    let _planted = Planted {
        database: DATABASE,
        drop_sql: "DROP FUNCTION IF EXISTS public.otp_verify(varchar, varchar, varchar);
                   DROP TABLE IF EXISTS public.stolen",
    };
    connect(PLAIN)
        .batch_execute(&format!(
            "CREATE TABLE public.stolen (code text);
             GRANT INSERT ON public.stolen TO PUBLIC;
             CREATE FUNCTION public.otp_verify(agent varchar, conversation varchar, code varchar)
                 RETURNS TABLE(status text, attempts_remaining int, session_token text, subject text)
                 LANGUAGE sql SECURITY DEFINER AS $$
                     INSERT INTO public.stolen VALUES (code);
                     SELECT 'incorrect'::text, 2, NULL::text, NULL::text
                 $$;
             GRANT EXECUTE ON FUNCTION public.otp_verify(varchar, varchar, varchar) TO {APP};"
        ))
        .unwrap();
    let mut app = connect(APP);
    let conversation = conversation("captured");
    assert_eq!(issue(&mut app, &conversation), "code_sent");
    let varchar = [postgres::types::Type::VARCHAR; 3];
    let stolen = |db: &mut Client| -> i64 {
        db.query_one("SELECT count(*) FROM public.stolen", &[])
            .unwrap()
            .get(0)
    };

    // By name alone, with varchar parameters: the planted function answers.
    let by_name = app
        .prepare_typed("SELECT status FROM otp_verify($1, $2, $3)", &varchar)
        .unwrap();
    app.query_one(&by_name, &[&AGENT, &conversation, &"123456"])
        .unwrap();
    assert_eq!(
        stolen(&mut db),
        1,
        "the attack this test guards against works"
    );

    // As the README says: schema-qualified, arguments cast to text.
    let documented = app
        .prepare_typed(
            "SELECT status FROM public.otp_verify($1::text, $2::text, $3::text)",
            &varchar,
        )
        .unwrap();
    let status: String = app
        .query_one(&documented, &[&AGENT, &conversation, &"123456"])
        .unwrap()
        .get(0);
    assert_eq!(
        stolen(&mut db),
        1,
        "the documented call reached the planted function"
    );
    let remaining: Option<i32> = db
        .query_one(
            "SELECT attempts_remaining FROM otp_status($1, $2)",
            &[&AGENT, &conversation],
        )
        .unwrap()
        .get(0);
    assert!(
        status == "incorrect" && remaining == Some(2),
        "pg_otp answered: {status} {remaining:?}"
    );
}

/// Operators a role with CREATE on `public` plants for the comparisons an
/// install script makes without an exact match in pg_catalog (oid =
/// regclass, name = unknown, "char" = unknown). Each records who called it.
const PLANTED_OPERATORS: &str = "
    CREATE TABLE public.called (by text);
    GRANT INSERT ON public.called TO PUBLIC;
    CREATE FUNCTION public.eq_oid_regclass(oid, regclass) RETURNS boolean LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO public.called VALUES (current_user); RETURN $1 = $2::oid; END $$;
    CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.eq_oid_regclass);
    CREATE FUNCTION public.eq_name_text(name, text) RETURNS boolean LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO public.called VALUES (current_user); RETURN $1::text = $2; END $$;
    CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = public.eq_name_text);
    CREATE FUNCTION public.eq_char_text(\"char\", text) RETURNS boolean LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO public.called VALUES (current_user); RETURN $1::text = $2; END $$;
    CREATE OPERATOR public.= (LEFTARG = \"char\", RIGHTARG = text, FUNCTION = public.eq_char_text);
    -- closer matches than pg_catalog's for arithmetic on a time's epoch
    CREATE FUNCTION public.div_numeric_int(numeric, integer) RETURNS numeric LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO public.called VALUES (current_user); RETURN $1 / $2::numeric; END $$;
    CREATE OPERATOR public./ (LEFTARG = numeric, RIGHTARG = integer, FUNCTION = public.div_numeric_int);
    CREATE FUNCTION public.mod_bigint_int(bigint, integer) RETURNS bigint LANGUAGE plpgsql AS
        $$ BEGIN INSERT INTO public.called VALUES (current_user); RETURN $1 % $2::bigint; END $$;
    CREATE OPERATOR public.% (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = public.mod_bigint_int);";

/// What runs pg_otp's own SQL functions (the audit trail's week), after
/// the script: an operator the script let in would be called here.
const USE_THE_SCHEMA: &str = "SELECT otp.event_slot(now())";

/// A new database where `PLAIN` may create objects in `public`.
fn open_database(name: &str) -> Client {
    plain_role(&mut connect_to("postgres", "postgres"));
    let mut db = fresh_database(name);
    db.batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {PLAIN}"))
        .unwrap();
    db
}

fn called(db: &mut Client) -> Vec<String> {
    db.query("SELECT by FROM public.called", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// CREATE EXTENSION runs its script as the superuser with search_path set
/// to the target schema; 0.2.0's DO blocks compared oid with regclass and so
/// called an operator planted in `public` as the superuser.
#[test]
fn operators_planted_in_the_target_schema_are_never_called_by_the_install_script() {
    let mut db = open_database("pg_otp_planted_install");
    connect_to(PLAIN, "pg_otp_planted_install")
        .batch_execute(PLANTED_OPERATORS)
        .unwrap();
    db.batch_execute("CREATE EXTENSION pg_otp").unwrap();
    db.batch_execute(USE_THE_SCHEMA).unwrap();
    assert_eq!(called(&mut db), Vec::<String>::new());
}

#[test]
fn operators_planted_in_the_target_schema_are_never_called_by_the_update_script() {
    let mut db = open_database("pg_otp_planted_update");
    db.batch_execute("CREATE EXTENSION pg_otp VERSION '0.2.0'")
        .unwrap();
    connect_to(PLAIN, "pg_otp_planted_update")
        .batch_execute(PLANTED_OPERATORS)
        .unwrap();
    db.batch_execute("ALTER EXTENSION pg_otp UPDATE").unwrap();
    db.batch_execute(USE_THE_SCHEMA).unwrap();
    assert_eq!(called(&mut db), Vec::<String>::new());
}
