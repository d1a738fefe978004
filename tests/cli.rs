//! The daemon's command line: exit codes and messages for configuration and start-up errors,
//! `--check-config`, `--version`.

mod common;

use std::fs::File;
use std::net::TcpListener;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Output of one finished `timed` run.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn show(&self) -> String {
        format!(
            "{}\n--- stdout:\n{}\n--- stderr:\n{}",
            describe(&self.status),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `timed ARGS` (with `RUST_LOG` removed) and waits for it to exit; a run that is still
/// going after 10 s (a daemon that started although it should not have) is killed and fails
/// the test.
fn timed(h: &Harness, args: &[&str]) -> Run {
    let out = h.dir.join("stdout");
    let err = h.dir.join("stderr");
    let mut child = Command::new(TIMED)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("start timed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "timed {args:?} still running after 10 s; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    }
}

fn arg(key: &str, value: impl std::fmt::Display) -> String {
    format!("--{key}={value}")
}

#[test]
fn typo_in_config_file_exits_2_naming_file_line_and_key() {
    let h = Harness::new("cli_typo");
    let path = h.write_file(
        "typo.conf",
        &format!("# a comment\n\nlisten={}\npingintervall=5s\n", h.addr(2)),
    );
    let path_s = path.to_str().unwrap();
    let run = timed(&h, &["--conf", path_s]);
    assert_eq!(run.code(), Some(2), "{}", run.show());
    assert!(
        run.stderr.contains(path_s),
        "file not named: {}",
        run.show()
    );
    assert!(
        run.stderr.contains(":4"),
        "line 4 not named: {}",
        run.show()
    );
    assert!(
        run.stderr.contains("pingintervall"),
        "key not named: {}",
        run.show()
    );
    // The same for --check-config, which must not print a configuration.
    let run = timed(&h, &["--conf", path_s, "--check-config"]);
    assert_eq!(run.code(), Some(2), "{}", run.show());
    assert!(run.stderr.contains("pingintervall"), "{}", run.show());
    assert!(!run.stdout.contains("listen="), "{}", run.show());
}

#[test]
fn bad_values_in_config_file_exit_2_naming_file_line_and_key() {
    let h = Harness::new("cli_bad_values");
    let cases = [
        ("pingtimeout=abc\n", "pingtimeout", ":1"),
        (
            "# x\nmasternode=127.0.0.2:24100\nmaxpeers=lots\n",
            "maxpeers",
            ":3",
        ),
        ("pinginterval=1s\npinginterval=2s\n", "pinginterval", ":2"),
        ("network=moonnet\n", "network", ":1"),
    ];
    for (i, (text, key, line)) in cases.iter().enumerate() {
        let path = h.write_file(&format!("bad{i}.conf"), text);
        let path_s = path.to_str().unwrap();
        let run = timed(&h, &["--conf", path_s, "--check-config"]);
        assert_eq!(run.code(), Some(2), "{text:?}: {}", run.show());
        for want in [path_s, key, line] {
            assert!(
                run.stderr.contains(want),
                "{text:?}: {want:?} not named: {}",
                run.show()
            );
        }
    }
}

#[test]
fn unknown_command_line_key_exits_2_naming_it() {
    let h = Harness::new("cli_unknown_key");
    let conf = h.dir.join("empty.conf");
    let run = timed(
        &h,
        &[
            "--conf",
            conf.to_str().unwrap(),
            &arg("listen", h.addr(2)),
            "--pingintervall=5s",
        ],
    );
    assert_eq!(run.code(), Some(2), "{}", run.show());
    assert!(run.stderr.contains("pingintervall"), "{}", run.show());
}

#[test]
fn bad_duration_exits_2_naming_the_key() {
    let h = Harness::new("cli_bad_duration");
    let conf = h.dir.join("empty.conf");
    for bad in ["5x", "-1s", "", "1.5.2s"] {
        let run = timed(
            &h,
            &[
                "--conf",
                conf.to_str().unwrap(),
                &arg("listen", h.addr(2)),
                &arg("pinginterval", bad),
            ],
        );
        assert_eq!(run.code(), Some(2), "pinginterval={bad:?}: {}", run.show());
        assert!(run.stderr.contains("pinginterval"), "{}", run.show());
    }
}

#[test]
fn p2p_port_in_use_exits_1_naming_the_address() {
    let h = Harness::new("cli_port_in_use");
    let addr = h.addr(2);
    let _taken = TcpListener::bind(addr).expect("bind the test's own address");
    let conf = h.dir.join("empty.conf");
    let run = timed(
        &h,
        &[
            "--conf",
            conf.to_str().unwrap(),
            &arg("listen", addr),
            &arg("rpclisten", h.rpc_addr(2)),
        ],
    );
    assert_eq!(run.code(), Some(1), "{}", run.show());
    assert!(
        run.stderr.contains(&addr.to_string()),
        "address not named: {}",
        run.show()
    );
}

#[test]
fn rpc_port_in_use_exits_1_naming_the_address() {
    let h = Harness::new("cli_rpc_in_use");
    let rpc = h.rpc_addr(3);
    let _taken = TcpListener::bind(rpc).expect("bind the test's own address");
    let conf = h.dir.join("empty.conf");
    let run = timed(
        &h,
        &[
            "--conf",
            conf.to_str().unwrap(),
            &arg("listen", h.addr(3)),
            &arg("rpclisten", rpc),
        ],
    );
    assert_eq!(run.code(), Some(1), "{}", run.show());
    assert!(run.stderr.contains(&rpc.to_string()), "{}", run.show());
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let h = Harness::new("cli_check_config");
    let path = h.write_file(
        "ok.conf",
        "# file values, some overridden below\n\
         pinginterval=7s\n\
         masternode=127.0.0.7:24100\n\
         maxpeers=50\n",
    );
    let listen = h.addr(2);
    let run = timed(
        &h,
        &[
            "--conf",
            path.to_str().unwrap(),
            "--check-config",
            &arg("listen", listen),
            &arg("pinginterval", "2s"),
            &arg("masternode", listen),
            &arg("masternode", h.addr(10)),
        ],
    );
    assert_eq!(run.code(), Some(0), "{}", run.show());
    let out = &run.stdout;
    for want in [
        format!("listen={listen}\n"),
        "pinginterval=2s\n".to_string(), // the command line wins over the file
        "maxpeers=50\n".to_string(),     // the file wins over the default
        format!("masternode={listen}\n"),
        format!("masternode={}\n", h.addr(10)),
        "pingtimeout=90s\n".to_string(), // defaults are printed too
        "network=testnet\n".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    // List keys on the command line replace the file's list.
    assert!(!out.contains("127.0.0.7:24100"), "{out}");
    // And nothing was started: the address is still free.
    assert!(port_free(h.ip(2), P2P_PORT));
}

#[test]
fn version_prints_name_and_version() {
    let h = Harness::new("cli_version");
    let run = timed(&h, &["--version"]);
    assert_eq!(run.code(), Some(0), "{}", run.show());
    assert_eq!(run.stdout.trim(), "timed 0.1.0", "{}", run.show());
}

#[test]
fn unknown_flag_and_stray_argument_are_usage_errors() {
    let h = Harness::new("cli_usage");
    for args in [&["--frobnicate"][..], &["status"], &["--conf"]] {
        let run = timed(&h, args);
        assert_eq!(run.code(), Some(2), "{args:?}: {}", run.show());
        assert!(!run.stderr.is_empty(), "{args:?}: no message");
    }
}
