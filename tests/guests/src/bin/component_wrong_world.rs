//! A plain WASI command: a valid component that does not export the `sandgraph:tool` world.

fn main() {
    println!("I am a command, not a tool");
}
