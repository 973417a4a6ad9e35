//! Who sends each message, and in which words: named senders (WhatsApp
//! Business phone numbers, SMTP accounts), sets of email texts, and per
//! agent (the `agent` of otp_configure) which sender, template, language,
//! time zone and display name its messages use.
//!
//! It comes from the configuration file (`--config`; docs/dispatcher.md,
//! "Senders, texts and languages"), or, without one, from the single-sender
//! flags, which make one `[default]` agent. Everything is checked when it is
//! loaded, at start and on each SIGHUP: secrets files are read, templates
//! compiled, names resolved. A message then only looks its agent up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::config::{read_small_file, EmailConfig, Secret, WhatsAppConfig};
use crate::pace::Pace;
use crate::texts::{self, Sources, Texts};

pub const DEFAULT_API_URL: &str = "https://graph.facebook.com/v21.0";

/// Everything a message's delivery is chosen from.
#[derive(Clone)]
pub struct Routes {
    pub whatsapp: BTreeMap<String, WhatsAppConfig>,
    pub email: BTreeMap<String, EmailConfig>,
    pub texts: Texts,
    pub agents: BTreeMap<String, Agent>,
    /// For agents not listed.
    pub default: Option<Agent>,
}

/// How one agent's messages go out.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Shown in the texts (`{{ agent_name }}`) and as the email's From name.
    pub display_name: String,
    /// The language of people whose record names none (a BCP 47 tag).
    pub language: String,
    /// The time zone of people whose record names none.
    pub time_zone: jiff::tz::TimeZone,
    pub whatsapp: Option<WhatsAppRoute>,
    pub email: Option<EmailRoute>,
}

#[derive(Debug, Clone)]
pub struct WhatsAppRoute {
    pub sender: String,
    /// The approved authentication template's name.
    pub template: String,
    /// BCP 47 tag -> the template's language code in WhatsApp (`es_MX`).
    pub languages: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct EmailRoute {
    pub sender: String,
    /// The set of texts (`texts::BUILT_IN` or a `[texts.NAME]`).
    pub texts: String,
    /// Append the code to the subject (shows on lock screens).
    pub code_in_subject: bool,
    /// A fixed subject instead of the texts' (the --email-subject flag).
    pub subject: Option<String>,
}

impl std::fmt::Debug for Routes {
    /// Names only: a sender's secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("whatsapp", &self.whatsapp.keys().collect::<Vec<_>>())
            .field("email", &self.email.keys().collect::<Vec<_>>())
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl Routes {
    /// The route of `agent`: its own, else the default.
    pub fn agent(&self, agent: &str) -> Option<&Agent> {
        self.agents.get(agent).or(self.default.as_ref())
    }

    /// Whether any message could go out through a provider.
    pub fn has_senders(&self) -> bool {
        !self.whatsapp.is_empty() || !self.email.is_empty()
    }

    /// Reads and checks the configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|err| {
            // toml's own message spans lines; a log line must not
            let at = err
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    format!(", line {line}")
                })
                .unwrap_or_default();
            anyhow::anyhow!(
                "configuration {}{at}: {}",
                path.display(),
                without_values(err.message())
            )
        })?;
        let base = Base::of(path);
        file.build(&base)
            .with_context(|| format!("configuration {}", path.display()))
    }
}

/// A TOML error message on one line, without the values it quotes
/// ("invalid type: integer `1234`"): a misplaced secret must not reach the
/// log. Key names ("unknown field `colour`") stay.
fn without_values(message: &str) -> String {
    let message = message.trim().replace('\n', " ");
    if !message.starts_with("invalid") {
        return message;
    }
    message
        .split('`')
        .step_by(2)
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("")
}

/// Where relative paths of secret files point: systemd's credentials
/// directory when the service has one (LoadCredential=), else the
/// directory of the configuration file.
struct Base {
    credentials: Option<PathBuf>,
    config_dir: PathBuf,
}

