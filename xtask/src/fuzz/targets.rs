//! The fuzz targets: each turns arbitrary bytes into a call of a real
//! parser, decoder or handler. Seeds come from the real encoders and
//! writers, so mutations start from inputs the code accepts.

use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use wsync_coordinator::config::Config;
use wsync_coordinator::queue::{Priority, Queue, SyncRequest};
use wsync_coordinator::ratelimit::{RateLimitConfig, RateLimiter};
use wsync_coordinator::retry::{CircuitBreaker, RetryConfig};
use wsync_lock::{LockOptions, PauseGate, PauseOptions, SyncLock, Wait};
use wsync_remote::delta::{self, Applier, Op};
use wsync_remote::serve::{ServeOptions, serve};
use wsync_remote::wire::{self, Kind, Meta, Request, Response};

/// One fuzz target.
pub trait Target {
    /// Runs one input. Errors are fine; panics, hangs and huge
    /// allocations are findings. `Err` here means an invariant broke
    /// (e.g. a write outside the root) and is a finding too.
    fn exec(&mut self, input: &[u8]) -> std::result::Result<(), String>;
    /// Valid inputs made by the real encoders and writers.
    fn seeds(&mut self) -> Result<Vec<Vec<u8>>>;
    /// Tokens worth splicing in.
    fn dictionary(&self) -> &'static [&'static [u8]] {
        JSON_DICT
    }
    /// Whether inputs are a stream of length-prefixed frames.
    fn framed(&self) -> bool {
        false
    }
}

/// Every target name, in run order.
pub const NAMES: &[&str] = &[
    "frame",
    "serve",
    "delta",
    "rules",
    "config",
    "queue",
    "ratelimit",
    "circuit",
    "lock-record",
    "pause-file",
];

/// Builds the target called `name`, with scratch files under `scratch`.
pub fn make(name: &str, scratch: &Path) -> Result<Box<dyn Target>> {
    std::fs::create_dir_all(scratch).with_context(|| format!("create {}", scratch.display()))?;
    Ok(match name {
        "frame" => Box::new(FrameTarget),
        "serve" => Box::new(ServeTarget::new(scratch)?),
        "delta" => Box::new(DeltaTarget::new()),
        "rules" => Box::new(RulesTarget),
        "config" => Box::new(ConfigTarget),
        "queue" | "ratelimit" | "circuit" | "lock-record" | "pause-file" => {
            Box::new(StateFileTarget::new(name, scratch)?)
        }
        "selftest-panic" | "selftest-hang" | "selftest-alloc" => Box::new(SelfTest(name.into())),
        other => anyhow::bail!(
            "unknown fuzz target {other:?} (known: {})",
            NAMES.join(", ")
        ),
    })
}

const JSON_DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"4294967296",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"1970-01-01T00:00:00Z\"",
    b"\"9999-12-31T23:59:59Z\"",
    b"\"+262143-01-01T00:00:00Z\"",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"\n",
    b"\xff\xfe",
];

const RULES_DICT: &[&[u8]] = &[
    b"ALLOW:",
    b"BLOCK:",
    b"ANALYZE:",
    b"bogus:",
    b":",
    b"\n",
    b"#",
    b"(",
    b")",
    b"*",
    b"+",
    b"{99999}",
    b"{1000}{1000}",
    b"\\",
    b"[",
    b"(?i)",
    b"(?P<",
    b".*",
    b"^",
    b"$",
    b"\xff",
];

const BIN_DICT: &[&[u8]] = &[
    b"\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x01\x00\x00\x01",
    b"\x80\x80\x80\x80\x0f",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"..",
    b"../",
    b"/",
    b"/etc/passwd",
    b"link/",
    b"link/x",
    b".wsync",
    b"\x28\xb5\x2f\xfd",
];

/// The remote protocol frame decoder.
struct FrameTarget;

