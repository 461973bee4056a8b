//! The `meshnode` binary: everything lives in the library; see `meshnode::cli`.

fn main() -> std::process::ExitCode {
    meshnode::cli::main()
}
