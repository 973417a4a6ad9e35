//! Connecting to PostgreSQL with TLS, as libpq's `sslmode` means it.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require`, and
//! leaves certificates to its TLS connector. This module takes the two
//! settings it does not know from the connection string — `sslmode`
//! `verify-ca` / `verify-full`, and `sslrootcert` — hands the rest to
//! tokio-postgres, and gives it a rustls connector (tokio-postgres-rustls)
//! that checks what the mode asks for:
//!
//! | sslmode       | TLS                  | certificate checked against          |
//! |---------------|----------------------|--------------------------------------|
//! | `disable`     | never                | —                                    |
//! | `prefer`      | if the server has it | `sslrootcert`'s CAs, if given        |
//! | `require`     | always               | `sslrootcert`'s CAs, if given        |
//! | `verify-ca`   | always               | `sslrootcert` (required)             |
//! | `verify-full` | always               | `sslrootcert` (required) and host    |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the
//! operating system's trust store (as libpq 16 and later read it). Like
//! libpq, `prefer` and `require` without `sslrootcert` encrypt without
//! checking whom they talk to; a managed PostgreSQL wants `verify-full`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's TLS modes (see the table above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        SslMode::ALL.into_iter().find(|mode| mode.as_str() == text)
    }

    /// What tokio-postgres is told: whether TLS is tried, or required.
    fn for_tokio_postgres(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

/// Where the trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

/// A connection string taken apart: what tokio-postgres reads, and the TLS
/// settings read here.
pub struct Target {
    pub config: Config,
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

/// Why a connection could not be made. Never contains the connection
/// string (it may hold a password).
#[derive(Debug)]
pub enum Error {
    /// The connection string is malformed or its TLS settings do not fit.
    Config(String),
    /// The CA file could not be read or holds no certificate.
    RootCert(String),
    /// Connecting failed (the server's words, or the TLS check's).
    Connect(tokio_postgres::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(why) => write!(f, "invalid connection string: {why}"),
            Error::RootCert(why) => write!(f, "sslrootcert: {why}"),
            Error::Connect(err) => {
                if let Some(why) = certificate_problem(err) {
                    return write!(f, "the server's TLS certificate was refused: {why}");
                }
                if let Some(db) = err.as_db_error() {
                    // The server's own words (a refused pg_hba.conf entry, say).
                    return write!(f, "{} (SQLSTATE {})", db.message(), db.code().code());
                }
                // tokio-postgres says what it was doing; the cause is below it.
                write!(f, "{err}")?;
                let mut source = std::error::Error::source(err);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

/// The certificate check that refused the server, if that is what failed.
fn certificate_problem(err: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(rustls::Error::InvalidCertificate(problem)) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(describe(problem));
            }
        }
        if let Some(rustls::Error::InvalidCertificate(problem)) =
            current.downcast_ref::<rustls::Error>()
        {
            return Some(describe(problem));
        }
        source = current.source();
    }
    None
}

fn describe(problem: &CertificateError) -> String {
    match problem {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "it is not valid for the host name connected to (sslmode=verify-full checks the name; \
             connect by a name the certificate holds)"
                .to_owned()
        }
        CertificateError::UnknownIssuer => "it is not signed by a CA in sslrootcert".to_owned(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".to_owned()
        }
        other => format!("{other:?}"),
    }
}

/// Takes a connection string apart (key=value pairs, or a postgres:// URL).
pub fn parse(conninfo: &str) -> Result<Target, Error> {
    let trimmed = conninfo.trim_start();
    let (rest, mode, root_cert) =
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            split_url(trimmed)?
        } else {
            split_key_values(conninfo)?
        };
    let mode = match mode {
        Some(text) => SslMode::parse(&text).ok_or_else(|| {
            Error::Config(format!(
                "sslmode must be one of disable, prefer, require, verify-ca, verify-full, not \"{text}\""
            ))
        })?,
        None => SslMode::Prefer,
    };
    let root_cert = root_cert.map(|text| match text.as_str() {
        "system" => RootCert::System,
        path => RootCert::File(PathBuf::from(path)),
    });
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(Error::Config(format!(
            "sslmode={} needs sslrootcert: a PEM file of the CA certificates to trust, or \
             sslrootcert=system for the operating system's",
            mode.as_str()
        )));
    }
    let mut config: Config = rest
        .parse()
        .map_err(|err: tokio_postgres::Error| Error::Config(err.to_string()))?;
    config.ssl_mode(mode.for_tokio_postgres());
    Ok(Target {
        config,
        mode,
        root_cert,
    })
}

/// A postgres:// URL without its sslmode and sslrootcert parameters, and
/// their values.
type Split = (String, Option<String>, Option<String>);

fn split_url(text: &str) -> Result<Split, Error> {
    let mut url = url::Url::parse(text).map_err(|err| Error::Config(err.to_string()))?;
    let (mut mode, mut root_cert) = (None, None);
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter_map(|(key, value)| match key.as_ref() {
            "sslmode" => {
                mode = Some(value.into_owned());
                None
            }
            "sslrootcert" => {
                root_cert = Some(value.into_owned());
                None
            }
            _ => Some((key.into_owned(), value.into_owned())),
        })
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((url.into(), mode, root_cert))
}