impl Target for FrameTarget {
    fn exec(&mut self, input: &[u8]) -> std::result::Result<(), String> {
        let mut r = input;
        for _ in 0..16 {
            if wire::read_msg::<_, Request>(&mut r).is_err() {
                break;
            }
        }
        let mut r = input;
        for _ in 0..16 {
            if wire::read_msg::<_, Response>(&mut r).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn seeds(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for reqs in request_scripts() {
            out.push(frames(&reqs)?);
        }
        let meta = file_meta(5);
        let responses = vec![
            Response::Hello {
                host: "h".into(),
                root: b"/r".to_vec(),
            },
            Response::ScanChunk(vec![wire::Entry {
                path: b"a/b".to_vec(),
                meta: meta.clone(),
            }]),
            Response::ScanEnd { root_exists: true },
            Response::DeltaOps(vec![
                Op::Literal(vec![b'x'; 600]),
                Op::Copy { index: 1, count: 2 },
            ]),
            Response::DeltaEnd {
                hash: [7; 32],
                meta: meta.clone(),
            },
            Response::Done(Some(meta)),
            Response::Notice(vec![b"a".to_vec()]),
            Response::State(Some(b"{}".to_vec())),
        ];
        out.push(frames(&responses)?);
        Ok(out)
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        BIN_DICT
    }

    fn framed(&self) -> bool {
        true
    }
}

fn frames<T: serde::Serialize>(msgs: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend(wire::encode(m).map_err(|e| anyhow::anyhow!("encode: {e}"))?);
    }
    Ok(out)
}

fn file_meta(size: u64) -> Meta {
    Meta {
        kind: Kind::File,
        size,
        mtime_ns: 1_700_000_000_000_000_000,
        exec: false,
        target: Vec::new(),
    }
}

/// Request sequences a real client sends (and some a hostile one would).
fn request_scripts() -> Vec<Vec<Request>> {
    let put = |path: &[u8], data: &[u8]| {
        vec![
            Request::PutBegin {
                path: path.to_vec(),
                expect: None,
                block_size: 0,
                exec: false,
                mtime_ns: 0,
            },
            Request::PutOps(vec![Op::Literal(data.to_vec())]),
            Request::PutEnd {
                hash: *blake3::hash(data).as_bytes(),
            },
        ]
    };
    let mut scripts = vec![
        vec![Request::Scan {
            excludes: vec!["*.tmp".into()],
            include_vcs: false,
        }],
        put(b"a.txt", b"hello"),
        put(b"../escape.txt", b"pwned"),
        put(b"/tmp/abs.txt", b"pwned"),
        vec![
            Request::Mkdir {
                path: b"d".to_vec(),
                expect: None,
            },
            Request::PutBegin {
                path: b"link/inside.txt".to_vec(),
                expect: None,
                block_size: 0,
                exec: false,
                mtime_ns: 0,
            },
            Request::PutOps(vec![Op::Literal(b"through the link".to_vec())]),
            Request::PutEnd { hash: [0; 32] },
            Request::Symlink {
                path: b"d/link".to_vec(),
                target: b"../../outside".to_vec(),
                expect: None,
            },
            Request::Commit,
        ],
        vec![
            Request::Sigs {
                path: b"a.txt".to_vec(),
            },
            Request::Hash {
                path: b"a.txt".to_vec(),
            },
            Request::Delete {
                path: b"a.txt".to_vec(),
                expect: file_meta(5),
            },
        ],
        vec![Request::Rename {
            from: b"a.txt".to_vec(),
            to: b"d/link/x".to_vec(),
            expect: file_meta(5),
        }],
        vec![
            Request::StatePut {
                pair: "p".into(),
                data: b"{}".to_vec(),
            },
            Request::StateGet { pair: "p".into() },
            Request::StateGet {
                pair: "../../x".into(),
            },
        ],
        vec![Request::SetMeta {
            path: b"a.txt".to_vec(),
            expect: file_meta(5),
            exec: true,
            mtime_ns: i64::MIN,
        }],
    ];
    let mut both = put(b"x/y/z.bin", &[b'z'; 3000]);
    both.push(Request::Commit);
    scripts.push(both);
    scripts
}

/// The `wsync serve` message handler against a scratch root; checks that
/// nothing outside the root appears or changes.
struct ServeTarget {
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    runs: u64,
}

impl ServeTarget {
    fn new(scratch: &Path) -> Result<Self> {
        let base = scratch.join("serve");
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&outside)?;
        std::fs::write(outside.join("canary"), b"canary")?;
        std::os::unix::fs::symlink(&outside, root.join("link"))?;
        Ok(Self {
            base,
            root,
            outside,
            runs: 0,
        })
    }

