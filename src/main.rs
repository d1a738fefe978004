//! `timed`: the daemon's command line. See `timed --help` and `man 8 timed`.

use std::process::ExitCode;

use timed::{config, daemon, signals};

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the mask and only the signal
    // thread ever takes SIGTERM, SIGINT and SIGHUP.
    if let Err(e) = signals::block() {
        eprintln!("timed: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    let args = match config::parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("timed: {msg}\nTry 'timed --help'.");
            return ExitCode::from(2);
        }
    };
    match args.command {
        config::Command::Help => {
            print!("{}", config::usage());
            return ExitCode::SUCCESS;
        }
        config::Command::Version => {
            println!("timed {}", timed::VERSION);
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match config::load(args.conf.as_deref(), &args.overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("timed: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let config::Command::CheckConfig = args.command {
        print!("{}", config.to_conf_string());
        return ExitCode::SUCCESS;
    }
    let mut logger = env_logger::Builder::new();
    logger.filter_level(config.loglevel).parse_default_env();
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd the journal stamps every line itself.
        logger.format_timestamp(None);
    }
    logger.init();
    let conf = args.conf.clone();
    let overrides = args.overrides.clone();
    let reload: daemon::Reload = Box::new(move || config::load(conf.as_deref(), &overrides));
    match daemon::run(config, reload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("timed: {e}");
            ExitCode::from(1)
        }
    }
}
