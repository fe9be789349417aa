//! The `agentgate` binary: wiring only; everything lives in the library.

/// mimalloc: the intake path allocates and frees many small buffers per request (parsed activity, record,
/// response); glibc's malloc showed as ~14 % of the server's samples under load. `no_thp` keeps its heap in
/// small pages, so the resident set stays small (29 MiB rather than 43 MiB peak under the load script).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    agentgate::cli::main()
}
