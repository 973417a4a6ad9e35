//! PostgreSQL's notification queue is the cluster's, and any login role can
//! fill it: LISTEN, stay in a transaction (a listener reads nothing while in
//! one, and the queue keeps everything it has not read), and notify. Once
//! it is full every NOTIFY fails its transaction with 54000. Issuing a code
//! must not: pg_otp does not notify while the queue is half full or more
//! when the transaction commits, and the dispatchers find the messages by
//! polling.
//!
//! The queue holds 8 GB before PostgreSQL 17; from 17 on its size is a
//! setting (max_notify_queue_pages), so that a test can fill it in a moment.
//! scripts/test-version.sh runs those tests on 17 and 18; the last one,
//! on the wake worker's failures, runs everywhere.

use pg_otp_integration::*;
use std::time::Duration;

/// The served database of the test's cluster (otp.purge_database), where
/// the "pg_otp wake" worker notifies for the issuing transactions.
const SERVED: &str = "served";

fn server_major() -> u32 {
    let out = std::process::Command::new(pg_bin().join("postgres"))
        .arg("--version")
        .output()
        .expect("postgres --version");
    // "postgres (PostgreSQL) 17.11"
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().last().expect("a version");
    version
        .split('.')
        .next()
        .unwrap()
        .parse()
        .expect("a major version")
}

/// pg_otp, the roles and an agent over one person in `db`.
fn install(db: &mut Client) {
    db.batch_execute(&format!(
        "CREATE EXTENSION pg_otp;
         GRANT otp_app TO {APP};
         GRANT otp_dispatcher TO {SENDER};
         CREATE TABLE people (id text PRIMARY KEY, phone text, email text);
         INSERT INTO people VALUES ('p1', '+34 600 12 34 78', 'p.one@example.com');
         SELECT otp_configure(agent => '{AGENT}', source => 'people', id_column => 'id',
                              phone_column => 'phone', max_codes => 1000000, resend_cooldown => '0');"
    ))
    .unwrap();
}

/// The SQLSTATE of a failed statement.
fn sqlstate(result: Result<(), postgres::Error>) -> Option<String> {
    result
        .err()
        .and_then(|err| err.as_db_error().map(|err| err.code().code().to_owned()))
}

/// A cluster of the test's own with the smallest notification queue
/// PostgreSQL allows (64 pages of 8 kB), as `notifying_cluster` sets it
/// up; or None before PostgreSQL 17 (the test is skipped).
fn small_queue_cluster(name: &str, port: u16) -> Option<Cluster> {
    let major = server_major();
    if major < 17 {
        eprintln!(
            "skipped on PostgreSQL {major}: filling its notification queue takes 8 GB (scripts/test-version.sh runs this on 17 and 18)"
        );
        return None;
    }
    Some(notifying_cluster(
        name,
        port,
        &["max_notify_queue_pages = 64"],
    ))
}

/// A cluster of the test's own with `conf`, pg_otp in `postgres` and in
/// SERVED, and the wake worker running in SERVED.
fn notifying_cluster(name: &str, port: u16, conf: &[&str]) -> Cluster {
    let mut lines = vec![
        "shared_preload_libraries = 'pg_otp'",
        CLUSTER_SECRET,
        "otp.purge_database = 'served'",
    ];
    lines.extend_from_slice(conf);
    let cluster = Cluster::start(name, port, &lines, &[]);
    let mut admin = cluster.connect("postgres", "postgres");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {APP} LOGIN; CREATE ROLE {SENDER} LOGIN; CREATE ROLE flooder LOGIN"
        ))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {SERVED}"))
        .unwrap();
    install(&mut admin);
    install(&mut cluster.connect("postgres", SERVED));
    wait_until(
        "the wake worker to run in the served database",
        Duration::from_secs(30),
        || wake_worker(&cluster).is_some(),
    );
    // (its first line, before the lines a test counts)
    wait_until(
        "the wake worker to say where it wakes dispatchers",
        Duration::from_secs(30),
        || {
            cluster
                .log()
                .contains("pg_otp wake worker: waking dispatchers in database")
        },
    );
    cluster
}