    fn check_outside(&self) -> std::result::Result<(), String> {
        let names = |p: &Path| -> Vec<String> {
            std::fs::read_dir(p).map_or_else(
                |_| vec!["<unreadable>".into()],
                |rd| {
                    let mut v: Vec<String> = rd
                        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into()))
                        .collect();
                    v.sort();
                    v
                },
            )
        };
        if names(&self.base) != ["outside", "root"] {
            return Err(format!("entries beside the root: {:?}", names(&self.base)));
        }
        if names(&self.outside) != ["canary"] {
            return Err(format!(
                "entries outside the root: {:?}",
                names(&self.outside)
            ));
        }
        if std::fs::read(self.outside.join("canary")).ok().as_deref() != Some(b"canary".as_ref()) {
            return Err("the canary outside the root changed".into());
        }
        for p in ["/tmp/abs.txt", "/tmp/escape.txt"] {
            if Path::new(p).exists() {
                return Err(format!("{p} was written"));
            }
        }
        Ok(())
    }
}

impl Target for ServeTarget {
    fn exec(&mut self, input: &[u8]) -> std::result::Result<(), String> {
        self.runs += 1;
        if self.runs.is_multiple_of(256) {
            // Start from a clean root now and then so state stays small.
            let _ = std::fs::remove_dir_all(&self.root);
            let _ = std::fs::create_dir_all(&self.root);
            let _ = std::os::unix::fs::symlink(&self.outside, self.root.join("link"));
        }
        let mut stream = Vec::with_capacity(input.len() + 10);
        wire::write_preamble(&mut stream).map_err(|e| e.to_string())?;
        stream.extend_from_slice(input);
        let opts = ServeOptions {
            fsync: false,
            notice_delay: Duration::from_millis(1),
            // Half the runs as a session agent's server: an `EndSession`
            // in the input then starts another handshake on the rest.
            sessions: self.runs % 2 == 1,
        };
        let _ = serve(&self.root, Cursor::new(stream), std::io::sink(), &opts);
        self.check_outside()
    }

    fn seeds(&mut self) -> Result<Vec<Vec<u8>>> {
        request_scripts().iter().map(|s| frames(s)).collect()
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        BIN_DICT
    }

    fn framed(&self) -> bool {
        true
    }
}

/// The delta applier: `block_size` (u32 BE) + postcard `Vec<Op>` applied
/// to a fixed base; the output is checked against a hash.
struct DeltaTarget {
    base: Vec<u8>,
}

impl DeltaTarget {
    fn new() -> Self {
        let base: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        Self { base }
    }
}

impl Target for DeltaTarget {
    fn exec(&mut self, input: &[u8]) -> std::result::Result<(), String> {
        let (Some(head), rest) = (input.get(..4), input.get(4..).unwrap_or_default()) else {
            return Ok(());
        };
        let block_size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let Ok(ops) = postcard::from_bytes::<Vec<Op>>(rest) else {
            return Ok(());
        };
        let with_base = block_size % 2 == 0;
        let base = with_base.then_some(&self.base[..]);
        let mut ap = Applier::new(base, block_size, std::io::sink());
        for op in &ops {
            if ap.apply(op).is_err() {
                break;
            }
        }
        let _ = ap.finish(&[0; 32]);
        Ok(())
    }

