//! docs/dispatcher.md against the binary, so that the page cannot drift from
//! what `otp-dispatcher` accepts: every environment variable and flag it
//! names, in the example command (the block marked `read by:
//! dispatcher/tests/docs.rs`, see scripts/check-docs.sh) and in the tables,
//! is one `otp-dispatcher --help` documents.

use std::collections::BTreeSet;
use std::process::Command;

fn page() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dispatcher.md");
    std::fs::read_to_string(path).unwrap()
}

/// The words of `text` that start with `prefix` and go on with `[A-Za-z0-9_-]`.
fn words(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .filter(|(at, _)| {
            // a word of its own: not the inside of a longer one
            !text[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect::<String>()
        })
        .filter(|word| word.len() > prefix.len())
        .collect()
}

#[test]
fn every_variable_and_flag_the_page_names_is_one_the_binary_takes() {
    let page = page();
    let help = Command::new(env!("CARGO_BIN_EXE_otp-dispatcher"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();

    let marker = "<!-- read by: dispatcher/tests/docs.rs -->\n```sh\n";
    let start = page.find(marker).expect("the example block is marked") + marker.len();
    let example = &page[start..start + page[start..].find("```").unwrap()];
    let in_example = words(example, "OTP_");
    assert!(
        in_example.len() >= 5,
        "the example sets variables: {in_example:?}"
    );
    for variable in words(&page, "OTP_") {
        assert!(
            // `[env: NAME=]`, `[env: NAME]` for a secret's (its value
            // hidden), or named in a flag's help (OTP_LOG, the log level)
            help.contains(&format!("[env: {variable}="))
                || help.contains(&format!("[env: {variable}]"))
                || help.contains(&format!("{variable} ")),
            "docs/dispatcher.md names {variable}, which otp-dispatcher --help does not list"
        );
    }
    // (`--whatsapp-*` stands for a family; --release and --now are cargo's
    // and systemctl's, in the page's commands)
    let flags: BTreeSet<String> = words(&page, "--")
        .into_iter()
        .filter(|flag| !flag.ends_with('-') && flag != "--release" && flag != "--now")
        .collect();
    assert!(flags.len() >= 15, "the page's flags: {flags:?}");
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "docs/dispatcher.md names {flag}, which otp-dispatcher --help does not list"
        );
    }
}
