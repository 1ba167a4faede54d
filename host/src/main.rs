fn main() {
    println!("sandgraph {}", env!("CARGO_PKG_VERSION"));
}
