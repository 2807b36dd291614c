//! Command line: flags in, a [`ValidConfig`] (or a printout) out.

use std::{path::PathBuf, process::ExitCode};

use crate::config::{Config, ValidConfig, DEFAULT_CONFIG_TOML};

const HELP: &str = "\
aquatic: a BitTorrent tracker for UDP (BEP 15), HTTP(S) and WebTorrent

USAGE:
    aquatic [OPTIONS]

With no options, serves UDP on [::]:3000, HTTP on [::]:3001 and WebSocket
(WebTorrent) on [::]:3002 with the built-in defaults (print them with -p).

OPTIONS:
    -c, --config FILE        Read the configuration from FILE (TOML). Keys not in
                             the file keep their defaults; unknown keys are an error.
    -p, --print-config       Print the default configuration, with comments, and exit.
        --print-parsed-config
                             Print the configuration in effect (defaults merged
                             with FILE) and exit.
    -t, --check-config [FILE]
                             Check FILE (or the -c file) and exit: every unknown
                             key, invalid value and unreadable named file (access
                             list, TLS certificate and key), one `FILE: key:
                             problem` line each on stderr; exit 0 if there is
                             none, 1 otherwise. Opens no socket.
    -h, --help               Print this help and exit.
    -V, --version            Print the version and exit.

SIGNALS:
    SIGHUP                   Re-read the config file: apply the keys that can change
                             at runtime, log those that need a restart, then do what
                             SIGUSR1 does. An invalid file changes nothing.
    SIGUSR1                  Reload the access list and TLS certificates.
    SIGTERM, SIGINT          Stop gracefully (a second one stops at once).
";

enum Action {
    Run(Option<PathBuf>),
    PrintDefault,
    PrintParsed(Option<PathBuf>),
    Check(Option<PathBuf>),
    Help,
    Version,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Action, String> {
    let mut config = None;
    let mut print_parsed = false;
    let mut check: Option<Option<PathBuf>> = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => {
                let path = args
                    .next()
                    .ok_or_else(|| format!("{arg} needs a file name"))?;
                config = Some(PathBuf::from(path));
            }
            "-p" | "--print-config" => return Ok(Action::PrintDefault),
            "--print-parsed-config" => print_parsed = true,
            // `-t FILE`, or `-c FILE -t` as nginx has it.
            "-t" | "--check-config" => {
                let file = args.next_if(|next| !next.starts_with('-'));
                check = Some(file.map(PathBuf::from));
            }
            "-h" | "--help" => return Ok(Action::Help),
            "-V" | "--version" => return Ok(Action::Version),
            other => {
                if let Some(path) = other.strip_prefix("--config=") {
                    config = Some(PathBuf::from(path));
                } else {
                    return Err(format!("unknown argument {other:?}"));
                }
            }
        }
    }
    if let Some(file) = check {
        return Ok(Action::Check(file.or(config)));
    }
    Ok(if print_parsed {
        Action::PrintParsed(config)
    } else {
        Action::Run(config)
    })
}

/// The file's configuration, or the defaults. An invalid file's message
/// lists every problem, one `path: key: reason` line each.
fn load(path: Option<PathBuf>) -> Result<ValidConfig, String> {
    match path {
        Some(path) => Config::load(&path).map_err(|e| e.to_string()),
        None => Ok(ValidConfig::default()),
    }
}

/// Writes `text` to stdout. A reader that went away (`aquatic -p | head`)
/// is no error: the output was wanted only up to there.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aquatic: cannot write to stdout: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: the findings on stderr, a verdict on stdout.
fn check_config(path: Option<PathBuf>) -> ExitCode {
    let Some(path) = path else {
        println!("aquatic: no config file given: the built-in defaults are valid");
        return ExitCode::SUCCESS;
    };
    match crate::check::check_file(&path) {
        Ok(_) => {
            println!("aquatic: {} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(findings) => {
            eprint!("{}", crate::check::report(&path, &findings));
            let plural = if findings.len() == 1 { "" } else { "s" };
            eprintln!(
                "aquatic: {} has {} problem{plural}",
                path.display(),
                findings.len()
            );
            ExitCode::FAILURE
        }
    }
}

/// The binary's entry point: the one place errors are reported.
pub fn main() -> ExitCode {
    let action = match parse_args(std::env::args().skip(1)) {
        Ok(action) => action,
        Err(message) => {
            eprintln!("aquatic: {message}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let path = match action {
        Action::Help => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Action::Version => {
            println!("aquatic {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Action::PrintDefault => return print_out(DEFAULT_CONFIG_TOML),
        Action::PrintParsed(path) => {
            return match load(path).and_then(|c| toml::to_string(&c).map_err(|e| e.to_string())) {
                Ok(text) => print_out(&text),
                Err(message) => {
                    eprintln!("aquatic: {message}");
                    ExitCode::FAILURE
                }
            };
        }
        Action::Check(path) => return check_config(path),
        Action::Run(path) => path,
    };
    let config = match load(path.clone()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("aquatic: {message}");
            return ExitCode::FAILURE;
        }
    };
    crate::server::install_panic_hook();
    crate::logging::init(config.log_level.filter());
    match crate::server::run(config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            eprintln!("aquatic: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Action, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        assert!(matches!(parse(&[]), Ok(Action::Run(None))));
        assert!(matches!(parse(&["-c", "x.toml"]), Ok(Action::Run(Some(_)))));
        assert!(matches!(
            parse(&["--config=x.toml"]),
            Ok(Action::Run(Some(_)))
        ));
        assert!(matches!(parse(&["-p"]), Ok(Action::PrintDefault)));
        assert!(matches!(
            parse(&["-c", "x", "--print-parsed-config"]),
            Ok(Action::PrintParsed(Some(_)))
        ));
        assert!(matches!(
            parse(&["-t", "x.toml"]),
            Ok(Action::Check(Some(p))) if p.as_os_str() == "x.toml"
        ));
        assert!(matches!(
            parse(&["-c", "y.toml", "-t"]),
            Ok(Action::Check(Some(p))) if p.as_os_str() == "y.toml"
        ));
        assert!(matches!(
            parse(&["--check-config", "x.toml", "-c", "y.toml"]),
            Ok(Action::Check(Some(p))) if p.as_os_str() == "x.toml"
        ));
        assert!(matches!(parse(&["-t"]), Ok(Action::Check(None))));
        assert!(parse(&["-c"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
