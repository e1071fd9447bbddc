fn main() {
    std::process::exit(sqlplan::main());
}
