//! The `evhost` binary: parses the command line and calls the library.

mod cli;
mod events;
mod sdk;

use std::process::ExitCode;

use clap::Parser as _;
use cli::{Cli, Command, PluginsCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => match args.config() {
            Ok(config) => {
                cli::init_logging(config.log_format);
                match evhost::App::new(config).await {
                    Ok(app) => app.run(shutdown_signal()).await,
                    Err(error) => Err(error),
                }
            }
            Err(e) => Err(e.into()),
        },
        Command::Publish(args) => cli::publish(&cli.host, args).await,
        Command::Plugins(PluginsCommand::List) => cli::list_plugins(&cli.host).await,
        Command::Plugins(PluginsCommand::Check { file }) => cli::check_plugin(&file).await,
        Command::Plugins(PluginsCommand::History { plugin }) => cli::plugin_history(&cli.host, &plugin).await,
        Command::Plugins(PluginsCommand::Call {
            file,
            event,
            kv,
            config,
        }) => cli::call_plugin(&file, &event, &kv, &config).await,
        Command::Plugins(PluginsCommand::Kv {
            plugin,
            key: Some(key),
            ..
        }) => cli::read_kv(&cli.host, &plugin, &key).await,
        Command::Plugins(PluginsCommand::Kv {
            plugin,
            prefix,
            limit,
            ..
        }) => cli::list_kv(&cli.host, &plugin, prefix.as_deref(), limit).await,
        Command::Events(command) => events::run(&cli.host, command).await,
        Command::Dlq(command) => cli::dlq(&cli.host, command).await,
        Command::Outbox(command) => cli::outbox(command).await,
        Command::New(args) => cli::new_plugin(&args).map(|dir| print!("{}", cli::next_steps(&args, &dir))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits the process at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting without waiting for in-flight events");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
