//! Command-line flags (with environment fallbacks), parsed once into a typed,
//! validated `Config`. Secrets are wrapped so that no `Debug` or log line can
//! print them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::pace::Pace;
use crate::routes::{self, Routes};

/// A value that must never be printed (tokens, passwords, URLs with them).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// otp-dispatcher: delivers pg_otp codes from the outbox.
///
/// It claims due messages with otp_outbox_claim, sends them by WhatsApp
/// (Business Cloud API), email (SMTP) or to the console, and reports each
/// result with otp_outbox_sent / otp_outbox_failed / otp_outbox_expired.
#[derive(Parser, Debug)]
#[command(name = "otp-dispatcher", version)]
pub struct Args {
    /// PostgreSQL connection string, e.g. "host=/var/run/postgresql dbname=app user=otp_sender",
    /// or "host=db.example.com user=otp_sender sslmode=verify-full sslrootcert=/etc/otp/ca.pem"
    /// (sslmode disable, prefer, require, verify-ca or verify-full, as in libpq; sslrootcert a
    /// PEM file of CAs, or "system"). A password in it is visible in `ps`: prefer
    /// --database-url-file.
    #[arg(long, env = "OTP_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// File holding the PostgreSQL connection string (read once at start).
    #[arg(long, env = "OTP_DATABASE_URL_FILE", conflicts_with = "database_url")]
    pub database_url_file: Option<PathBuf>,

