//! After full flows (issue, delivery reports, wrong guesses, verification,
//! lockout, supersession), no plaintext code may be found in any table, in
//! the server log or in the WAL written meanwhile.
//!
//! The log and WAL are scanned only over the bytes written during the flows,
//! so that numbers written by other tests cannot be mistaken for a code.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use pg_otp_integration::*;

const FLOWS: usize = 12;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// WAL position and the segment file and offset that hold it.
fn wal_position(db: &mut Client) -> (String, u32) {
    let row = db
        .query_one(
            "SELECT file_name, file_offset FROM pg_walfile_name_offset(pg_current_wal_lsn())",
            &[],
        )
        .unwrap();
    (row.get(0), row.get::<_, i32>(1) as u32)
}

/// The WAL bytes between two positions (segments are named in hex order).
fn wal_between(pgdata: &Path, from: &(String, u32), to: &(String, u32)) -> Vec<u8> {
    let mut segments: Vec<String> = std::fs::read_dir(pgdata.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()))
        .filter(|name| name >= &from.0 && name <= &to.0)
        .collect();
    segments.sort();
    assert_eq!(
        segments.first(),
        Some(&from.0),
        "the starting WAL segment must still exist"
    );
    let mut bytes = Vec::new();
    for name in segments {
        let mut file = File::open(pgdata.join("pg_wal").join(&name)).unwrap();
        let start = if name == from.0 { from.1 } else { 0 };
        file.seek(SeekFrom::Start(u64::from(start))).unwrap();
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk).unwrap();
        if name == to.0 {
            chunk.truncate((to.1 - start) as usize);
        }
        bytes.extend(chunk);
    }
    bytes
}

/// Every text-like and bytea value in every table of the database, as bytes
/// (bytea raw, not hex, so hashes cannot spell a code by chance).
fn every_table_value(db: &mut Client) -> Vec<u8> {
    let columns = db
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), quote_ident(a.attname), t.typname = 'bytea'
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_type t ON t.oid = a.atttypid
              WHERE c.relkind IN ('r', 'p', 'm')
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
                -- strings, and user-defined types such as bytea and jsonb
                AND t.typcategory IN ('S', 'U')",
            &[],
        )
        .unwrap();
    assert!(
        columns.len() >= 10,
        "expected to find the otp.* columns, found {}",
        columns.len()
    );
    let mut all = Vec::new();
    for column in columns {
        let (table, name, is_bytea): (String, String, bool) =
            (column.get(0), column.get(1), column.get(2));
        let sql = if is_bytea {
            format!("SELECT {name} FROM {table} WHERE {name} IS NOT NULL")
        } else {
            format!("SELECT convert_to({name}::text, 'UTF8') FROM {table} WHERE {name} IS NOT NULL")
        };
        for row in db.query(&sql, &[]).unwrap() {
            all.extend(row.get::<_, Vec<u8>>(0));
            all.push(0);
        }
    }
    all
}