/// libpq's key=value form: pairs separated by whitespace, `=` with optional
/// whitespace around it, values optionally in single quotes, where `\'` and
/// `\\` stand for a quote and a backslash. Returns the text without the two
/// settings read here, re-quoted.
fn split_key_values(text: &str) -> Result<Split, Error> {
    let mut chars = text.chars().peekable();
    let (mut mode, mut root_cert) = (None, None);
    let mut kept = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::Config(format!("missing \"=\" after \"{key}\"")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(escaped) => value.push(escaped),
                        None => return Err(Error::Config("unterminated quoted value".into())),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(Error::Config("unterminated quoted value".into())),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root_cert = Some(value),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), mode, root_cert))
}

/// The rustls connector for `target`'s mode and CAs.
pub fn connector(target: &Target) -> Result<MakeRustlsConnect, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (&target.root_cert, target.mode) {
        (_, SslMode::Disable) | (None, _) => Arc::new(EncryptOnly(provider.clone())),
        (Some(roots), mode) => {
            let full: Arc<dyn ServerCertVerifier> = match roots {
                RootCert::System => Arc::new(
                    rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|err| {
                        Error::RootCert(format!("the system's trust store: {err}"))
                    })?,
                ),
                RootCert::File(path) => {
                    let mut store = RootCertStore::empty();
                    let certificates = CertificateDer::pem_file_iter(path)
                        .map_err(|err| Error::RootCert(format!("{}: {err}", path.display())))?;
                    for certificate in certificates {
                        let certificate = certificate
                            .map_err(|err| Error::RootCert(format!("{}: {err}", path.display())))?;
                        store
                            .add(certificate)
                            .map_err(|err| Error::RootCert(format!("{}: {err}", path.display())))?;
                    }
                    if store.is_empty() {
                        return Err(Error::RootCert(format!(
                            "{} holds no certificate",
                            path.display()
                        )));
                    }
                    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                        .build()
                        .map_err(|err| Error::RootCert(err.to_string()))?
                }
            };
            if mode == SslMode::VerifyFull {
                full
            } else {
                Arc::new(AnyName(full))
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Config(err.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The stream a connection made by `connect` runs over.
pub type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// Connects as the connection string says, TLS included.
pub async fn connect(conninfo: &str) -> Result<(Client, Connection<Socket, Stream>), Error> {
    let target = parse(conninfo)?;
    let tls = connector(&target)?;
    target.config.connect(tls).await.map_err(Error::Connect)
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`, as in libpq: encrypted,
/// whoever the server is. The handshake's signatures are still checked.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> (String, Option<String>, Option<String>) {
        split_key_values(text).unwrap()
    }

    #[test]
    fn key_values_lose_only_the_tls_settings() {
        let (rest, mode, root) =
            parts("host=db.example.com  port = 5432 sslmode=verify-full sslrootcert='/etc/ca dir/ca.pem' user=otp");
        assert_eq!(rest, "host='db.example.com' port='5432' user='otp'");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca dir/ca.pem"));
        let (rest, _, _) = parts(r"password='it\'s \\ secret' dbname=x");
        assert_eq!(rest, r"password='it\'s \\ secret' dbname='x'");
        let config: Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's \\ secret"[..]));
        assert!(split_key_values("host").is_err());
        assert!(split_key_values("password='open").is_err());
    }

    #[test]
    fn urls_lose_only_the_tls_settings() {
        let (rest, mode, root) = split_url(
            "postgres://otp:pw@db.example.com:6432/app?sslmode=verify-ca&application_name=d&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://otp:pw@db.example.com:6432/app?application_name=d"
        );
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, _, _) = split_url("postgresql://h/app?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://h/app");
    }

    #[test]
    fn modes_and_their_requirements() {
        for mode in SslMode::ALL {
            assert_eq!(SslMode::parse(mode.as_str()), Some(mode));
        }
        assert!(matches!(
            parse("host=h sslmode=allow"),
            Err(Error::Config(_))
        ));
        let err = parse("host=h sslmode=verify-full")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("needs sslrootcert"), "{err}");
        let target = parse("host=h sslmode=verify-ca sslrootcert=system").unwrap();
        assert_eq!(target.root_cert, Some(RootCert::System));
        assert_eq!(target.config.get_ssl_mode(), PgSslMode::Require);
        assert_eq!(parse("host=h").unwrap().mode, SslMode::Prefer);
        assert_eq!(
            parse("host=h sslmode=disable")
                .unwrap()
                .config
                .get_ssl_mode(),
            PgSslMode::Disable
        );
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let target = parse("host=h sslmode=verify-full sslrootcert=/nonexistent/ca.pem").unwrap();
        let err = connector(&target).err().unwrap().to_string();
        assert!(err.starts_with("sslrootcert: /nonexistent/ca.pem"), "{err}");
        let empty =
            std::env::temp_dir().join(format!("pg_otp-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let target = parse(&format!(
            "host=h sslmode=verify-full sslrootcert={}",
            empty.display()
        ))
        .unwrap();
        let err = connector(&target).err().unwrap().to_string();
        std::fs::remove_file(&empty).unwrap();
        assert!(err.contains("holds no certificate"), "{err}");
    }
}