/// The pid of the "pg_otp wake" worker in SERVED.
fn wake_worker(cluster: &Cluster) -> Option<i32> {
    cluster
        .connect("postgres", "postgres")
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_otp wake' AND datname = $1",
            &[&SERVED],
        )
        .unwrap()
        .map(|row| row.get(0))
}

/// Notifies distinct payloads (repeats within a transaction are folded)
/// until PostgreSQL refuses more: whether it did (54000) within 200
/// transactions. The queue holds them while some listener is in a
/// transaction.
fn fill_queue(flooder: &mut Client) -> bool {
    for round in 0..200 {
        let result = flooder.batch_execute(&format!(
            "SELECT pg_notify('anything', repeat('x', 7000) || {round} || '-' || i) FROM generate_series(1, 8) AS i"
        ));
        if let Some(code) = sqlstate(result) {
            assert_eq!(code, "54000");
            return true;
        }
    }
    false
}

#[test]
fn a_full_notification_queue_does_not_stop_codes_being_issued() {
    let Some(cluster) = small_queue_cluster("notify-queue", 54345) else {
        return;
    };
    let worker_pid = wake_worker(&cluster).unwrap();
    // (before the database existed, the worker started and exited)
    let started = cluster.log().len();
    let log_since = || cluster.log().split_off(started);

    // An application's transaction issues a code while the queue is empty,
    // and commits once it is full.
    let mut early = cluster.connect(APP, "postgres");
    let early_conversation = conversation("before-the-flood");
    early.batch_execute("BEGIN").unwrap();
    assert_eq!(issue(&mut early, &early_conversation), "code_sent");

    // A role with no privileges at all fills the queue: a listener that
    // stays in a transaction, and distinct notifications (repeats within a
    // transaction are folded) until PostgreSQL refuses more.
    let mut holder = cluster.connect("flooder", "postgres");
    // (on a channel of its own: it does not read the flood, yet holds it)
    holder.batch_execute("LISTEN pinned").unwrap();
    holder.batch_execute("BEGIN; SELECT 1").unwrap();
    let mut flooder = cluster.connect("flooder", "postgres");
    assert!(fill_queue(&mut flooder), "the queue should be full");

    early.batch_execute("COMMIT").unwrap_or_else(|err| {
        panic!(
            "committing a code issued before the queue filled: {:?}",
            err.as_db_error()
        )
    });
    assert!(!claim_code(
        &mut cluster.connect(SENDER, "postgres"),
        &early_conversation
    )
    .is_empty());

    for database in ["postgres", SERVED] {
        let mut app = cluster.connect(APP, database);
        let conversation = conversation("full-queue");
        let status = try_issue(&mut app, &conversation).unwrap_or_else(|err| {
            panic!(
                "in {database}, issuing with the queue full: {:?}",
                err.as_db_error()
            )
        });
        assert_eq!(status, "code_sent", "in {database}");
        // A dispatcher polling finds the message.
        let mut sender = cluster.connect(SENDER, database);
        assert!(
            !claim_code(&mut sender, &conversation).is_empty(),
            "in {database}"
        );
    }
    // The worker, woken by the issue in its database, saw the queue full:
    // it says so once, and runs on (an ERROR would have ended it).
    wait_until(
        "the wake worker to find the queue full",
        Duration::from_secs(30),
        || log_since().contains("notification queue is half full or more"),
    );
    let log = log_since();
    assert!(!log.contains("background worker \"pg_otp wake\""), "{log}");
    assert_eq!(
        wake_worker(&cluster),
        Some(worker_pid),
        "the wake worker was restarted"
    );

    // Once the listener is gone the queue drains, and the worker wakes
    // dispatchers again.
    holder.batch_execute("ROLLBACK; UNLISTEN *").unwrap();
    drop(holder);
    let mut probe = cluster.connect("postgres", "postgres");
    wait_until(
        "the notification queue to drain",
        Duration::from_secs(30),
        || {
            probe
                .query_one("SELECT pg_notification_queue_usage() < 0.5", &[])
                .unwrap()
                .get(0)
        },
    );
    let mut listener = cluster.connect(SENDER, SERVED);
    listener.batch_execute("LISTEN otp_outbox").unwrap();
    let mut app = cluster.connect(APP, SERVED);
    assert_eq!(issue(&mut app, &conversation("drained")), "code_sent");
    let woken = next_notification(&mut listener);
    assert_eq!(woken.process_id(), worker_pid);
    // (the worker writes to the log after its commit woke the listener)
    wait_until(
        "the wake worker to say it wakes dispatchers again",
        Duration::from_secs(30),
        || log_since().contains("pg_otp wake worker: waking dispatchers again"),
    );
}

