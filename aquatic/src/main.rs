fn main() -> std::process::ExitCode {
    aquatic::cli::main()
}