#[test]
fn no_plaintext_code_in_tables_server_log_or_wal() {
    let log_path = env("PG_OTP_TEST_LOG");
    let pgdata = env("PG_OTP_TEST_PGDATA");
    let mut db = superuser();
    let mut app = connect(APP);
    let mut sender = connect(SENDER);

    let log_start = std::fs::metadata(&log_path).unwrap().len();
    // A checkpoint (ours below, or one that WAL written by earlier tests
    // triggers) would remove segments the scan still needs; a temporary slot
    // keeps them until this session ends.
    db.batch_execute(
        "SELECT pg_create_physical_replication_slot('no_plaintext_scan', immediately_reserve => true, temporary => true)",
    )
    .unwrap();
    let wal_start = wal_position(&mut db);

    let mut codes = Vec::new();
    for flow in 0..FLOWS {
        if flow == FLOWS / 2 {
            // The flows span two WAL segments, so the scan reads across a
            // segment boundary, and the CHECKPOINT below may retire the first.
            db.batch_execute("SELECT pg_switch_wal()").unwrap();
        }
        let conversation = conversation(&format!("plain-{flow}"));
        assert_eq!(issue(&mut app, &conversation), "code_sent");
        let (message_id, attempt, code): (i64, i32, String) = {
            let rows = sender
                .query(
                    "SELECT message_id, conversation, code, attempt FROM otp_outbox_claim(1000)",
                    &[],
                )
                .unwrap();
            let row = rows
                .iter()
                .find(|r| r.get::<_, String>(1) == conversation)
                .expect("claimed");
            (row.get(0), row.get(3), row.get(2))
        };
        codes.push(code.clone());
        match flow % 4 {
            // a provider echoing the code in its message reference
            0 => sender
                .execute(
                    "SELECT otp_outbox_sent($1, $2, $3)",
                    &[&message_id, &attempt, &format!("wamid.{code}")],
                )
                .map(drop)
                .unwrap(),
            // ... and in its error text
            1 => sender
                .execute(
                    "SELECT otp_outbox_failed($1, $2, $3, true)",
                    &[&message_id, &attempt, &format!("echo: {code}")],
                )
                .map(drop)
                .unwrap(),
            2 => sender
                .execute(
                    "SELECT otp_outbox_failed($1, $2, $3, false)",
                    &[&message_id, &attempt, &format!("code {code} refused")],
                )
                .map(drop)
                .unwrap(),
            _ => {}
        }
        let wrong = other_code(&code, flow as u32);
        let status: String = app
            .query_one(
                "SELECT status FROM otp_verify($1, $2, $3)",
                &[&AGENT, &conversation, &wrong],
            )
            .unwrap()
            .get(0);
        assert_eq!(status, "incorrect");
        if flow % 3 == 0 {
            // supersede: a second code for the same conversation, never verified
            assert_eq!(issue(&mut app, &conversation), "code_sent");
            codes.push(claim_code(&mut sender, &conversation));
        } else {
            let row = app
                .query_one(
                    "SELECT status, session_token FROM otp_verify($1, $2, $3)",
                    &[&AGENT, &conversation, &code],
                )
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "verified");
            let token: String = row.get(1);
            let touched: String = app
                .query_one("SELECT status FROM session_touch($1)", &[&token])
                .unwrap()
                .get(0);
            assert_eq!(touched, "active");
        }
        // Late reports, after the message ended (its sealed code is gone):
        // the provider echoes the code again.
        sender
            .execute(
                "SELECT otp_outbox_failed($1, $2, $3, false)",
                &[&message_id, &attempt, &format!("late: {code} bounced")],
            )
            .unwrap();
        sender
            .execute(
                "SELECT otp_outbox_sent($1, $2, $3)",
                &[&message_id, &attempt, &format!("late-ref-{code}")],
            )
            .unwrap();
    }
    db.batch_execute("CHECKPOINT").unwrap();
    let wal_end = wal_position(&mut db);

    let tables = every_table_value(&mut db);
    let mut log = Vec::new();
    let mut log_file = File::open(&log_path).unwrap();
    log_file.seek(SeekFrom::Start(log_start)).unwrap();
    log_file.read_to_end(&mut log).unwrap();
    let wal = wal_between(Path::new(&pgdata), &wal_start, &wal_end);
    assert!(
        wal.len() > 10_000,
        "the flows must have written WAL ({} bytes read)",
        wal.len()
    );
    // The scan can fail: the claimed codes really are in memory, and the
    // table dump really contains the conversations the flows wrote.
    assert!(contains(&tables, b"plain-0-"));
    assert!(contains(&wal, b"plain-0-"));

    for code in &codes {
        assert_eq!(code.len(), 6);
        assert!(!contains(&tables, code.as_bytes()), "code found in a table");
        assert!(
            !contains(&log, code.as_bytes()),
            "code found in the server log"
        );
        assert!(!contains(&wal, code.as_bytes()), "code found in the WAL");
    }
}
