//! `cairn-wan-router`: parses flags, sets up logging and metrics, runs the router until a
//! signal (SIGINT leaves both pools gracefully first; SIGTERM just stops, as a Consul
//! server does by default).

use std::process::ExitCode;

use cairn_wan_router::config::{Config, Flags};
use cairn_wan_router::{Deps, run, telemetry};
use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // One process-wide TLS provider (ring), before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv = cairn_shared::argv::normalise(Flags::command(), std::env::args().collect());
    let flags = match Flags::try_parse_from(argv) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let config = match Config::from_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("==> invalid configuration: {e}");
            return ExitCode::from(1);
        }
    };
    telemetry::init_logging(&config.log_level, config.log_json);
    // One thread: a router's work is hops between sockets, and on one thread those hops
    // wake no other thread (measured: lower latency and more throughput than two).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        eprintln!("==> installing the metrics recorder: {e}");
        return ExitCode::from(1);
    }
    let shutdown = CancellationToken::new();
    let deps = Deps {
        prometheus: Some(prometheus),
    };
    let router = match run(config, deps, shutdown.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("==> {e}");
            return ExitCode::from(1);
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("==> cannot watch for SIGTERM: {e}");
            return ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; leaving the pools");
            router.leave().await;
        }
        _ = term.recv() => {
            tracing::info!("terminated");
            router.shutdown();
        }
        _ = router.stopping() => {}
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), router.stopped()).await;
    ExitCode::SUCCESS
}
