fn main() {
    std::process::exit(tierfs::cli::main());
}
