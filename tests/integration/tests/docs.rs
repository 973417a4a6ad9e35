//! The documentation's SQL checked against the real thing, so that it cannot
//! rot unseen (scripts/check-docs.sh makes every SQL block of the docs say
//! what checks it; the blocks marked `read by: tests/integration/tests/docs.rs`
//! are checked here):
//! - every signature in docs/sql.md against the catalog of an installed
//!   pg_otp: argument names, types and defaults, results; and every function
//!   pg_otp installs is documented there;
//! - the examples of docs/install.md and docs/sql.md run as a reader would
//!   run them, on a cluster of this test's own (they create roles, which
//!   belong to the whole cluster).

use pg_otp_integration::*;

const MARKER: &str = "<!-- read by: tests/integration/tests/docs.rs -->";

/// The ```sql blocks of `page` (relative to the repository) marked for this
/// test, in order, without their `--` comments.
fn blocks(page: &str) -> Vec<String> {
    let path = format!("{}/../../{page}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if *line == "```sql" && i > 0 && lines[i - 1] == MARKER {
            let block = lines[i + 1..]
                .iter()
                .take_while(|line| !line.starts_with("```"))
                .map(|line| line.split("--").next().unwrap())
                .collect::<Vec<_>>()
                .join("\n");
            found.push(block);
        }
    }
    assert!(
        !found.is_empty(),
        "no block of {page} is marked for this test"
    );
    found
}

/// Splits `text` at the commas outside parentheses and quotes.
fn split_top(text: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth, mut quoted) = (Vec::new(), String::new(), 0, false);
    for c in text.chars() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                parts.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        parts.push(current.trim().to_owned());
    }
    parts
}

/// A type as the catalog spells it.
fn canonical_type(name: &str) -> String {
    match name.trim() {
        "int" | "int4" => "integer".to_owned(),
        "bool" => "boolean".to_owned(),
        "timestamptz" => "timestamp with time zone".to_owned(),
        other => other.to_owned(),
    }
}

/// `name type [DEFAULT expression]`, in order.
fn parameters(list: &str) -> Vec<(String, String, Option<String>)> {
    split_top(list)
        .iter()
        .map(|parameter| {
            let (declaration, default) = match parameter.split_once(" DEFAULT ") {
                Some((declaration, default)) => (declaration, Some(default.trim().to_owned())),
                None => (parameter.as_str(), None),
            };
            let (name, kind) = declaration
                .trim()
                .split_once(' ')
                .unwrap_or_else(|| panic!("no type in `{parameter}`"));
            (name.to_owned(), canonical_type(kind), default)
        })
        .collect()
}

