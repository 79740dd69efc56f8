//! Shared test helpers for every wsync test: temporary git repositories with
//! a bare remote and hermetic git configuration, the built `wsync` binary,
//! and a real `sshd` listening on 127.0.0.1.
//!
//! ```
//! use wsync_testutils::{TestRemote, git};
//!
//! let remote = TestRemote::new();
//! let a = remote.clone_repo("a");
//! a.write("hello.txt", "hi\n");
//! a.commit_all("first");
//! git(a.path(), &["push", "-q", "origin", "HEAD:main"]);
//! let b = remote.clone_repo("b");
//! assert_eq!(b.read("hello.txt"), "hi\n");
//! ```
//!
//! Helpers panic with a descriptive message on failure: they are test code.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::print_stderr,
    clippy::needless_pass_by_value
)]

use std::ffi::OsStr;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Environment that makes `git` ignore the user's and the system's config
/// and gives commits a fixed identity.
pub fn hermetic_git_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_AUTHOR_NAME", "wsync test"),
        ("GIT_AUTHOR_EMAIL", "test@wsync.invalid"),
        ("GIT_COMMITTER_NAME", "wsync test"),
        ("GIT_COMMITTER_EMAIL", "test@wsync.invalid"),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_ADVICE", "0"),
        ("LC_ALL", "C"),
    ]
}

/// Applies [`hermetic_git_env`] to a command (and clears `GIT_DIR` and
/// friends that an outer git hook could have set).
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_SSH_COMMAND",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(hermetic_git_env())
}

/// A hermetic `git` command running in `dir`.
pub fn git_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    hermetic(&mut cmd).current_dir(dir);
    cmd
}