/// Several roles cycle the queue from empty to full and back as fast as
/// they can, so that it fills while a transaction waits for PostgreSQL's
/// lock on notifying commits, between a look at the queue and the commit.
/// Issuing must never fail, in the worker's database (which never
/// notifies, and whose worker must go on) or in another (which looks at
/// the queue under that lock), and the server log must not fill with the
/// worker's messages.
#[test]
fn a_queue_cycled_full_and_empty_fails_no_issue_nor_stops_the_wake_worker() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    const FLOODERS: usize = 4;
    let Some(cluster) = small_queue_cluster("notify-cycle", 54346) else {
        return;
    };
    let worker_pid = wake_worker(&cluster).unwrap();
    let started = cluster.log().len();
    let (stop, full, cycles) = (
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicUsize::new(0),
    );
    let outcomes = std::thread::scope(|scope| {
        // The listener in a transaction holds what follows in the queue;
        // once it is full, ending the transaction lets it drain.
        scope.spawn(|| {
            let mut holder = cluster.connect("flooder", "postgres");
            holder.batch_execute("LISTEN pinned").unwrap();
            holder.batch_execute("BEGIN; SELECT 1").unwrap();
            while !stop.load(Relaxed) {
                if full.swap(false, Relaxed) {
                    holder.batch_execute("COMMIT").unwrap();
                    let pause = 2 + cycles.fetch_add(1, Relaxed) % 9;
                    std::thread::sleep(Duration::from_millis(pause as u64));
                    holder.batch_execute("BEGIN; SELECT 1").unwrap();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            holder.batch_execute("COMMIT").unwrap();
        });
        for flooder in 0..FLOODERS {
            let (stop, full, cluster) = (&stop, &full, &cluster);
            scope.spawn(move || {
                let mut client = cluster.connect("flooder", "postgres");
                let mut round = 0;
                while !stop.load(Relaxed) {
                    round += 1;
                    let result = client.batch_execute(&format!(
                        "SELECT pg_notify('anything', repeat('x', 7000) || '{flooder}-{round}-' || i) FROM generate_series(1, 20) AS i"
                    ));
                    if let Some(code) = sqlstate(result) {
                        assert_eq!(code, "54000");
                        full.store(true, Relaxed);
                    }
                }
            });
        }
        let issuers: Vec<_> = ["postgres", SERVED]
            .into_iter()
            .map(|database| {
                let cluster = &cluster;
                scope.spawn(move || {
                    let mut app = cluster.connect(APP, database);
                    let mut outcomes = Vec::new();
                    let until = std::time::Instant::now() + Duration::from_secs(15);
                    while std::time::Instant::now() < until {
                        outcomes.push(
                            try_issue(&mut app, &conversation("cycled"))
                                .map_err(|err| format!("in {database}: {:?}", err.as_db_error())),
                        );
                    }
                    outcomes
                })
            })
            .collect();
        let outcomes: Vec<_> = issuers.into_iter().map(|issuer| issuer.join()).collect();
        // (before a panicking issuer is reported: the scope waits for the flooders)
        stop.store(true, Relaxed);
        outcomes
            .into_iter()
            .flat_map(|outcomes| outcomes.unwrap())
            .collect::<Vec<_>>()
    });
    let cycles = cycles.into_inner();
    assert!(cycles >= 5, "the queue filled only {cycles} times");
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} issues failed over {cycles} cycles, first: {}",
        failed.len(),
        outcomes.len(),
        failed[0]
    );
    let log = cluster.log().split_off(started);
    assert!(
        !log.contains("background worker \"pg_otp wake\""),
        "the wake worker exited: {log}"
    );
    assert_eq!(wake_worker(&cluster), Some(worker_pid));
    // At most one warning a minute, and the LOG that ends what it began.
    let said = log.matches("pg_otp wake worker: not waking").count()
        + log
            .matches("pg_otp wake worker: waking dispatchers again")
            .count();
    assert!(said <= 2, "the worker logged {said} lines in 15 s");
}

