//! The `wsync` binary: everything lives in [`wsync_cli::run`].

fn main() -> std::process::ExitCode {
    wsync_cli::run()
}