/// Runs `git args` in `dir`, panics with its stderr on failure, returns stdout.
pub fn git<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> String {
    let out = git_cmd(dir).args(args).output().unwrap();
    assert_success(
        &out,
        &format!("git {:?} in {}", os_args(args), dir.display()),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `git args` in `dir` and returns its raw output, success or not.
pub fn git_output<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    git_cmd(dir).args(args).output().unwrap()
}

fn os_args<S: AsRef<OsStr>>(args: &[S]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// Panics with the command's output unless it succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets the identity and safe defaults in a repository's own config, so that
/// code which spawns `git` or uses libgit2 without our environment still
/// commits deterministically.
fn configure_repo(dir: &Path) {
    for (k, v) in [
        ("user.name", "wsync test"),
        ("user.email", "test@wsync.invalid"),
        ("commit.gpgsign", "false"),
        ("core.autocrlf", "false"),
        ("gc.auto", "0"),
    ] {
        git(dir, &["config", k, v]);
    }
}

/// A non-bare git repository in a temporary folder (removed on drop).
#[derive(Debug)]
pub struct TestRepo {
    _tmp: Option<TempDir>,
    path: PathBuf,
}

impl TestRepo {
    /// `git init -b main` in a new temporary folder (unborn HEAD).
    pub fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("work");
        std::fs::create_dir(&path).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        configure_repo(&path);
        Self {
            _tmp: Some(tmp),
            path: canonical(&path),
        }
    }

    /// A repository with one commit holding `README.md`.
    pub fn with_commit() -> Self {
        let repo = Self::new();
        repo.write("README.md", "# test\n");
        repo.commit_all("initial");
        repo
    }

    /// Wraps an existing work tree (not removed on drop).
    pub fn at(path: &Path) -> Self {
        Self {
            _tmp: None,
            path: canonical(path),
        }
    }

    /// The work tree root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `rel` (creating parent folders).
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
    }

    /// Reads `rel` as UTF-8 (lossy).
    pub fn read(&self, rel: impl AsRef<Path>) -> String {
        String::from_utf8_lossy(&self.read_bytes(rel)).into_owned()
    }

    /// Reads `rel` as bytes.
    pub fn read_bytes(&self, rel: impl AsRef<Path>) -> Vec<u8> {
        let p = self.path.join(rel.as_ref());
        std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
    }

    /// Whether `rel` exists (without following a final symlink).
    pub fn exists(&self, rel: impl AsRef<Path>) -> bool {
        self.path.join(rel).symlink_metadata().is_ok()
    }

    /// `git add -A && git commit -m msg`; returns the new HEAD id.
    pub fn commit_all(&self, msg: &str) -> String {
        git(&self.path, &["add", "-A"]);
        git(&self.path, &["commit", "-q", "--allow-empty", "-m", msg]);
        self.head()
    }

    /// `git rev-parse HEAD`.
    pub fn head(&self) -> String {
        git(&self.path, &["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// `git status --porcelain=v1 -z --untracked-files=all` as raw bytes.
    pub fn status(&self) -> Vec<u8> {
        git_output(
            &self.path,
            &["status", "--porcelain=v1", "-z", "--untracked-files=all"],
        )
        .stdout
    }

    /// Runs git in this repository.
    pub fn git<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        git(&self.path, args)
    }
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

/// A bare repository (the "remote") plus any number of clones, all in one
/// temporary folder.
#[derive(Debug)]
pub struct TestRemote {
    tmp: TempDir,
    bare: PathBuf,
}

impl TestRemote {
    /// A bare repository whose `main` holds one commit with `README.md`.
    pub fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let root = canonical(tmp.path());
        let bare = root.join("remote.git");
        git(&root, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
        let seed = root.join("seed");
        git(&root, &["clone", "-q", "remote.git", "seed"]);
        configure_repo(&seed);
        std::fs::write(seed.join("README.md"), "# test\n").unwrap();
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "-q", "-m", "initial"]);
        git(&seed, &["push", "-q", "origin", "HEAD:main"]);
        std::fs::remove_dir_all(&seed).unwrap();
        Self { tmp, bare }
    }

    /// The bare repository's path.
    pub fn bare(&self) -> &Path {
        &self.bare
    }

    /// The temporary folder everything lives in.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// Clones the remote into `<root>/<name>` with a configured identity.
    pub fn clone_repo(&self, name: &str) -> TestRepo {
        let root = canonical(self.tmp.path());
        git(
            &root,
            &[
                OsStr::new("clone"),
                OsStr::new("-q"),
                self.bare.as_os_str(),
                OsStr::new(name),
            ],
        );
        let path = root.join(name);
        configure_repo(&path);
        TestRepo::at(&path)
    }

    /// `git rev-parse main` in the bare remote.
    pub fn head(&self) -> String {
        git(&self.bare, &["rev-parse", "main"]).trim().to_owned()
    }

    /// `git log --format=%s main` in the bare remote, newest first.
    pub fn subjects(&self) -> Vec<String> {
        git(&self.bare, &["log", "--format=%s", "main"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Default for TestRemote {
    fn default() -> Self {
        Self::new()
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap()
}

/// A proptest strategy for fuzzing a parser: `seed` (a valid input) with up
/// to five random edits — a byte removed, the rest truncated, or one of
/// `tokens` (interesting fragments for the format) spliced in.
pub fn mutated(
    seed: Vec<u8>,
    tokens: &'static [&'static [u8]],
) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    proptest::collection::vec((any::<usize>(), 0..tokens.len(), 0u8..3), 0..6).prop_map(
        move |edits| {
            let mut s = seed.clone();
            for (pos, tok, kind) in edits {
                let at = pos % (s.len() + 1);
                match kind {
                    0 if at < s.len() => {
                        s.remove(at);
                    }
                    1 => s.truncate(at),
                    _ => {
                        s.splice(at..at, tokens[tok].iter().copied());
                    }
                }
            }
            s
        },
    )
}

/// A whole tree as data: relative path bytes → (kind `'f'`/`'d'`/`'l'`,
/// file content or link target, exec bit).
pub type TreeSnapshot = std::collections::BTreeMap<Vec<u8>, (char, Vec<u8>, bool)>;

/// Reads every entry under `root` without following symlinks, skipping a
/// top-level `.wsync` state folder; a missing `root` is an empty tree.
/// Compare two with `assert_eq!` to check a sync made them equal.
pub fn tree_snapshot(root: &Path) -> TreeSnapshot {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    fn walk(root: &Path, dir: &Path, out: &mut TreeSnapshot) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for de in rd {
            let p = de.unwrap().path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if rel == b".wsync" {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, ('l', t.as_os_str().as_bytes().to_vec(), false));
            } else if md.is_dir() {
                out.insert(rel, ('d', Vec::new(), false));
                walk(root, &p, out);
            } else {
                let exec = md.permissions().mode() & 0o100 != 0;
                out.insert(rel, ('f', std::fs::read(&p).unwrap(), exec));
            }
        }
    }
    let mut out = TreeSnapshot::new();
    walk(root, root, &mut out);
    out
}

/// The workspace root (the folder holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The path of the built `wsync` binary.
///
/// `cargo test --workspace` builds it (the `wsync-cli` package has
/// integration tests). When a test of another package runs alone and the
/// binary is missing, it is built once with `cargo build -p wsync-cli`.
pub fn wsync_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("WSYNC_TEST_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let bin = profile_dir.join("wsync");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "wsync-cli", "--bin", "wsync"])
                .current_dir(workspace_root())
                .status()
                .unwrap();
            assert!(status.success(), "building the wsync binary failed");
        }
        assert!(bin.exists(), "wsync binary not found at {}", bin.display());
        bin
    })
    .clone()
}

