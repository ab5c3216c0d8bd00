use super::writer::GgufWriter;
use super::*;

fn write(w: &GgufWriter) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    w.write(&mut file).expect("write");
    file
}

fn sample() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", Value::Text("llama".into()))
        .metadata("llama.block_count", Value::Uint(2))
        .metadata(
            "tokenizer.ggml.tokens",
            Value::Array(Array::Texts(vec!["a".into(), "b".into()])),
        )
        .metadata("tokenizer.ggml.scores", Value::Array(Array::Floats(vec![0.5, -1.0])))
        .tensor_f32("x", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        .tensor_f32("y", &[3], &[9.0, 10.0, 11.0]);
    w
}

#[test]
fn round_trips_metadata_and_tensors() {
    let file = write(&sample());
    let gguf = GgufFile::open(file.path()).expect("valid gguf");
    assert_eq!(gguf.version, 3);
    assert_eq!(gguf.get("llama.block_count"), Some(&Value::Uint(2)));
    assert_eq!(
        gguf.get("tokenizer.ggml.tokens"),
        Some(&Value::Array(Array::Texts(vec!["a".into(), "b".into()])))
    );
    let y = &gguf.tensors[1];
    assert_eq!(
        (y.name.as_str(), y.dims.as_slice(), y.ggml_type),
        ("y", &[3u64][..], GgmlType::F32)
    );
    assert_eq!(y.offset % 32, 0);
    let values: Vec<f32> = gguf
        .data(y)
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    assert_eq!(values, vec![9.0, 10.0, 11.0]);
}

#[test]
fn rejects_bad_magic_version_and_truncation() {
    let file = write(&sample());
    let bytes = std::fs::read(file.path()).expect("read");
    let check = |bytes: &[u8]| {
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        std::io::Write::write_all(&mut f, bytes).expect("write");
        GgufFile::open(f.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(check(&bad).contains("bad magic"));
    let mut bad = bytes.clone();
    bad[4] = 9;
    assert!(check(&bad).contains("version 9"));
    for cut in [10, 40, 100, 200] {
        let message = check(&bytes[..cut]);
        assert!(message.starts_with("gguf:"), "cut at {cut}: {message}");
    }
}

#[test]
fn rejects_tensors_past_the_end_and_bad_alignment() {
    let mut w = sample();
    w.metadata("general.alignment", Value::Uint(24));
    let message = GgufFile::open(write(&w).path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains("power of two"), "{message}");

    let file = write(&sample());
    let bytes = std::fs::read(file.path()).expect("read");
    let mut f = tempfile::NamedTempFile::new().expect("temp");
    std::io::Write::write_all(&mut f, &bytes[..bytes.len() - 40]).expect("write");
    let message = GgufFile::open(f.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains("past the end"), "{message}");
}