impl Base {
    fn of(config: &Path) -> Self {
        Self {
            credentials: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            config_dir: config.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    /// `file` relative to `dir` (unless absolute); never through `..`.
    fn resolve(dir: &Path, file: &Path, what: &str) -> Result<PathBuf> {
        if file
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            bail!("{what}_file must not contain ..");
        }
        Ok(dir.join(file))
    }

    /// A secret given inline or as a file (trailing line breaks dropped).
    fn secret(&self, inline: Option<String>, file: Option<PathBuf>, what: &str) -> Result<Secret> {
        match (inline, file) {
            (Some(value), None) if !value.is_empty() => Ok(value.into()),
            (None, Some(file)) => {
                let dir = self.credentials.as_deref().unwrap_or(&self.config_dir);
                let path = Self::resolve(dir, &file, what)?;
                let content = read_small_file(&path, &format!("{what}_file"))?;
                let content = content.trim_end_matches(['\n', '\r']);
                if content.is_empty() {
                    bail!("{what}_file {} is empty", path.display());
                }
                Ok(content.to_owned().into())
            }
            (Some(_), Some(_)) => bail!("give {what} or {what}_file, not both"),
            _ => bail!("{what}_file (or {what}) is required"),
        }
    }

    fn text(&self, inline: Option<String>, file: Option<PathBuf>, what: &str) -> Result<String> {
        match (inline, file) {
            (Some(value), None) => Ok(value),
            (None, Some(file)) => read_small_file(
                &Self::resolve(&self.config_dir, &file, what)?,
                &format!("{what}_file"),
            ),
            (Some(_), Some(_)) => bail!("give {what} or {what}_file, not both"),
            (None, None) => bail!("{what} (or {what}_file) is required"),
        }
    }
}

// The file, as written. Unknown keys are errors: a misspelt key must not
// silently fall back to a default.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    whatsapp: BTreeMap<String, WhatsAppSenderFile>,
    #[serde(default)]
    email: BTreeMap<String, EmailSenderFile>,
    #[serde(default)]
    texts: BTreeMap<String, BTreeMap<String, TextsFile>>,
    #[serde(default)]
    agents: BTreeMap<String, AgentFile>,
    default: Option<AgentFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhatsAppSenderFile {
    phone_number_id: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    api_url: Option<String>,
    rate: Option<u32>,
    pair_interval_seconds: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailSenderFile {
    url: Option<String>,
    url_file: Option<PathBuf>,
    from: String,
    rate: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextsFile {
    subject: String,
    text: Option<String>,
    text_file: Option<PathBuf>,
    html: Option<String>,
    html_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    display_name: Option<String>,
    language: Option<String>,
    time_zone: Option<String>,
    whatsapp: Option<String>,
    whatsapp_template: Option<String>,
    whatsapp_languages: Option<BTreeMap<String, String>>,
    email: Option<String>,
    texts: Option<String>,
    #[serde(default)]
    code_in_subject: bool,
}

impl File {
    fn build(self, base: &Base) -> Result<Routes> {
        let mut whatsapp = BTreeMap::new();
        for (name, sender) in self.whatsapp {
            let context = || format!("[whatsapp.{name}]");
            let token = base
                .secret(sender.token, sender.token_file, "token")
                .with_context(context)?;
            let config = WhatsAppConfig::new(
                sender.api_url.as_deref().unwrap_or(DEFAULT_API_URL),
                sender.phone_number_id,
                token,
                Pace::whatsapp(sender.rate, sender.pair_interval_seconds).with_context(context)?,
            )
            .with_context(context)?;
            whatsapp.insert(name, config);
        }
        let mut email = BTreeMap::new();
        for (name, sender) in self.email {
            let context = || format!("[email.{name}]");
            let url = base
                .secret(sender.url, sender.url_file, "url")
                .with_context(context)?;
            let pace = Pace::email(sender.rate).with_context(context)?;
            let config = EmailConfig::new(url, &sender.from, pace).with_context(context)?;
            email.insert(name, config);
        }
        let mut custom = BTreeMap::new();
        for (set, languages) in self.texts {
            let mut by_language = BTreeMap::new();
            for (language, texts) in languages {
                let context = || format!("[texts.{set}.{language}]");
                let sources = Sources {
                    subject: texts.subject,
                    text: base
                        .text(texts.text, texts.text_file, "text")
                        .with_context(context)?,
                    html: base
                        .text(texts.html, texts.html_file, "html")
                        .with_context(context)?,
                };
                by_language.insert(language, sources);
            }
            custom.insert(set, by_language);
        }
        let texts = Texts::new(&custom)?;
        let names = Names {
            whatsapp: &whatsapp,
            email: &email,
            texts: &texts,
        };
        let mut agents = BTreeMap::new();
        for (name, agent) in self.agents {
            let route = agent
                .build(&names)
                .with_context(|| format!("[agents.{name}]"))?;
            agents.insert(name, route);
        }
        let default = self
            .default
            .map(|agent| agent.build(&names).context("[default]"))
            .transpose()?;
        if agents.is_empty() && default.is_none() {
            bail!("no agent: add [default] (for every agent) or [agents.NAME] sections");
        }
        Ok(Routes {
            whatsapp,
            email,
            texts,
            agents,
            default,
        })
    }
}

/// What an agent's section may name.
struct Names<'a> {
    whatsapp: &'a BTreeMap<String, WhatsAppConfig>,
    email: &'a BTreeMap<String, EmailConfig>,
    texts: &'a Texts,
}

fn known<T>(map: &BTreeMap<String, T>) -> String {
    if map.is_empty() {
        "none".to_owned()
    } else {
        map.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

impl AgentFile {
    fn build(self, names: &Names<'_>) -> Result<Agent> {
        let language = match &self.language {
            Some(tag) => otp_common::language::normalize(tag)
                .with_context(|| format!("language {tag:?} is not a BCP 47 language tag"))?,
            None => "en".to_owned(),
        };
        let time_zone = match &self.time_zone {
            Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
                anyhow::anyhow!(
                    "time_zone {name:?} is not a time zone name (as America/Mexico_City)"
                )
            })?,
            None => jiff::tz::TimeZone::UTC,
        };
        let whatsapp = match self.whatsapp {
            Some(sender) => {
                if !names.whatsapp.contains_key(&sender) {
                    bail!(
                        "unknown WhatsApp sender {sender:?} (configured: {})",
                        known(names.whatsapp)
                    );
                }
                let mut languages = BTreeMap::new();
                for (tag, code) in self.whatsapp_languages.unwrap_or_else(|| {
                    BTreeMap::from([(language.clone(), whatsapp_code(&language))])
                }) {
                    let tag = otp_common::language::normalize(&tag).with_context(|| {
                        format!("whatsapp_languages: {tag:?} is not a BCP 47 language tag")
                    })?;
                    if code.is_empty()
                        || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        bail!("whatsapp_languages: {code:?} is not a WhatsApp language code (as es_MX)");
                    }
                    languages.insert(tag, code);
                }
                let tags: Vec<&String> = languages.keys().collect();
                if otp_common::language::choose(&[&language], &tags).is_none() {
                    bail!("whatsapp_languages has no template language for the agent's language {language}");
                }
                Some(WhatsAppRoute {
                    sender,
                    template: self
                        .whatsapp_template
                        .context("whatsapp_template (the approved template's name) is required with a WhatsApp sender")?,
                    languages,
                })
            }
            None if self.whatsapp_template.is_some() || self.whatsapp_languages.is_some() => {
                bail!("whatsapp_template and whatsapp_languages need a WhatsApp sender (whatsapp = \"NAME\")")
            }
            None => None,
        };
        let email = match self.email {
            Some(sender) => {
                if !names.email.contains_key(&sender) {
                    bail!(
                        "unknown email sender {sender:?} (configured: {})",
                        known(names.email)
                    );
                }
                let set = self.texts.unwrap_or_else(|| texts::BUILT_IN.to_owned());
                let Some(available) = names.texts.languages(&set) else {
                    bail!("unknown texts {set:?}");
                };
                if otp_common::language::choose(&[&language], available).is_none() {
                    bail!(
                        "texts {set:?} have no text in the agent's language {language} (they have: {})",
                        available.join(", ")
                    );
                }
                Some(EmailRoute {
                    sender,
                    texts: set,
                    code_in_subject: self.code_in_subject,
                    subject: None,
                })
            }
            None if self.texts.is_some() => bail!("texts need an email sender (email = \"NAME\")"),
            None => None,
        };
        let display_name = self.display_name.unwrap_or_default();
        // It becomes a mail header's display name: no line breaks, no
        // control characters.
        if display_name.chars().any(char::is_control) {
            bail!("display_name must not contain control characters");
        }
        if display_name.chars().count() > texts::MAX_AGENT_NAME {
            bail!(
                "display_name is longer than {} characters",
                texts::MAX_AGENT_NAME
            );
        }
        Ok(Agent {
            display_name,
            language,
            time_zone,
            whatsapp,
            email,
        })
    }
}

/// A WhatsApp language code for a tag (`es-MX` -> `es_MX`), the default
/// when an agent names no whatsapp_languages.
fn whatsapp_code(tag: &str) -> String {
    tag.replace('-', "_")
}

/// The single-sender flags, as routes: one `default` sender per channel
/// and a `[default]` agent, in English with the built-in texts (as 0.3.0).
pub struct Flags {
    pub whatsapp: Option<(WhatsAppConfig, String, String)>,
    pub email: Option<(EmailConfig, Option<String>, bool)>,
}

impl Flags {
    pub fn routes(self) -> Result<Routes> {
        let mut routes = Routes {
            whatsapp: BTreeMap::new(),
            email: BTreeMap::new(),
            texts: Texts::new(&BTreeMap::new())?,
            agents: BTreeMap::new(),
            default: None,
        };
        let mut agent = Agent {
            display_name: String::new(),
            language: "en".to_owned(),
            time_zone: jiff::tz::TimeZone::UTC,
            whatsapp: None,
            email: None,
        };
        if let Some((config, template, language)) = self.whatsapp {
            routes.whatsapp.insert("default".into(), config);
            agent.whatsapp = Some(WhatsAppRoute {
                sender: "default".into(),
                template,
                languages: BTreeMap::from([("en".to_owned(), language)]),
            });
        }
        if let Some((config, subject, code_in_subject)) = self.email {
            routes.email.insert("default".into(), config);
            agent.email = Some(EmailRoute {
                sender: "default".into(),
                texts: texts::BUILT_IN.into(),
                code_in_subject,
                subject,
            });
        }
        routes.default = Some(agent);
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes `config` (and a token and an SMTP URL file) to a new directory.
    fn write(name: &str, config: &str) -> (Dir, PathBuf) {
        let dir = std::env::temp_dir().join(format!("otp-routes-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "EAAG-token\n").unwrap();
        std::fs::write(dir.join("smtp"), "smtp://127.0.0.1:2525\n").unwrap();
        let path = dir.join("dispatcher.toml");
        std::fs::write(&path, config).unwrap();
        (Dir(dir), path)
    }

    fn load(name: &str, config: &str) -> Result<Routes> {
        let (_dir, path) = write(name, config);
        Routes::load(&path)
    }

    fn error(name: &str, config: &str) -> String {
        let err = format!("{:#}", load(name, config).expect_err("must be refused"));
        assert!(!err.contains('\n'), "one line: {err}");
        err
    }

    const SENDERS: &str = r#"
        [whatsapp.acme]
        phone_number_id = "111"
        token_file = "token"
        [whatsapp.globex]
        phone_number_id = "222"
        token = "EAAG-inline"
        api_url = "http://127.0.0.1:9/v21.0/"
        [email.acme]
        url_file = "smtp"
        from = "ACME <otp@acme.example>"
    "#;

    #[test]
    fn agents_get_their_own_senders_languages_and_texts() {
        let config = format!(
            r#"{SENDERS}
            [texts.acme.es]
            subject = "Código"
            text = "Código: {{{{ code }}}}"
            html = "<b>{{{{ code }}}}</b>"
            [agents.payroll]
            display_name = "Nómina ACME"
            language = "es-mx"
            time_zone = "America/Mexico_City"
            whatsapp = "acme"
            whatsapp_template = "codigo"
            whatsapp_languages = {{ es = "es_MX", en = "en_US" }}
            email = "acme"
            texts = "acme"
            [default]
            whatsapp = "globex"
            whatsapp_template = "otp_code"
            "#
        );
        let routes = load("ok", &config).unwrap();
        let payroll = routes.agent("payroll").unwrap();
        assert_eq!(payroll.language, "es-MX");
        assert_eq!(payroll.whatsapp.as_ref().unwrap().sender, "acme");
        assert_eq!(payroll.email.as_ref().unwrap().texts, "acme");
        let other = routes.agent("anyone").unwrap();
        assert_eq!(other.whatsapp.as_ref().unwrap().sender, "globex");
        assert_eq!(other.whatsapp.as_ref().unwrap().languages["en"], "en");
        assert!(other.email.is_none());
        assert_eq!(routes.whatsapp["acme"].token.expose(), "EAAG-token");
        assert_eq!(
            routes.whatsapp["globex"].api_url,
            "http://127.0.0.1:9/v21.0"
        );
        assert_eq!(
            routes.email["acme"].smtp_url.expose(),
            "smtp://127.0.0.1:2525"
        );
    }

    #[test]
    fn mistakes_are_refused_with_one_line_naming_them() {
        let agent = |body: &str| format!("{SENDERS}\n[agents.payroll]\n{body}\n");
        let cases = [
            (agent("whatsapp = \"hr\"\nwhatsapp_template = \"t\""), "[agents.payroll]: unknown WhatsApp sender \"hr\" (configured: acme, globex)"),
            (agent("email = \"hr\""), "unknown email sender \"hr\" (configured: acme)"),
            (agent("email = \"acme\"\ntexts = \"nope\""), "unknown texts \"nope\""),
            (agent("email = \"acme\"\nlanguage = \"fr\""), "no text in the agent's language fr (they have: en, es)"),
            (agent("language = \"español\""), "not a BCP 47 language tag"),
            (agent("time_zone = \"Mars/Olympus\""), "not a time zone name"),
            (agent("whatsapp = \"acme\""), "whatsapp_template"),
            (agent("colour = \"red\""), "line 14: unknown field `colour`"),
            (format!("{SENDERS}\n[texts.x.en]\nsubject = \"s\"\ntext = \"{{{{ code }}}}\"\nhtml = \"{{{{ cod }}}}\"\n[default]\n"), "texts x, en, html: unknown placeholder {{ cod }}"),
            (format!("{SENDERS}\n[texts.x.en]\nsubject = \"s\"\ntext = \"no code\"\nhtml = \"{{{{ code }}}}\"\n[default]\n"), "does not contain {{ code }}"),
            ("[whatsapp.a]\nphone_number_id = \"1\"\ntoken_file = \"missing\"\n[default]\n".to_owned(), "[whatsapp.a]: token_file"),
            ("[email.a]\nurl_file = \"smtp\"\nfrom = \"not an address\"\n[default]\n".to_owned(), "[email.a]: from is not an email address"),
            ("[email.a]\nurl = \"http://x\"\nfrom = \"a@b.example\"\n[default]\n".to_owned(), "[email.a]: url is not a valid smtp:// or smtps:// URL"),
            (SENDERS.to_owned(), "no agent"),
            ("[default\n".to_owned(), "line 1"),
        ];
        for (i, (config, expected)) in cases.iter().enumerate() {
            let err = error(&format!("bad{i}"), config);
            assert!(err.contains(expected), "case {i}: {err}");
            assert!(err.starts_with("configuration /"), "case {i}: {err}");
        }
    }

    #[test]
    fn secret_files_are_found_in_the_credentials_directory() {
        // CREDENTIALS_DIRECTORY is read through Base; set it only here.
        let (dir, path) = write(
            "cred",
            "[whatsapp.a]\nphone_number_id = \"1\"\ntoken_file = \"wa\"\n[default]\n",
        );
        let credentials = dir.0.join("credentials");
        std::fs::create_dir_all(&credentials).unwrap();
        std::fs::write(credentials.join("wa"), "from-credentials\n").unwrap();
        let base = Base {
            credentials: Some(credentials),
            config_dir: path.parent().unwrap().to_path_buf(),
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let routes = toml::from_str::<File>(&text).unwrap().build(&base).unwrap();
        assert_eq!(routes.whatsapp["a"].token.expose(), "from-credentials");
    }

    #[test]
    fn display_names_with_line_breaks_are_refused() {
        // A CR or LF in a From name made lettre's header formatting fail,
        // and the send panic on every attempt (attack on issue 12, F1).
        for name in [
            "Evil\\r\\nBcc: victim@evil.example",
            "a\\nb",
            "tab\\tname",
            "nul\\u0000",
        ] {
            let err = error(
                "display-name",
                &format!("{SENDERS}\n[default]\nemail = \"acme\"\ndisplay_name = \"{name}\"\n"),
            );
            assert!(
                err.contains("display_name must not contain control characters"),
                "{err}"
            );
        }
    }

    #[test]
    fn secrets_go_only_to_https_or_loopback_and_files_stay_put() {
        // A configuration could send a token to any host in clear text, or
        // read any file as a token (attack on issue 12, F4).
        let sender = |api_url: &str, token_file: &str| {
            format!("[whatsapp.a]\nphone_number_id = \"1\"\ntoken_file = \"{token_file}\"\napi_url = \"{api_url}\"\n[default]\n")
        };
        assert!(load("https-ok", &sender("https://graph.example/v21.0", "token")).is_ok());
        assert!(load("loopback-ok", &sender("http://127.0.0.1:9/v21.0", "token")).is_ok());
        assert!(load("localhost-ok", &sender("http://localhost:9/v21.0", "token")).is_ok());
        let err = error(
            "http-refused",
            &sender("http://graph.evil.example/v21.0", "token"),
        );
        assert!(
            err.contains("api_url must be https:// (http:// only to a loopback address)"),
            "{err}"
        );
        let err = error(
            "dotdot-refused",
            &sender("https://graph.example", "../token"),
        );
        assert!(err.contains("token_file must not contain .."), "{err}");
    }

    #[test]
    fn secret_files_must_be_small_regular_files() {
        // A FIFO or a device blocked the reload, a huge file filled memory
        // (attack on issue 12, F3).
        let (dir, path) = write(
            "fifo",
            "[whatsapp.a]\nphone_number_id = \"1\"\ntoken_file = \"big\"\n[default]\n",
        );
        std::fs::write(dir.0.join("big"), "a".repeat(100_000)).unwrap();
        let err = format!("{:#}", Routes::load(&path).expect_err("too big"));
        assert!(err.contains("is larger than 64 KiB"), "{err}");
        std::fs::remove_file(dir.0.join("big")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(dir.0.join("big"))
            .status()
            .unwrap();
        assert!(status.success());
        let err = format!("{:#}", Routes::load(&path).expect_err("a FIFO"));
        assert!(err.contains("is not a regular file"), "{err}");
        let err = error(
            "dev",
            "[whatsapp.a]\nphone_number_id = \"1\"\ntoken_file = \"/dev/zero\"\n[default]\n",
        );
        assert!(err.contains("is not a regular file"), "{err}");
    }

    #[test]
    fn refusals_never_print_a_senders_values() {
        // Start-up and reload refusals printed values of sender sections,
        // where secrets live (attack on issue 12, F5).
        for (config, secret) in [
            ("[whatsapp.a]\nphone_number_id = \"1\"\ntoken = 987654321987654321\n[default]\n", "987654321987654321"),
            ("[whatsapp.a]\nphone_number_id = \"1\"\ntoken = 3.14159265\n[default]\n", "3.14159265"),
            ("[whatsapp.a]\nphone_number_id = \"1\"\ntoken = \"t\"\napi_url = \"ftp://u:APIPASS@h\"\n[default]\n", "APIPASS"),
            ("[whatsapp.a]\nphone_number_id = \"EAAGsecret\"\ntoken = \"t\"\n[default]\n", "EAAGsecret"),
            ("[email.a]\nurl = \"smtp://127.0.0.1:25\"\nfrom = \"smtps://u:MAILPASS@h\"\n[default]\n", "MAILPASS"),
        ] {
            let err = error("values", config);
            assert!(!err.contains(secret), "{secret} printed: {err}");
        }
    }

    #[test]
    fn the_example_configuration_loads() {
        // with the secrets the service's unit hands over as credentials
        let dir = std::env::temp_dir().join(format!("otp-routes-example-{}", std::process::id()));
        let credentials = dir.join("credentials");
        std::fs::create_dir_all(&credentials).unwrap();
        let _cleanup = Dir(dir.clone());
        std::fs::write(credentials.join("acme-whatsapp-token"), "EAAG\n").unwrap();
        std::fs::write(
            credentials.join("acme-smtp-url"),
            "smtps://u:p@mail.acme.example\n",
        )
        .unwrap();
        let base = Base {
            credentials: Some(credentials),
            config_dir: dir,
        };
        let text = include_str!("../otp-dispatcher.example.toml");
        let routes = toml::from_str::<File>(text).unwrap().build(&base).unwrap();
        let payroll = routes.agent("payroll").unwrap();
        assert_eq!(payroll.language, "es-MX");
        assert_eq!(routes.texts.languages("acme").unwrap(), ["en", "es"]);
        assert!(routes.agent("someone else").unwrap().email.is_some());
        // and the unit names the same credentials
        let unit = include_str!("../packaging/otp-dispatcher.service");
        for name in ["acme-whatsapp-token", "acme-smtp-url"] {
            assert!(unit.contains(&format!("LoadCredential={name}:")), "{name}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let routes = load("debug", &format!("{SENDERS}\n[default]\n")).unwrap();
        let printed = format!("{:?} {:?}", routes.whatsapp, routes.email);
        assert!(
            printed.contains("acme") && printed.contains("globex"),
            "{printed}"
        );
        assert!(
            !printed.contains("EAAG") && !printed.contains("2525"),
            "{printed}"
        );
    }
}