/// A result as the catalog spells it: `TABLE(name type, ...)` or a type.
fn canonical_result(result: &str) -> String {
    let result = result.trim();
    match result
        .strip_prefix("TABLE(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Some(columns) => format!(
            "TABLE({})",
            parameters(columns)
                .iter()
                .map(|(name, kind, _)| format!("{name} {kind}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => canonical_type(result),
    }
}

struct Signature {
    name: String,
    parameters: String,
    result: Option<String>,
}

/// The signatures of a block: each starts at the beginning of a line with
/// `name(`; indented lines continue it.
fn signatures(block: &str) -> Vec<Signature> {
    let mut entries: Vec<String> = Vec::new();
    for line in block.lines().filter(|line| !line.trim().is_empty()) {
        if line.starts_with(' ') {
            entries
                .last_mut()
                .expect("a signature starts the block")
                .push_str(line);
        } else {
            entries.push(line.to_owned());
        }
    }
    entries
        .iter()
        .map(|entry| {
            let (name, rest) = entry
                .split_once('(')
                .unwrap_or_else(|| panic!("not a signature: {entry}"));
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or_else(|| panic!("unbalanced: {entry}"));
            let after = rest[end + 1..].trim();
            Signature {
                name: name.trim().to_owned(),
                parameters: rest[..end].to_owned(),
                result: after.strip_prefix("RETURNS").map(|r| r.trim().to_owned()),
            }
        })
        .collect()
}

#[test]
fn every_signature_in_the_sql_reference_is_the_installed_one() {
    let mut db = superuser();
    let mut documented = std::collections::BTreeSet::new();
    let mut checked = 0;
    for block in blocks("docs/sql.md")
        .iter()
        .filter(|block| !block.contains(';'))
    {
        for signature in signatures(block) {
            let rows = db
                .query(
                    "SELECT pg_catalog.pg_get_function_arguments(p.oid), pg_catalog.pg_get_function_result(p.oid)
                       FROM pg_catalog.pg_proc p
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass
                                                  AND d.objid = p.oid AND d.deptype = 'e'
                       JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_otp'
                      WHERE p.proname = $1",
                    &[&signature.name],
                )
                .unwrap();
            assert_eq!(
                rows.len(),
                1,
                "{}: documented, but pg_otp installs {} such functions",
                signature.name,
                rows.len()
            );
            let (installed, result): (String, String) = (rows[0].get(0), rows[0].get(1));
            let (doc, cat) = (parameters(&signature.parameters), parameters(&installed));
            let names = |list: &[(String, String, Option<String>)]| {
                list.iter()
                    .map(|(name, kind, _)| format!("{name} {kind}"))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                names(&doc),
                names(&cat),
                "{}: the documented parameters",
                signature.name
            );
            for ((name, kind, documented_default), (_, _, installed_default)) in
                doc.iter().zip(&cat)
            {
                match (documented_default, installed_default) {
                    (None, None) => {}
                    (Some(documented_default), Some(installed_default)) => {
                        let same: bool = db
                            .query_one(
                                &format!(
                                    "SELECT ({documented_default})::{kind} IS NOT DISTINCT FROM ({installed_default})::{kind}"
                                ),
                                &[],
                            )
                            .unwrap()
                            .get(0);
                        assert!(
                            same,
                            "{}({name}): documented DEFAULT {documented_default}, installed {installed_default}",
                            signature.name
                        );
                    }
                    _ => panic!(
                        "{}({name}): documented default {documented_default:?}, installed {installed_default:?}",
                        signature.name
                    ),
                }
            }
            if let Some(documented_result) = &signature.result {
                assert_eq!(
                    canonical_result(documented_result),
                    result,
                    "{}: the documented result",
                    signature.name
                );
            }
            documented.insert(signature.name);
            checked += 1;
        }
    }
    // And nothing pg_otp installs for its users goes undocumented.
    let installed: std::collections::BTreeSet<String> = db
        .query(
            "SELECT p.proname::text
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass
                                          AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_otp'
              WHERE p.pronamespace = e.extnamespace",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let undocumented: Vec<_> = installed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "installed but not in docs/sql.md: {undocumented:?}"
    );
    assert!(checked >= 15, "only {checked} signatures found");
}

/// The statements of `block` (split at `;`), for running one at a time.
fn statements(block: &str) -> Vec<String> {
    block
        .split(';')
        .map(|statement| statement.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|statement| !statement.is_empty())
        .collect()
}

#[test]
fn the_install_and_data_access_examples_run_as_written() {
    let cluster = Cluster::start(
        "docs",
        54349,
        &["shared_preload_libraries = 'pg_otp'", CLUSTER_SECRET],
        &[],
    );
    let install = blocks("docs/install.md");
    assert_eq!(
        install.len(),
        3,
        "docs/install.md: CREATE EXTENSION, its own schema, the roles"
    );
    let mut admin = cluster.connect("postgres", "postgres");
    admin.batch_execute("CREATE DATABASE app").unwrap();
    admin.batch_execute("CREATE DATABASE app2").unwrap();

    // CREATE EXTENSION in the first schema of the search_path, and the login roles.
    let mut db = cluster.connect("postgres", "app");
    db.batch_execute(&install[0]).unwrap();
    db.batch_execute(&install[2]).unwrap();
    // ... or in a schema of its own.
    let mut db2 = cluster.connect("postgres", "app2");
    db2.batch_execute(&install[1]).unwrap();
    let in_own_schema: i64 = db2
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_proc WHERE pronamespace = 'otp_api'::regnamespace AND proname = 'otp_issue'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(in_own_schema, 1, "otp_issue is in otp_api");

    // The row-level security example of docs/sql.md, over a payslips table.
    db.batch_execute(
        "CREATE SCHEMA hr;
         CREATE TABLE hr.employees (employee_no text PRIMARY KEY, whatsapp text, email text);
         INSERT INTO hr.employees VALUES ('4721', '+34 600 123 478', NULL), ('5108', NULL, 'bo@example.com');
         CREATE TABLE hr.payslips (employee_no text NOT NULL, month date NOT NULL, net_pay numeric NOT NULL);
         INSERT INTO hr.payslips VALUES ('4721', '2026-10-01', 2150), ('4721', '2026-11-01', 2150),
                                        ('5108', '2026-11-01', 1980.50);
         GRANT USAGE ON SCHEMA hr TO chat_app;
         GRANT SELECT ON hr.payslips TO chat_app;
         SELECT otp_configure(agent => 'payroll', source => 'hr.employees', id_column => 'employee_no',
                              phone_column => 'whatsapp', email_column => 'email');",
    )
    .unwrap();
    let example = blocks("docs/sql.md")
        .into_iter()
        .find(|block| block.contains("CREATE POLICY"))
        .unwrap();
    let (policy, turn) = example
        .split_once("BEGIN;")
        .expect("the example's turn begins with BEGIN");
    db.batch_execute(policy).unwrap();

    let mut app = cluster.connect("chat_app", "app");
    let mut sender = cluster.connect("otp_sender", "app");
    app.query_one(
        "SELECT status FROM otp_issue('payroll', 'wa:1', '4721')",
        &[],
    )
    .unwrap();
    let code: String = sender
        .query_one(
            "SELECT code FROM otp_outbox_claim() WHERE conversation = 'wa:1'",
            &[],
        )
        .unwrap()
        .get(0);
    let token: String = app
        .query_one(
            "SELECT session_token FROM otp_verify('payroll', 'wa:1', $1)",
            &[&code],
        )
        .unwrap()
        .get(0);

    let run_turn = |app: &mut postgres::Client, with_session: bool| -> Vec<String> {
        let mut seen = Vec::new();
        for statement in statements(&format!("BEGIN;{turn}")) {
            if statement.contains("$1") {
                if with_session {
                    let status: String =
                        app.query_one(statement.as_str(), &[&token]).unwrap().get(0);
                    assert_eq!(status, "active");
                }
            } else if statement.starts_with("SELECT") {
                seen.extend(
                    app.query(statement.as_str(), &[])
                        .unwrap()
                        .iter()
                        .map(|row| row.get::<_, String>(0)),
                );
            } else {
                app.batch_execute(&statement).unwrap();
            }
        }
        seen
    };
    assert_eq!(
        run_turn(&mut app, true),
        ["4721", "4721"],
        "with the session: that person's rows only"
    );
    assert!(
        run_turn(&mut app, false).is_empty(),
        "without a session: no rows"
    );
}
