//! The `agentgate` binary: wiring only; everything lives in the library.

fn main() -> std::process::ExitCode {
    agentgate::cli::main()
}
