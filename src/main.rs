//! The `agentnet` command. Parsing and the commands live in [`cli`]; this
//! file only sets up logging and turns errors into a message and an exit
//! status.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(&cli);
    match cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("agentnet: error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message already contains (our error types print their source inline).
fn describe(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