    /// Configuration file (TOML) of senders, texts and agents: several WhatsApp numbers and
    /// SMTP accounts, each agent with its own, in its people's languages. Reloaded on SIGHUP.
    /// Without it, the --whatsapp-* and --smtp-*/--email-* flags configure one sender per
    /// channel for every agent.
    #[arg(long, env = "OTP_CONFIG", conflicts_with_all = [
        "whatsapp_phone_number_id", "whatsapp_token", "whatsapp_token_file", "smtp_url",
        "smtp_url_file", "email_from", "email_subject", "email_code_in_subject",
        "whatsapp_template", "whatsapp_language", "whatsapp_api_url", "whatsapp_rate",
        "whatsapp_pair_interval_seconds", "smtp_rate"
    ])]
    pub config: Option<PathBuf>,

    /// Schema the pg_otp functions were created in (CREATE EXTENSION pg_otp SCHEMA ...).
    #[arg(long, env = "OTP_SCHEMA", default_value = "public")]
    pub schema: String,

    /// WhatsApp Business Cloud API base URL (with the Graph API version)
    /// [default: https://graph.facebook.com/v21.0].
    #[arg(long, env = "OTP_WHATSAPP_API_URL")]
    pub whatsapp_api_url: Option<String>,

    /// WhatsApp Business phone number id that sends the codes.
    #[arg(long, env = "OTP_WHATSAPP_PHONE_NUMBER_ID")]
    pub whatsapp_phone_number_id: Option<String>,

    /// Bearer token of the WhatsApp Business app. Visible in `ps`: prefer
    /// --whatsapp-token-file.
    #[arg(long, env = "OTP_WHATSAPP_TOKEN", hide_env_values = true)]
    pub whatsapp_token: Option<String>,

    /// File holding the bearer token of the WhatsApp Business app.
    #[arg(
        long,
        env = "OTP_WHATSAPP_TOKEN_FILE",
        conflicts_with = "whatsapp_token"
    )]
    pub whatsapp_token_file: Option<PathBuf>,

    /// Name of the approved authentication template [default: otp_code].
    #[arg(long, env = "OTP_WHATSAPP_TEMPLATE")]
    pub whatsapp_template: Option<String>,

    /// Language code of the template [default: en_US].
    #[arg(long, env = "OTP_WHATSAPP_LANGUAGE")]
    pub whatsapp_language: Option<String>,

    /// Messages per second the WhatsApp sender sends at most: the phone number's throughput
    /// at Meta (80 unless Meta raised it). Sends are spaced evenly.
    #[arg(long, env = "OTP_WHATSAPP_RATE", default_value_t = crate::pace::WHATSAPP_RATE)]
    pub whatsapp_rate: u32,

    /// Seconds per message to one number once a burst of 10 is spent (Meta's pair rate
    /// limit, about one every 6 s); a code beyond waits its turn, unless it would expire
    /// first. 0: none.
    #[arg(long, env = "OTP_WHATSAPP_PAIR_INTERVAL_SECONDS",
          default_value_t = crate::pace::WHATSAPP_PAIR_INTERVAL_SECONDS)]
    pub whatsapp_pair_interval_seconds: u32,

    /// SMTP server URL: smtps://user:pass@host (TLS, port 465), smtp://user:pass@host?tls=required
    /// (STARTTLS, port 587), or smtp://host:port (unencrypted: only for a relay on the same host).
    /// A password in it is visible in `ps`: prefer --smtp-url-file.
    #[arg(long, env = "OTP_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// File holding the SMTP server URL.
    #[arg(long, env = "OTP_SMTP_URL_FILE", conflicts_with = "smtp_url")]
    pub smtp_url_file: Option<PathBuf>,

    /// Sender address of code emails, e.g. "Payroll assistant <no-reply@example.com>".
    #[arg(long, env = "OTP_EMAIL_FROM")]
    pub email_from: Option<String>,

    /// Subject of code emails [default: the built-in English text's, "Your verification
    /// code"]. It never contains the code unless --email-code-in-subject.
    #[arg(long, env = "OTP_EMAIL_SUBJECT")]
    pub email_subject: Option<String>,

    /// Append the code to the email subject (shows in notifications and lock screens).
    #[arg(long, env = "OTP_EMAIL_CODE_IN_SUBJECT")]
    pub email_code_in_subject: bool,

    /// Messages per second the SMTP sender sends at most (the provider's sending rate)
    /// [default: unpaced].
    #[arg(long, env = "OTP_SMTP_RATE")]
    pub smtp_rate: Option<u32>,

    /// Print deliveries, codes included, to standard output instead of sending them
    /// (development and demos). Handles every message whose agent has no sender for its
    /// channel.
    #[arg(long, env = "OTP_CONSOLE")]
    pub console: bool,

    /// Messages claimed at once.
    #[arg(long, env = "OTP_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: u16,

    /// Sends in flight at once.
    #[arg(long, env = "OTP_CONCURRENCY", default_value_t = 64)]
    pub concurrency: u16,

    /// How long a claimed message stays reserved for this dispatcher, in seconds.
    #[arg(long, env = "OTP_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u32,

    /// Poll the outbox at least this often, in milliseconds (notifications are
    /// the fast path; polling is the safety net).
    #[arg(long, env = "OTP_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,

    /// Do not send a code that expires within this many seconds; end it as expired.
    #[arg(long, env = "OTP_EXPIRY_MARGIN_SECONDS", default_value_t = 15)]
    pub expiry_margin_seconds: u32,

    /// Timeout of one provider request, in milliseconds.
    #[arg(long, env = "OTP_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,

    /// Serve WhatsApp status webhooks (delivered, read, failed) on this address, at
    /// /webhooks/whatsapp, e.g. 127.0.0.1:8080 behind a TLS-terminating proxy that Meta
    /// reaches. Needs --webhook-verify-token(-file) and --whatsapp-app-secret(-file).
    #[arg(long, env = "OTP_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,

    /// The verify token entered in Meta's webhook settings (the subscription handshake).
    #[arg(long, env = "OTP_WEBHOOK_VERIFY_TOKEN", hide_env_values = true)]
    pub webhook_verify_token: Option<String>,

    /// File holding the webhook verify token.
    #[arg(
        long,
        env = "OTP_WEBHOOK_VERIFY_TOKEN_FILE",
        conflicts_with = "webhook_verify_token"
    )]
    pub webhook_verify_token_file: Option<PathBuf>,

    /// App secret of the Meta app: webhook bodies are signed with it (X-Hub-Signature-256).
    /// Visible in `ps`: prefer --whatsapp-app-secret-file.
    #[arg(long, env = "OTP_WHATSAPP_APP_SECRET", hide_env_values = true)]
    pub whatsapp_app_secret: Option<String>,

    /// File holding the app secret of the Meta app.
    #[arg(
        long,
        env = "OTP_WHATSAPP_APP_SECRET_FILE",
        conflicts_with = "whatsapp_app_secret"
    )]
    pub whatsapp_app_secret_file: Option<PathBuf>,

    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
    #[arg(long, env = "OTP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format. The level comes from the environment variable OTP_LOG
    /// (default info; e.g. OTP_LOG=debug, or OTP_LOG=otp_dispatcher=debug).
    #[arg(long, env = "OTP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A WhatsApp Business phone number that sends codes.