    fn seeds(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut target = self.base.clone();
        target.splice(5000..5010, b"inserted bytes".iter().copied());
        target.truncate(18_000);
        target.extend_from_slice(b"tail");
        for t in [&target[..], b"short", &self.base[100..9000]] {
            let sig = delta::signature(&self.base[..], self.base.len() as u64)?;
            let mut ops = Vec::new();
            delta::generate(t, &sig, &mut |op| {
                ops.push(op);
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("generate: {e}"))?;
            let mut v = sig.block_size.to_be_bytes().to_vec();
            v.extend(postcard::to_stdvec(&ops)?);
            out.push(v);
        }
        Ok(out)
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        BIN_DICT
    }
}

/// The rules parser (wsync-filter) plus a first match on a few paths.
struct RulesTarget;

impl Target for RulesTarget {
    fn exec(&mut self, input: &[u8]) -> std::result::Result<(), String> {
        let text = String::from_utf8_lossy(input);
        if let Ok(set) = wsync_filter::rules::RuleSet::parse(&text, "fuzz.rules") {
            for p in [
                "a.txt",
                "src/main.rs",
                ".git/config",
                "x/../y",
                "é/ü.log",
                "",
            ] {
                let _ = set.first_match(p);
            }
        }
        Ok(())
    }

    fn seeds(&mut self) -> Result<Vec<Vec<u8>>> {
        Ok(vec![
            wsync_filter::rules::default_rules_text()
                .as_bytes()
                .to_vec(),
            b"BLOCK:\\.log$:logs\nALLOW:^src/:source\n# comment\n\nANALYZE:.*:rest\n".to_vec(),
            b"BLOCK:^node_modules/:deps\n".to_vec(),
            b"ALLOW:(?i)\\.(rs|toml)$:code\n".to_vec(),
            b"ANALYZE:^[^/]+\\.tmp$:temp files\n".to_vec(),
            b"# only a comment\n".to_vec(),
        ])
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        RULES_DICT
    }
}

/// The config parser (coordinator `config.json`), then a round trip and
/// a `config set` on the result.
struct ConfigTarget;

impl Target for ConfigTarget {
    fn exec(&mut self, input: &[u8]) -> std::result::Result<(), String> {
        let path = Path::new("config.json");
        if let Ok(c) = Config::parse(path, input) {
            let v = c.to_value();
            let text = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
            let back = Config::parse(path, &text)
                .map_err(|e| format!("a parsed config does not re-parse: {e}"))?;
            if back != c {
                return Err("config round trip changed the value".into());
            }
            let _ = c.with_set("sync.strategy", "rebase");
            let _ = c.get("monitoring");
        }
        Ok(())
    }

