//! TLS between pg_otp's clients (otp-dispatcher, otp-demo) and PostgreSQL.
//!
//! A cluster of its own with `ssl = on`, a CA and a server certificate made
//! here for `localhost`, and connections through `otp_common::pg_tls`, the
//! code both clients connect with, in every `sslmode`.

use std::path::{Path, PathBuf};

use pg_otp_integration::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const PORT: u16 = 54347;

/// A CA and, when given names, a certificate for them signed by it.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Authority { issuer }
    }

    /// The certificate and key of a server known by `names`, as PEM.
    fn server(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certificate = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `dir/name`, readable only by postgres (the server
/// refuses a key file others can read).
fn write_for_postgres(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let status = std::process::Command::new("chown")
        .arg("postgres:")
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Connects with `conninfo` and runs a query over the connection; the
/// error's text otherwise.
fn try_connect(conninfo: &str) -> Result<bool, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (client, connection) = otp_common::pg_tls::connect(conninfo)
                .await
                .map_err(|err| err.to_string())?;
            tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|err| err.to_string())?;
            Ok(row.get(0))
        })
}

#[test]
fn every_sslmode_does_what_libpq_says() {
    let authority = Authority::new("pg_otp test CA");
    let stranger = Authority::new("someone else's CA");
    let (certificate, key) = authority.server(&["localhost"]);

    let cluster = Cluster::start(
        "tls",
        PORT,
        &[
            "listen_addresses = '127.0.0.1'",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
        ],
        &[],
    );
    // The server reads its files relative to the data directory; TLS is
    // turned on once they are there (a server cannot start without them).
    let data = cluster.dir().join("data");
    write_for_postgres(&data, "server.crt", &certificate);
    write_for_postgres(&data, "server.key", &key);
    let ca = write_for_postgres(cluster.dir(), "ca.pem", &authority.issuer.pem());
    let wrong_ca = write_for_postgres(cluster.dir(), "other-ca.pem", &stranger.issuer.pem());
    let mut admin = cluster.connect("postgres", "postgres");
    admin.batch_execute("ALTER SYSTEM SET ssl = on").unwrap();
    admin
        .batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .unwrap();
    wait_until(
        "the server has its certificate",
        std::time::Duration::from_secs(30),
        || {
            try_connect(&format!(
                "host=localhost port={PORT} user=postgres dbname=postgres sslmode=require"
            )) == Ok(true)
        },
    );

    let at = |host: &str, rest: &str| {
        try_connect(&format!(
            "host={host} port={PORT} user=postgres dbname=postgres {rest}"
        ))
    };
    let ca = ca.display();
    let wrong_ca = wrong_ca.display();
    // encrypted; and verified against the CA, with and without the name
    assert_eq!(at("localhost", "sslmode=require"), Ok(true));
    assert_eq!(at("localhost", "sslmode=prefer"), Ok(true));
    assert_eq!(
        at("127.0.0.1", &format!("sslmode=verify-ca sslrootcert={ca}")),
        Ok(true)
    );
    assert_eq!(
        at(
            "localhost",
            &format!("sslmode=verify-full sslrootcert={ca}")
        ),
        Ok(true)
    );
    // the URL form says the same
    assert_eq!(
        try_connect(&format!(
            "postgres://postgres@localhost:{PORT}/postgres?sslmode=verify-full&sslrootcert={ca}"
        )),
        Ok(true)
    );
    // disable: no TLS
    assert_eq!(at("localhost", "sslmode=disable"), Ok(false));

    // a certificate for another name, or from another CA, is refused
    let err = at(
        "127.0.0.1",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    )
    .unwrap_err();
    assert!(err.contains("not valid for the host name"), "{err}");
    let err = at(
        "localhost",
        &format!("sslmode=verify-full sslrootcert={wrong_ca}"),
    )
    .unwrap_err();
    assert!(err.contains("not signed by a CA in sslrootcert"), "{err}");
    let err = at(
        "localhost",
        &format!("sslmode=verify-ca sslrootcert={wrong_ca}"),
    )
    .unwrap_err();
    assert!(err.contains("not signed by a CA in sslrootcert"), "{err}");
    // require with a CA checks it, as in libpq
    let err = at(
        "localhost",
        &format!("sslmode=require sslrootcert={wrong_ca}"),
    )
    .unwrap_err();
    assert!(err.contains("not signed by a CA in sslrootcert"), "{err}");

    // a server that accepts TCP connections only with TLS: disable is refused,
    // in the server's words
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .unwrap();
    wait_until(
        "pg_hba.conf is reloaded",
        std::time::Duration::from_secs(30),
        || at("localhost", "sslmode=disable").is_err(),
    );
    let err = at("localhost", "sslmode=disable").unwrap_err();
    assert!(err.contains("no encryption"), "{err}");
    assert_eq!(
        at(
            "localhost",
            &format!("sslmode=verify-full sslrootcert={ca}")
        ),
        Ok(true)
    );
}