#[derive(Debug, Clone)]
pub struct WhatsAppConfig {
    pub api_url: String,
    pub phone_number_id: String,
    pub token: Secret,
    pub pace: Pace,
}

impl WhatsAppConfig {
    /// Checks what a token will be sent to: https, or http to a loopback
    /// address (a local proxy, a test); never a value in an error, since a
    /// secret pasted into the wrong key must not reach the log.
    pub fn new(api_url: &str, phone_number_id: String, token: Secret, pace: Pace) -> Result<Self> {
        let url =
            reqwest::Url::parse(api_url).map_err(|_| anyhow::anyhow!("api_url is not a URL"))?;
        let loopback = match url.host() {
            Some(url::Host::Domain(name)) => name == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            bail!("api_url must be https:// (http:// only to a loopback address)");
        }
        if phone_number_id.is_empty() || !phone_number_id.chars().all(|c| c.is_ascii_digit()) {
            bail!("phone_number_id is not a phone number id (digits only)");
        }
        Ok(Self {
            api_url: api_url.trim_end_matches('/').to_owned(),
            phone_number_id,
            token,
            pace,
        })
    }
}

/// An SMTP account that sends codes.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub smtp_url: Secret,
    pub from: lettre::message::Mailbox,
    pub pace: Pace,
}

impl EmailConfig {
    pub fn new(smtp_url: Secret, from: &str, pace: Pace) -> Result<Self> {
        let from = from.parse().map_err(|_| {
            anyhow::anyhow!("from is not an email address (as \"ACME <otp@acme.example>\")")
        })?;
        // Checked now, not at the first message (the URL is never printed).
        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(smtp_url.expose())
            .map_err(|_| anyhow::anyhow!("url is not a valid smtp:// or smtps:// URL"))?;
        Ok(Self {
            smtp_url,
            from,
            pace,
        })
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub verify_token: Secret,
    pub app_secret: Secret,
}

#[derive(Debug)]
pub struct Config {
    pub database_url: Secret,
    /// Network hosts of the database reached without a verified
    /// certificate (said at start: every code crosses that connection).
    pub unverified_tls: Vec<String>,
    /// The extension's schema, already quoted for SQL.
    pub schema: String,
    /// Senders, texts and agents (see `routes`).
    pub routes: Routes,
    /// Where `routes` came from, to read again on SIGHUP (None: the flags).
    pub config_file: Option<PathBuf>,
    pub console: bool,
    pub batch_size: u16,
    pub concurrency: u16,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub expiry_margin: Duration,
    pub send_timeout: Duration,
    pub webhook: Option<WebhookConfig>,
    pub metrics_listen: Option<SocketAddr>,
    pub json_logs: bool,
}

/// The database hosts reached over the network (not a Unix socket, not
/// loopback) whose certificate the connection string's sslmode does not
/// verify: `prefer` may even fall back to plain text, as in libpq.
fn unverified_network_hosts(target: &otp_common::pg_tls::Target) -> Vec<String> {
    use otp_common::pg_tls::SslMode;
    if matches!(target.mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        return Vec::new();
    }
    target
        .config
        .get_hosts()
        .iter()
        .filter_map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => Some(name.clone()),
            _ => None,
        })
        .filter(|name| !matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1"))
        .collect()
}

/// The shortest webhook verify token or app secret accepted (Meta's app
/// secrets are 32 characters).
const MIN_WEBHOOK_SECRET: usize = 16;

