fn main() {
    println!("sandgraph-infer {}", env!("CARGO_PKG_VERSION"));
}
