//! PostgreSQL stopped in immediate mode (a crash: no shutdown checkpoint) in
//! the middle of issue/verify load, then restarted. What committed survives,
//! and the invariants hold: no session without a verified challenge, no
//! verified challenge without its session, no code without its message, one
//! pending code per conversation. Runs in its own test binary: it stops the
//! whole cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pg_otp_integration::*;

/// Runs one flow after another until the server goes away; records each
/// conversation whose otp_issue the client saw succeed (so it committed).
fn load(worker: usize, stop: &AtomicBool, committed: &Mutex<Vec<String>>) {
    let Ok(mut app) = std::panic::catch_unwind(|| connect(APP)) else {
        return;
    };
    let Ok(mut sender) = std::panic::catch_unwind(|| connect(SENDER)) else {
        return;
    };
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let conversation = format!("crash-{worker}-{n}-{}", std::process::id());
        match app.query_one(
            "SELECT status FROM otp_issue('it', $1, 'p1')",
            &[&conversation],
        ) {
            Ok(row) if row.get::<_, String>(0) == "code_sent" => {
                committed.lock().unwrap().push(conversation.clone())
            }
            Ok(_) => {}
            Err(_) => return, // the server is gone
        }
        let Ok(rows) = sender.query("SELECT conversation, code FROM otp_outbox_claim(100)", &[])
        else {
            return;
        };
        for row in rows {
            let (conversation, code): (String, String) = (row.get(0), row.get(1));
            let guess = if n % 3 == 0 {
                other_code(&code, 1)
            } else {
                code
            };
            if app
                .query_one(
                    "SELECT status FROM otp_verify('it', $1, $2)",
                    &[&conversation, &guess],
                )
                .is_err()
            {
                return;
            }
        }
    }
}

#[test]
fn an_immediate_stop_under_load_loses_nothing_committed_and_breaks_no_invariant() {
    drop(superuser()); // the fixture exists before the load starts
    let stop = AtomicBool::new(false);
    let committed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let (stop, committed) = (&stop, &committed);
            scope.spawn(move || load(worker, stop, committed));
        }
        // Let the load get going, then crash the server under it.
        wait_until("some flows to commit", Duration::from_secs(30), || {
            committed.lock().unwrap().len() >= 40
        });
        pg_ctl(&["-m", "immediate", "stop"]);
        stop.store(true, Ordering::Relaxed);
    });
    pg_ctl(&["start"]);

    let mut db = superuser();
    let committed = committed.into_inner().unwrap();
    let found: i64 = db
        .query_one(
            "SELECT count(DISTINCT conversation) FROM otp.challenge WHERE conversation = ANY ($1)",
            &[&committed],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        committed.len(),
        "every code the clients saw sent survived the crash"
    );

    let broken = [
        (
            "sessions without a verified challenge",
            "SELECT count(*) FROM otp.session s WHERE s.challenge_id IS NOT NULL AND NOT EXISTS
                 (SELECT FROM otp.challenge c WHERE c.id = s.challenge_id AND c.state = 'verified')",
        ),
        (
            "verified challenges without a session",
            "SELECT count(*) FROM otp.challenge c WHERE c.state = 'verified' AND NOT EXISTS
                 (SELECT FROM otp.session s WHERE s.challenge_id = c.id)",
        ),
        (
            "codes without their message",
            "SELECT count(*) FROM otp.challenge c WHERE NOT c.decoy AND NOT EXISTS
                 (SELECT FROM otp.outbox o WHERE o.challenge_id = c.id)",
        ),
        (
            "conversations with two pending codes",
            "SELECT count(*) FROM (SELECT FROM otp.challenge WHERE state = 'pending'
                                    GROUP BY agent, conversation HAVING count(*) > 1) twice",
        ),
        (
            // Waiting or being sent, a message holds its code; once `sent`,
            // only while its provider's confirmation may still be awaited
            // and its challenge is pending (a late fallback); never after.
            // (The whole cluster's messages: other tests leave some.)
            "messages holding a code they may no longer hold",
            "SELECT count(*) FROM otp.outbox o
              WHERE o.code_sealed IS NOT NULL
                AND (o.state NOT IN ('queued', 'sending', 'sent')
                     OR (o.state = 'sent' AND NOT EXISTS
                           (SELECT FROM otp.challenge c WHERE c.id = o.challenge_id AND c.state = 'pending')))",
        ),
    ];
    for (what, sql) in broken {
        let n: i64 = db.query_one(sql, &[]).unwrap().get(0);
        assert_eq!(n, 0, "{what}: {n}");
    }
    // And the server works as before.
    let mut app = connect(APP);
    assert_eq!(issue(&mut app, &conversation("after-crash")), "code_sent");
}