/// A secret given directly or as the path of a file that holds it (the
/// file's content without its trailing line break). The file is read here,
/// once; errors name the flag and the path, never the content.
fn secret(value: Option<String>, file: Option<PathBuf>, flag: &str) -> Result<Option<String>> {
    match (value, file) {
        (Some(value), _) => Ok(Some(value)),
        (None, Some(path)) => {
            let content = read_small_file(&path, &format!("--{flag}-file"))?;
            let content = content.trim_end_matches(['\n', '\r']);
            if content.is_empty() {
                bail!("--{flag}-file {} is empty", path.display());
            }
            Ok(Some(content.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// The single-sender flags as routes (see `routes::Flags`).
fn flag_routes(args: &Args) -> Result<Routes> {
    let whatsapp_token = secret(
        args.whatsapp_token.clone(),
        args.whatsapp_token_file.clone(),
        "whatsapp-token",
    )?;
    let smtp_url = secret(
        args.smtp_url.clone(),
        args.smtp_url_file.clone(),
        "smtp-url",
    )?;
    let whatsapp = match (&args.whatsapp_phone_number_id, whatsapp_token) {
        (Some(phone_number_id), Some(token)) => Some((
            WhatsAppConfig::new(
                args.whatsapp_api_url
                    .as_deref()
                    .unwrap_or(routes::DEFAULT_API_URL),
                phone_number_id.clone(),
                token.into(),
                Pace::whatsapp(
                    Some(args.whatsapp_rate),
                    Some(args.whatsapp_pair_interval_seconds),
                )
                .context("--whatsapp-rate")?,
            )
            .context("--whatsapp-*")?,
            args.whatsapp_template
                .clone()
                .unwrap_or_else(|| "otp_code".into()),
            args.whatsapp_language
                .clone()
                .unwrap_or_else(|| "en_US".into()),
        )),
        (None, None) => None,
        _ => bail!("WhatsApp needs both --whatsapp-phone-number-id and --whatsapp-token(-file)"),
    };
    let email = match (smtp_url, &args.email_from) {
        (Some(smtp_url), Some(from)) => Some((
            EmailConfig::new(
                smtp_url.into(),
                from,
                Pace::email(args.smtp_rate).context("--smtp-rate")?,
            )
            .context("--smtp-url / --email-from")?,
            args.email_subject.clone(),
            args.email_code_in_subject,
        )),
        (None, None) => None,
        _ => bail!("email needs both --smtp-url(-file) and --email-from"),
    };
    routes::Flags { whatsapp, email }.routes()
}

/// The largest secret or template file read (a token is some hundred bytes).
const MAX_FILE: u64 = 64 * 1024;

/// Reads a regular file of at most MAX_FILE bytes, for every secret and
/// template file (flags and the configuration file alike): a FIFO or a
/// device would block the start or a reload, or never end, and a huge file
/// would fill memory. Errors name `label` (the flag or key) and the path,
/// never the content.
pub fn read_small_file(path: &Path, label: &str) -> Result<String> {
    use std::io::Read;
    let name = || format!("{label} {}", path.display());
    let metadata = std::fs::metadata(path).with_context(name)?;
    if !metadata.is_file() {
        bail!("{} is not a regular file", name());
    }
    if metadata.len() > MAX_FILE {
        bail!("{} is larger than 64 KiB", name());
    }
    let mut content = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE + 1).read_to_string(&mut content))
        .with_context(name)?;
    Ok(content)
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self> {
        let routes = match &args.config {
            Some(path) => Routes::load(path)?,
            None => flag_routes(&args)?,
        };
        let database_url = secret(args.database_url, args.database_url_file, "database-url")?
            .context("the database is required: give --database-url-file (or --database-url)")?;
        // Its TLS settings are checked now (a mode without the CA it needs, a
        // CA file that cannot be read), not at every reconnection attempt.
        let target = otp_common::pg_tls::parse(&database_url).context("--database-url")?;
        otp_common::pg_tls::connector(&target).context("--database-url")?;
        let unverified_tls = unverified_network_hosts(&target);

        let verify_token = secret(
            args.webhook_verify_token,
            args.webhook_verify_token_file,
            "webhook-verify-token",
        )?;
        let app_secret = secret(
            args.whatsapp_app_secret,
            args.whatsapp_app_secret_file,
            "whatsapp-app-secret",
        )?;
        // An empty or guessable secret would let anyone sign webhooks.
        for (value, flag) in [
            (&verify_token, "--webhook-verify-token"),
            (&app_secret, "--whatsapp-app-secret"),
        ] {
            if value.as_ref().is_some_and(|v| v.len() < MIN_WEBHOOK_SECRET) {
                bail!("{flag} must be at least {MIN_WEBHOOK_SECRET} characters");
            }
        }
        let webhook = match (args.webhook_listen, verify_token, app_secret) {
            (Some(listen), Some(verify_token), Some(app_secret)) => Some(WebhookConfig {
                listen,
                verify_token: verify_token.into(),
                app_secret: app_secret.into(),
            }),
            (None, _, _) => None,
            _ => bail!(
                "--webhook-listen needs --webhook-verify-token(-file) and --whatsapp-app-secret(-file): unsigned webhooks are never accepted"
            ),
        };
        if !routes.has_senders() && !args.console {
            bail!("no transport configured: give --config, WhatsApp (--whatsapp-phone-number-id, --whatsapp-token), SMTP (--smtp-url, --email-from) or --console");
        }
        if args.batch_size == 0
            || args.concurrency == 0
            || args.lease_seconds == 0
            || args.poll_interval_ms == 0
        {
            bail!("--batch-size, --concurrency, --lease-seconds and --poll-interval-ms must be positive");
        }
        let plain_identifier = |name: &str| {
            name.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if !plain_identifier(&args.schema) {
            bail!(
                "--schema {:?} must be a plain lower-case identifier",
                args.schema
            );
        }
        // (after the tuning flags are known to be positive)
        let paces = crate::transport::check_paces(
            &routes,
            args.concurrency,
            Duration::from_secs(args.lease_seconds.into()),
            Duration::from_millis(args.send_timeout_ms),
        );
        match &args.config {
            Some(path) => paces.with_context(|| format!("configuration {}", path.display()))?,
            None => paces?,
        }
        Ok(Config {
            database_url: database_url.into(),
            unverified_tls,
            schema: format!("\"{}\"", args.schema),
            routes,
            config_file: args.config,
            console: args.console,
            batch_size: args.batch_size,
            concurrency: args.concurrency,
            lease: Duration::from_secs(args.lease_seconds.into()),
            poll_interval: Duration::from_millis(args.poll_interval_ms),
            expiry_margin: Duration::from_secs(args.expiry_margin_seconds.into()),
            send_timeout: Duration::from_millis(args.send_timeout_ms),
            webhook,
            metrics_listen: args.metrics_listen,
            json_logs: args.log_format == "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config> {
        let mut argv = vec!["otp-dispatcher", "--database-url", "host=/tmp user=u"];
        argv.extend_from_slice(extra);
        Config::from_args(Args::try_parse_from(argv)?)
    }

    #[test]
    fn refuses_to_start_without_a_transport() {
        let err = parse(&[]).unwrap_err().to_string();
        assert!(err.starts_with("no transport configured"), "{err}");
    }

    #[test]
    fn schema_must_be_a_plain_identifier() {
        assert_eq!(parse(&["--console"]).unwrap().schema, "\"public\"");
        assert_eq!(
            parse(&["--console", "--schema", "auth"]).unwrap().schema,
            "\"auth\""
        );
        assert!(parse(&["--console", "--schema", "x\"; DROP TABLE y; --"]).is_err());
        assert!(parse(&["--console", "--schema", "Auth"]).is_err());
    }

    #[test]
    fn unverified_database_connections_over_the_network_are_named() {
        let hosts = |url: &str| {
            let argv = ["otp-dispatcher", "--console", "--database-url", url];
            Config::from_args(Args::try_parse_from(argv).unwrap())
                .unwrap()
                .unverified_tls
        };
        assert_eq!(hosts("host=db.example.com user=u"), ["db.example.com"]);
        assert_eq!(
            hosts("host=db.example.com user=u sslmode=require"),
            ["db.example.com"]
        );
        assert!(hosts("host=/var/run/postgresql user=u").is_empty());
        assert!(hosts("host=127.0.0.1 user=u").is_empty());
        assert!(
            hosts("host=db.example.com user=u sslmode=verify-full sslrootcert=system").is_empty()
        );
    }

    #[test]
    fn webhooks_refuse_empty_or_short_secrets() {
        let with = |token: &str, secret: &str| {
            parse(&[
                "--console",
                "--webhook-listen",
                "127.0.0.1:0",
                "--webhook-verify-token",
                token,
                "--whatsapp-app-secret",
                secret,
            ])
        };
        assert!(with("a-verify-token-long-enough", "an-app-secret-long-enough").is_ok());
        for (token, secret) in [
            ("", "an-app-secret-long-enough"),
            ("a-verify-token-long-enough", ""),
            ("short", "an-app-secret-long-enough"),
            ("a-verify-token-long-enough", "0123456789"),
        ] {
            let err = with(token, secret).unwrap_err().to_string();
            assert!(err.contains("at least 16"), "{err}");
        }
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir =
            std::env::temp_dir().join(format!("otp-dispatcher-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = dir.join("url");
        let token = dir.join("token");
        std::fs::write(&url, "host=/tmp user=from-file\n").unwrap();
        std::fs::write(&token, "EAAG-from-file\r\n").unwrap();
        let config = Config::from_args(
            Args::try_parse_from([
                "otp-dispatcher",
                "--database-url-file",
                url.to_str().unwrap(),
                "--whatsapp-phone-number-id",
                "1",
                "--whatsapp-token-file",
                token.to_str().unwrap(),
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(config.database_url.expose(), "host=/tmp user=from-file");
        assert_eq!(
            config.routes.whatsapp["default"].token.expose(),
            "EAAG-from-file"
        );
        // both forms at once, or a missing file, are errors
        assert!(Args::try_parse_from([
            "otp-dispatcher",
            "--database-url",
            "x",
            "--database-url-file",
            url.to_str().unwrap(),
            "--console"
        ])
        .is_err());
        let missing = Config::from_args(
            Args::try_parse_from([
                "otp-dispatcher",
                "--database-url-file",
                "/nonexistent/url",
                "--console",
            ])
            .unwrap(),
        )
        .unwrap_err();
        assert!(
            format!("{missing:#}").contains("/nonexistent/url"),
            "{missing:#}"
        );
        // a device or a FIFO would never end, or block the start
        let device = Config::from_args(
            Args::try_parse_from([
                "otp-dispatcher",
                "--database-url-file",
                "/dev/zero",
                "--console",
            ])
            .unwrap(),
        )
        .unwrap_err();
        assert!(
            format!("{device:#}").contains("--database-url-file /dev/zero is not a regular file"),
            "{device:#}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn half_configured_transports_are_errors() {
        assert!(parse(&["--whatsapp-token", "t"]).is_err());
        // TLS settings are checked at start (parse() passes a plain URL)
        let mut argv = vec![
            "otp-dispatcher",
            "--database-url",
            "host=db sslmode=verify-full",
            "--console",
        ];
        let err = Config::from_args(Args::try_parse_from(&argv).unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("needs sslrootcert"), "{err:#}");
        argv[2] = "host=db sslmode=verify-full sslrootcert=/nonexistent/ca.pem";
        let err = Config::from_args(Args::try_parse_from(&argv).unwrap()).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/ca.pem"),
            "{err:#}"
        );
        assert!(parse(&["--smtp-url", "smtp://127.0.0.1:25"]).is_err());
        assert!(parse(&[
            "--smtp-url",
            "smtp://127.0.0.1:25",
            "--email-from",
            "not an address"
        ])
        .is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = parse(&[
            "--whatsapp-phone-number-id",
            "123",
            "--whatsapp-token",
            "EAAG-very-secret",
            "--smtp-url",
            "smtps://user:hunter2@mail.example.com",
            "--email-from",
            "no-reply@example.com",
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("very-secret")
                && !printed.contains("hunter2")
                && !printed.contains("user=u")
        );
        assert_eq!(
            config.routes.whatsapp["default"].api_url,
            "https://graph.facebook.com/v21.0"
        );
    }
}
