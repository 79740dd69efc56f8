//! Argument handling of the `wsync` binary (exit codes, help, completions).

use assert_cmd::Command;

fn wsync() -> Command {
    Command::cargo_bin("wsync").expect("the wsync binary is built for integration tests")
}

#[test]
fn help_and_version_succeed() {
    let out = wsync().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Exit codes"), "{text}");
    let out = wsync().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wsync "));
}

#[test]
fn usage_errors_exit_2() {
    let out = wsync().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = wsync().args(["-v", "-q", "init"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "-v and -q conflict");
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = wsync().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("wsync"), "{shell}: {script}");
    }
}