/// The wake worker's transaction fails (here it cannot get PostgreSQL's
/// lock on notifying commits within lock_timeout, because a notifying
/// commit waits for a synchronous standby that does not exist): the
/// worker says so, goes on, and wakes dispatchers once the lock is free.
#[test]
fn the_wake_worker_goes_on_after_its_notify_fails() {
    let cluster = notifying_cluster(
        "wake-fails",
        54347,
        &[
            "lock_timeout = '100ms'",
            // every commit local, but for one that asks to wait
            "synchronous_standby_names = 'nobody'",
            "synchronous_commit = local",
        ],
    );
    let worker_pid = wake_worker(&cluster).unwrap();
    let started = cluster.log().len();
    let log_since = || cluster.log().split_off(started);

    // A notifying commit holds the lock while it waits for the standby
    // (one that wrote something: a commit that wrote nothing does not wait).
    let mut stalled = cluster.connect("postgres", "postgres");
    let stalled_pid = backend_pid(&mut stalled);
    std::thread::scope(|scope| {
        let waiting = scope.spawn(move || {
            stalled
                .batch_execute(
                    "SET synchronous_commit = on; BEGIN; CREATE TABLE stall (); NOTIFY stall; COMMIT",
                )
                .ok();
        });
        // Ends the wait, however the test ends: the scope waits for it.
        struct Cancel<'a>(&'a Cluster, i32);
        impl Drop for Cancel<'_> {
            fn drop(&mut self) {
                self.0
                    .connect("postgres", "postgres")
                    .execute("SELECT pg_cancel_backend($1)", &[&self.1])
                    .unwrap();
            }
        }
        let cancel = Cancel(&cluster, stalled_pid);
        let mut watch = cluster.connect("postgres", "postgres");
        wait_until(
            "the notifying commit to wait for the standby",
            Duration::from_secs(30),
            || {
                watch
                    .query_opt(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'",
                        &[&stalled_pid],
                    )
                    .unwrap()
                    .is_some()
            },
        );
        let mut app = cluster.connect(APP, SERVED);
        assert_eq!(issue(&mut app, &conversation("stalled")), "code_sent");
        wait_until(
            "the wake worker to report its failed NOTIFY",
            Duration::from_secs(30),
            || log_since().contains("the NOTIFY failed"),
        );
        assert_eq!(
            wake_worker(&cluster),
            Some(worker_pid),
            "the worker exited: {}",
            log_since()
        );
        // The wait ends (the commit stands, locally), and with it the lock.
        drop(cancel);
        waiting.join().unwrap();

        let mut listener = cluster.connect(SENDER, SERVED);
        listener.batch_execute("LISTEN otp_outbox").unwrap();
        assert_eq!(issue(&mut app, &conversation("stalled")), "code_sent");
        let woken = next_notification(&mut listener);
        assert_eq!(woken.process_id(), worker_pid);
    });
    assert!(!log_since().contains("background worker \"pg_otp wake\""));
}
