//! otp-dispatcher: delivers pg_otp codes from the outbox.

mod config;
mod dispatch;
mod message;
mod metrics;
mod outbox;
mod pace;
mod routes;
mod texts;
mod transport;
mod webhook;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The runtime and the signal handlers come first: SIGHUP's default
    // action ends the process, and a reload may be asked for (systemctl
    // reload) as soon as the process exists.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("otp-dispatcher: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let signals = {
        let _entered = runtime.enter();
        Signals::install()
    };
    let config = match config::Args::try_parse()
        .map_err(|e| e.exit())
        .and_then(config::Config::from_args)
    {
        Ok(config) => config,
        Err(err) => {
            eprintln!("otp-dispatcher: {err:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.json_logs);
    // One TLS provider for reqwest and lettre: ring (no C toolchain needed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Signals {
        hangup,
        terminate,
        interrupt,
    } = signals;

    let result = runtime.block_on(async {
        if let Some(listen) = config.metrics_listen {
            metrics::serve(listen)?;
            info!(%listen, "serving Prometheus metrics");
        }
        for host in &config.unverified_tls {
            warn!(%host, "the connection to PostgreSQL does not verify the server's certificate (sslmode below verify-full): anyone between could read the codes; see docs/dispatcher.md, TLS to PostgreSQL");
        }
        if config.console {
            warn!("console transport on: codes are printed to standard output (development only)");
        }
        info!(routes = ?config.routes, "delivery configured");
        let settings = transport::Settings {
            console: config.console,
            timeout: config.send_timeout,
            concurrency: config.concurrency,
            lease: config.lease,
            pacers: Arc::default(),
        };
        let transports = transport::Transports::new(config.routes.clone(), &settings)?;
        let (transports_tx, transports_rx) = tokio::sync::watch::channel(Arc::new(transports));
        tokio::spawn(reload_on_sighup(
            hangup,
            config.config_file.clone(),
            settings,
            transports_tx,
        ));
        // One signal stops both the claim loop and the webhook server.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal(terminate, interrupt).await;
            // systemd: stopping (sends in flight are finished first)
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        if let Some(hook) = &config.webhook {
            webhook::serve(
                hook,
                config.database_url.clone(),
                &config.schema,
                stopped(stop_rx.clone()),
            )
            .await?;
        }
        // systemd (Type=notify): started; from now on a reload is handled.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        dispatch::run(config, transports_rx, stopped(stop_rx)).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = %format!("{err:#}"), "otp-dispatcher stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("OTP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// Reads the configuration file again on each SIGHUP. A file that does not
/// load is refused with one log line and the running configuration stays;
/// deliveries under way finish with the transports they started with.
async fn reload_on_sighup(
    mut hangup: Signal,
    file: Option<PathBuf>,
    settings: transport::Settings,
    transports: tokio::sync::watch::Sender<Arc<transport::Transports>>,
) {
    while hangup.recv().await.is_some() {
        let Some(path) = &file else {
            info!("SIGHUP received, but there is no --config file to reload");
            continue;
        };
        // Files are read on a blocking thread: a slow disk holds no sends.
        let path_owned = path.clone();
        let settings = settings.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            routes::Routes::load(&path_owned).and_then(|routes| {
                if !routes.has_senders() && !settings.console {
                    anyhow::bail!("no sender is configured");
                }
                info!(routes = ?routes, "configuration loaded");
                transport::Transports::new(routes, &settings)
            })
        })
        .await
        .unwrap_or_else(|err| Err(anyhow::anyhow!("loading the configuration failed: {err}")));
        match loaded {
            Ok(new) => {
                transports.send_replace(Arc::new(new));
                info!(file = %path.display(), "configuration reloaded");
            }
            Err(err) => error!(
                error = %format!("{err:#}"),
                "configuration not reloaded: the previous one stays in use"
            ),
        }
    }
}

/// The signals the dispatcher handles, installed before anything else.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> Self {
        let install = |kind: SignalKind| signal(kind).expect("installing a signal handler");
        Self {
            hangup: install(SignalKind::hangup()),
            terminate: install(SignalKind::terminate()),
            interrupt: install(SignalKind::interrupt()),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
    }
}
