//! The loopback sshd helper works: a command runs over ssh, and git clones
//! and pushes through it.

use wsync_testutils::{Sshd, TestRemote, assert_success, git, git_cmd};

#[test]
fn git_over_loopback_sshd() {
    let Some(sshd) = Sshd::start() else { return };
    let remote = TestRemote::new();
    let dest = remote.root().join("via-ssh");
    let out = git_cmd(remote.root())
        .env("GIT_SSH_COMMAND", sshd.ssh_command())
        .args(["clone", "-q", &sshd.git_url(remote.bare())])
        .arg(&dest)
        .output()
        .unwrap();
    assert_success(&out, "git clone over ssh");
    assert_eq!(
        std::fs::read_to_string(dest.join("README.md")).unwrap(),
        "# test\n"
    );
    std::fs::write(dest.join("new.txt"), "x").unwrap();
    git(&dest, &["add", "-A"]);
    git(
        &dest,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "over ssh",
        ],
    );
    let out = git_cmd(&dest)
        .env("GIT_SSH_COMMAND", sshd.ssh_command())
        .args(["push", "-q", "origin", "HEAD:main"])
        .output()
        .unwrap();
    assert_success(&out, "git push over ssh");
    assert_eq!(remote.subjects()[0], "over ssh");
}
