fn main() {
    std::process::exit(sqlplan::cli::main());
}