    fn seeds(&mut self) -> Result<Vec<Vec<u8>>> {
        let full = serde_json::to_vec_pretty(&Config::default().to_value())?;
        Ok(vec![full, b"{}".to_vec()])
    }
}

/// A coordinator or lock state file: the input is written in place and
/// read back through the crate's public API.
struct StateFileTarget {
    name: &'static str,
    dir: PathBuf,
    file: PathBuf,
}

impl StateFileTarget {
    fn new(name: &str, scratch: &Path) -> Result<Self> {
        let dir = scratch.join(format!("state-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (name, file): (&'static str, &str) = match name {
            "queue" => ("queue", wsync_coordinator::queue::QUEUE_FILE),
            "ratelimit" => ("ratelimit", wsync_coordinator::ratelimit::RATELIMIT_FILE),
            "circuit" => ("circuit", wsync_coordinator::retry::CIRCUIT_FILE),
            "lock-record" => ("lock-record", "sync.lock"),
            _ => ("pause-file", ""),
        };
        let file = if name == "pause-file" {
            PauseGate::new(&dir).pause_file()
        } else {
            dir.join(file)
        };
        Ok(Self { name, dir, file })
    }

    fn read_back(&self) {
        match self.name {
            "queue" => {
                let q = Queue::new(&self.dir);
                let _ = q.list();
                let _ = q.history();
            }
            "ratelimit" => {
                let _ = RateLimiter::new(&self.dir, RateLimitConfig::default()).status();
            }
            "circuit" => {
                let _ = CircuitBreaker::new(&self.dir, RetryConfig::default()).status();
            }
            "lock-record" => {
                let _ = SyncLock::new(&self.dir).status();
            }
            _ => {
                let g = PauseGate::new(&self.dir);
                let _ = g.status();
                let _ = g.is_paused();
            }
        }
    }
}

impl Target for StateFileTarget {
    fn exec(&mut self, input: &[u8]) -> std::result::Result<(), String> {
        // Quarantine may move the file aside; start each run from input
        // only (and drop quarantined copies so the folder stays small).
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p != self.file && p.extension().is_none_or(|x| x != "lock") {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        let mut f = std::fs::File::create(&self.file).map_err(|e| e.to_string())?;
        f.write_all(input).map_err(|e| e.to_string())?;
        drop(f);
        self.read_back();
        Ok(())
    }

    fn seeds(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let _ = std::fs::remove_file(&self.file);
        match self.name {
            "queue" => {
                let q = Queue::new(&self.dir);
                q.enqueue(&SyncRequest::new("manual", "fuzz", Priority::High, "seed"))?;
                q.enqueue(&SyncRequest::new("watch", "w", Priority::Low, "two"))?;
                let _ = q.claim_next(std::process::id(), |_| true);
            }
            "ratelimit" => {
                let r = RateLimiter::new(&self.dir, RateLimitConfig::default());
                r.record_sync()?;
                r.record_commit(true)?;
                r.record_commit(false)?;
            }
            "circuit" => {
                let c = CircuitBreaker::new(&self.dir, RetryConfig::default());
                c.record_failure("push rejected")?;
                c.record_failure("again")?;
            }
            "lock-record" => {
                let l = SyncLock::new(&self.dir);
                let g = l.acquire(&LockOptions::default(), Wait::Fail)?;
                out.push(std::fs::read(&self.file)?);
                drop(g);
            }
            _ => {
                let g = PauseGate::new(&self.dir).pause(&PauseOptions {
                    reason: "seed pause".into(),
                    ack_timeout: Duration::from_millis(10),
                    ..PauseOptions::default()
                })?;
                out.push(std::fs::read(&self.file)?);
                drop(g);
                out.push(b"123\n1700000000\nold format\n".to_vec());
            }
        }
        if let Ok(b) = std::fs::read(&self.file) {
            out.push(b);
        }
        out.retain(|s| !s.is_empty());
        if out.is_empty() {
            out.push(b"{}".to_vec());
        }
        Ok(out)
    }

    fn dictionary(&self) -> &'static [&'static [u8]] {
        if self.name == "pause-file" {
            &[
                b"\n",
                b"4294967296",
                b"-1",
                b"0",
                b"9999999999999",
                b"2026-13-01T00:00:00Z",
                b"\xff",
            ]
        } else {
            JSON_DICT
        }
    }
}

/// Checks the harness itself (`--target selftest-panic|hang|alloc`, not
/// part of the default run): misbehaves on inputs that start with `!`.
struct SelfTest(String);

impl Target for SelfTest {
    fn exec(&mut self, input: &[u8]) -> std::result::Result<(), String> {
        if input.first() != Some(&b'!') {
            return Ok(());
        }
        match self.0.as_str() {
            "selftest-panic" => panic!("selftest panic"),
            "selftest-hang" => std::thread::sleep(Duration::from_secs(30)),
            _ => {
                let v = vec![1u8; 1 << 30];
                std::hint::black_box(&v);
            }
        }
        Ok(())
    }

    fn seeds(&mut self) -> Result<Vec<Vec<u8>>> {
        Ok(vec![b"seed".to_vec()])
    }
}