/// A hermetic `wsync` command running in `dir`.
pub fn wsync_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(wsync_bin());
    hermetic(&mut cmd).current_dir(dir).env_remove("WSYNC_LOG");
    cmd
}

/// Runs `wsync args` in `dir` and returns its output (any exit status).
pub fn wsync<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    wsync_cmd(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `wsync args` in `dir`, panics unless it succeeded, returns stdout.
pub fn wsync_ok<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> String {
    let out = wsync(dir, args);
    assert_success(
        &out,
        &format!("wsync {:?} in {}", os_args(args), dir.display()),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `wsync args` in `dir` in the background with stdio on /dev/null
/// (e.g. to SIGKILL it mid-write); killed on drop.
pub fn wsync_spawn<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> KillOnDrop {
    let child = wsync_cmd(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process that is SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether tests run in CI (`CI=true`), where missing tools are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A real `sshd` listening on 127.0.0.1 only, with a fresh host key and a
/// client key authorised for the current user. Killed on drop.
#[derive(Debug)]
pub struct Sshd {
    dir: TempDir,
    child: KillOnDrop,
    port: u16,
}

impl Sshd {
    /// Starts sshd. Returns `None` (after printing why) when sshd is not
    /// installed or cannot start outside CI; panics in CI, where
    /// `.ci/run` installs openssh-server and a missing sshd is a failure.
    pub fn start() -> Option<Self> {
        match Self::try_start() {
            Ok(sshd) => Some(sshd),
            Err(why) if !in_ci() => {
                eprintln!("skipping: loopback sshd unavailable: {why}");
                None
            }
            Err(why) => panic!("loopback sshd unavailable in CI: {why}"),
        }
    }

    fn try_start() -> Result<Self, String> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd", "/usr/local/sbin/sshd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no sshd binary (install openssh-server)")?;
        let dir = TempDir::new().map_err(|e| e.to_string())?;
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .output()
                .map_err(|e| format!("ssh-keygen: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        // Privilege separation folder; sshd refuses to start without it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin yes\n\
             StrictModes no\nUsePAM no\nPrintMotd no\nLogLevel ERROR\nMaxStartups 100:30:200\n\
             MaxSessions 100\nSubsystem sftp internal-sftp\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| e.to_string())?;
        let child = Command::new(&sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", sshd.display()))?;
        let mut me = Self {
            dir,
            child: KillOnDrop(child),
            port,
        };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up || me.child.0.try_wait().ok().flatten().is_some() {
            let log = std::fs::read_to_string(me.dir.path().join("sshd.log")).unwrap_or_default();
            me.child.kill();
            return Err(format!("sshd did not start: {log}"));
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} {}@127.0.0.1 true", me.ssh_command(), me.user()))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ssh to the test sshd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(me)
    }

    /// The port sshd listens on (at 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user (the current user).
    pub fn user(&self) -> String {
        std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                let out = Command::new("id").arg("-un").output().ok()?;
                Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            })
            .unwrap_or_else(|| "root".into())
    }

    /// The client's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// An `ssh` command line (without destination) that reaches this sshd
    /// non-interactively: usable as `GIT_SSH_COMMAND` or `--rsh`.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -p {} -i {} -o IdentitiesOnly=yes -o BatchMode=yes \
             -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.port,
            self.client_key().display()
        )
    }

    /// `USER@127.0.0.1`.
    pub fn destination(&self) -> String {
        format!("{}@127.0.0.1", self.user())
    }

    /// An `ssh://` URL for a path on this host (for git remotes).
    pub fn git_url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user(),
            self.port,
            path.display()
        )
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    Ok(port)
}
