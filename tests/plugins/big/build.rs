//! Generates 2 MB of incompressible bytes for the plugin to embed.

fn main() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..2_000_000)
        .map(|_| {
            // xorshift64*: cheap, and no pattern a compressor or the linker could shrink.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect();
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("ballast.bin");
    std::fs::write(out, bytes).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}
