//! Replays every input of the fuzz corpus (`fuzz/corpus/decode/`) through
//! the same checks the fuzz target runs, under plain `cargo test`.

#[test]
fn fuzz_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus directory") {
        let data = std::fs::read(entry.expect("entry").path()).expect("read input");
        gg_proto::fuzzing::decode_stream(&data);
        n += 1;
    }
    assert!(n >= 9, "corpus has only {n} inputs");
}
